"""The default benchmark: one small model in both modes, at fact counts from well below to
well past its in-weight capacity. Each cell's record is kept, so a killed run resumes."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from recall_bench import plots, tables
from recall_bench.experiments.config import RunConfig
from recall_bench.experiments.run import run
from recall_bench.records import write_json_atomic

FACT_COUNTS = (256, 1024, 2048, 4096, 8192, 16384)
BASE = RunConfig(layers=2, width=32, heads=4, steps=2000, batch_size=256, lr=1e-2)


def cells() -> list[RunConfig]:
    return [
        dataclasses.replace(BASE, mode=mode, n_facts=n)
        for mode in ("in-weight", "in-tool")
        for n in FACT_COUNTS
    ]


def summary_row(record: dict) -> dict:
    m, t = record["metrics"], record["train"]
    return {
        "mode": record["mode"],
        "n_facts": record["n_facts"],
        "params": record["params"]["total"],
        "recall": m["recall"],
        "recall_unseen": m.get("recall_unseen"),
        "bits_memorized": m.get("bits_memorized"),  # held in the weights (not in-tool)
        "bits_per_param": m.get("bits_per_param"),
        "bits_delivered": m.get("bits_delivered"),  # in-tool: with the store's help
        "bits_delivered_per_param": m.get("bits_delivered_per_param"),
        "steps": t["steps"],
        "stop_reason": t["stop_reason"],
        "train_s": t["wall_s"],
    }


def run_default(out: Path, progress: bool = True, resume: bool = False) -> dict:
    """Run every cell under `out` (with resume: keep finished cells, continue a killed one);
    write summary.json and recall_vs_facts.png."""
    out = Path(out)
    if not resume and any(out.glob("*/record.json")):
        raise ValueError(
            f"{out} holds an earlier default run: pass --resume to reuse its finished cells, "
            "or choose another --out"
        )
    t0 = time.perf_counter()
    rows = []
    todo = cells()
    for i, cfg in enumerate(todo, 1):
        if progress:
            print(f"[{i}/{len(todo)}] {cfg.mode}, {cfg.n_facts} facts", file=sys.stderr)
        record = run(cfg, out / f"{cfg.mode}-{cfg.n_facts}", progress=progress, resume=resume)
        rows.append(summary_row(record))
        if progress:
            r = rows[-1]
            print(f"    recall {r['recall']:.3f} after {r['steps']} steps", file=sys.stderr)
    plot = plots.recall_vs_facts(
        rows,
        out / "recall_vs_facts.png",
        f"{BASE.layers} layers, d={BASE.width} ({rows[0]['params']:,} params)",
    )
    summary = {
        "benchmark": "default",
        "model": {"layers": BASE.layers, "width": BASE.width, "heads": BASE.heads},
        "params": rows[0]["params"],
        "rows": rows,
        "plot": str(plot),
        "wall_s": time.perf_counter() - t0,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def format_table(summary: dict) -> str:
    """Bits held in the weights per parameter (bits/param) and, in-tool, bits delivered with
    the store's help per parameter (delivered/param) are separate columns."""
    columns = [("mode", "mode"), ("facts", "n_facts"), ("recall", "recall", ".3f")]
    columns += [("unseen", "recall_unseen", ".3f"), ("bits/param", "bits_per_param", ".3f")]
    columns += [("delivered/param", "bits_delivered_per_param", ".3f")]
    columns += [("steps", "steps"), ("stop", "stop_reason")]
    return "\n".join(
        [
            f"default benchmark: {summary['params']:,}-parameter model",
            tables.format_table(summary["rows"], columns),
            f"plot: {summary['plot']}   total {summary['wall_s']:.0f} s",
        ]
    )
