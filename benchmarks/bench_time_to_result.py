"""Time to result: the default run (`recall-bench run`, as a subprocess) and one
params-for-recall cell (the smallest 2-layer model reaching 95% recall on 4,096 facts,
found by a binary search over widths), in wall seconds including compiles and evaluation.

For scale: the published recipe for one params-for-recall cell (Houliston et al. 2025:
2-layer model, batch 128 x 257 tokens, 100k steps) runs at about 0.32 s/step on this 2-core
CPU, about 9 hours per cell.

Usage: python benchmarks/bench_time_to_result.py [--default-run] [--cell] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from recall_bench.records import environment, write_json_atomic

PUBLISHED_S_PER_STEP = 0.32
PUBLISHED_STEPS = 100_000


def default_run() -> dict[str, Any]:
    """Wall time of `recall-bench run` (the default benchmark) in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "default"
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "recall_bench.cli", "run", "--out", str(out), "--quiet"],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if proc.returncode:
            raise RuntimeError(f"recall-bench run failed:\n{proc.stderr[-3000:]}")
        summary = json.loads((out / "summary.json").read_text())
        cells = []
        for row in summary["rows"]:
            cell = out / f"{row['mode']}-{row['n_facts']}"
            record = json.loads((cell / "record.json").read_text())
            t = record["train"]
            cells.append(
                {
                    "mode": row["mode"],
                    "n_facts": row["n_facts"],
                    "steps": t["steps"],
                    "recall": row["recall"],
                    "train_s": t["wall_s"],
                    "compile_s": t["compile_s"],
                    "eval_s": record["metrics"]["eval_s"],
                }
            )
    return {
        "default_run_s": wall,
        "cells": cells,
        "compile_s_total": sum(c["compile_s"] for c in cells),
        "train_s_total": sum(c["train_s"] for c in cells),
        "eval_s_total": sum(c["eval_s"] for c in cells),
    }


def try_width(width: int, facts: int, steps: int, target: float) -> dict[str, Any]:
    """Train one in-weight model (stopping once teacher-forced recall on every fact reaches
    `target`) and measure its recall by real greedy decoding."""
    from recall_bench.experiments.run import RunConfig, evaluate, make_task
    from recall_bench.model import count_params
    from recall_bench.train import Task, train_models
    from recall_bench.worlds import make_fact_world

    cfg = RunConfig(n_facts=facts, layers=2, width=width, heads=4, steps=steps)
    start = time.perf_counter()
    world = make_fact_world(cfg.spec)
    train_cfg = dataclasses.replace(cfg.train_config(), target_recall=target, monitor_facts=facts)
    train = make_task(cfg, world).train
    task = Task(train, train, world.fact_bits())  # the stopping rule watches every fact
    result = train_models(cfg.model_config(), train_cfg, [task], [cfg.seed], progress=False)
    metrics, _ = evaluate(cfg, world, result.graphdef, result.model(0))
    return {
        "width": width,
        "params": count_params(result.model(0))["total"],
        "steps": result.steps[0],
        "stop_reason": result.stop_reason[0],
        "recall": metrics["recall"],
        "bits_per_param": metrics["bits_per_param"],
        "compile_s": result.compile_s,
        "train_s": result.wall_s,
        "wall_s": time.perf_counter() - start,
    }


def params_for_recall_cell(
    widths: list[int], facts: int = 4096, steps: int = 3000, target: float = 0.95
) -> dict[str, Any]:
    """Binary search over increasing widths for the smallest one reaching `target`."""
    start = time.perf_counter()
    lo, hi, trials, best = 0, len(widths) - 1, [], None
    while lo <= hi:
        mid = (lo + hi) // 2
        trial = try_width(widths[mid], facts, steps, target)
        trials.append(trial)
        print(
            f"  width {trial['width']:>3} ({trial['params']:,} params): recall "
            f"{trial['recall']:.3f} after {trial['steps']} steps, {trial['wall_s']:.0f} s",
            file=sys.stderr,
        )
        if trial["recall"] >= target:
            best, hi = trial, mid - 1
        else:
            lo = mid + 1
    wall = time.perf_counter() - start
    published = PUBLISHED_S_PER_STEP * PUBLISHED_STEPS
    return {
        "facts": facts,
        "target_recall": target,
        "widths": widths,
        "smallest": best,
        "trials": trials,
        "wall_s": wall,
        "published_recipe_s": published,
        "speedup_vs_published": published / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--default-run", action="store_true", help="time `recall-bench run`")
    parser.add_argument("--cell", action="store_true", help="time one params-for-recall cell")
    parser.add_argument("--widths", default="16,24,32,48,64")
    parser.add_argument("--steps", type=int, default=3000, help="step budget per trial")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/time_to_result.json"))
    args = parser.parse_args()
    result: dict[str, Any] = {}
    if args.default_run:
        result["default_run"] = default_run()
        print(f"default run: {result['default_run']['default_run_s']:.0f} s", flush=True)
    if args.cell:
        widths = [int(w) for w in args.widths.split(",")]
        cell = params_for_recall_cell(widths, steps=args.steps)
        result["params_for_recall_cell"] = cell
        best = cell["smallest"]
        found = (
            f"width {best['width']} ({best['params']:,} params, recall {best['recall']:.3f})"
            if best
            else "no width reached the target"
        )
        print(
            f"params-for-recall cell (4,096 facts, 95%): {found} in {cell['wall_s']:.0f} s "
            f"({cell['speedup_vs_published']:.0f}x faster than the published recipe's "
            f"{cell['published_recipe_s'] / 3600:.1f} h)"
        )
    result["environment"] = environment()
    write_json_atomic(args.out, result)


if __name__ == "__main__":
    main()
