"""Time to the published in-tool study's params-for-recall grid (Houliston et al. 2025:
2-layer models d 4-128, fact counts 1k-65k, in-weight and in-tool, 3 seeds, 100k steps per
cell), projected from seconds per step measured here on short runs of representative
cells. A step's cost depends on the width and the mode's sequence length, not on the
number of facts (batches are sampled), so one fact count stands for all.

Usage: python benchmarks/grid_time.py [--steps 100] [--widths 8,32,128] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from recall_bench.experiments.config import RunConfig, make_task
from recall_bench.records import environment, write_json_atomic
from recall_bench.tables import format_table
from recall_bench.train import train_models
from recall_bench.worlds import make_fact_world

HERE = Path(__file__).resolve().parent
PUBLISHED = {  # the grid as published, and its recipe
    "widths": [4, 8, 16, 32, 64, 128],
    "fact_counts": [1024, 2048, 4096, 8192, 16384, 32768, 65536],
    "modes": ["in-weight", "in-tool"],
    "seeds": 3,
    "steps_per_cell": 100_000,
}
OURS = {"in-weight": 3000, "in-tool": 1500}  # our sweeps' step budgets (configs/*.toml)


def seconds_per_step(mode: str, width: int, steps: int) -> dict:
    """Train one 2-layer cell (4,096 facts, batch 256) for `steps` steps past its compile."""
    cfg = RunConfig(
        mode=mode,
        n_facts=4096,
        layers=2,
        width=width,
        heads=min(4, width // 2),
        steps=steps,
        eval_every=steps,
        seed=0,
    )
    task = make_task(cfg, make_fact_world(cfg.spec))
    train_cfg = dataclasses.replace(cfg.train_config(), target_recall=2.0)  # run to budget
    result = train_models(cfg.model_config(), train_cfg, [task], [0], progress=False)
    return {
        "mode": mode,
        "width": width,
        "steps": result.steps[0],
        "compile_s": result.compile_s,
        "s_per_step": result.wall_s / result.steps[0],
    }


def nearest(rates: dict, mode: str, width: int) -> float:
    """Seconds per step of the measured width nearest (in log) to `width`, at or above it."""
    measured = sorted(w for m, w in rates if m == mode)
    return rates[mode, next((w for w in measured if w >= width), measured[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--widths", default="8,32,128")
    parser.add_argument("--out", type=Path, default=HERE / "grid_time.json")
    args = parser.parse_args()
    started = time.time()
    cells = [
        seconds_per_step(m, int(w), args.steps)
        for m in PUBLISHED["modes"]
        for w in args.widths.split(",")
    ]
    rates = {(c["mode"], c["width"]): c["s_per_step"] for c in cells}
    columns = [
        ("mode", "mode"),
        ("width", "width"),
        ("ms/step", lambda c: 1e3 * c["s_per_step"], ".1f"),
    ]
    print(format_table(cells, [*columns, ("compile s", "compile_s", ".0f")]))
    per_cell_set = len(PUBLISHED["fact_counts"]) * PUBLISHED["seeds"]
    published = ours = 0.0
    for mode in PUBLISHED["modes"]:
        for width in PUBLISHED["widths"]:
            rate = nearest(rates, mode, width) * per_cell_set
            published += rate * PUBLISHED["steps_per_cell"]
            ours += rate * OURS[mode]
    print(
        f"published recipe: {published / 3600:,.0f} h; our budgets: {ours / 3600:,.1f} h "
        f"(training only, one model at a time, rates of the next measured width up)"
    )
    write_json_atomic(
        args.out,
        {
            "cells": cells,
            "published": PUBLISHED,
            "our_budgets": OURS,
            "published_s": published,
            "ours_s": ours,
            "wall_s": time.time() - started,
            "env": environment(),
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
