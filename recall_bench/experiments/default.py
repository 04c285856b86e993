"""The default benchmark, both axes of the question: recall of one small model in both modes,
at fact counts from well below to well past its in-weight capacity; and the general ability a
smaller model keeps as N grows, under the shared-capacity protocol (experiments/joint.py: one
seed, a short budget). Each cell's record is kept, so a killed run resumes."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from recall_bench import plots, tables
from recall_bench.experiments.config import RunConfig
from recall_bench.experiments.joint import JointConfig
from recall_bench.experiments.joint_report import run_joint
from recall_bench.experiments.run import run
from recall_bench.progress import log
from recall_bench.records import write_json_atomic

FACT_COUNTS = (256, 1024, 2048, 4096, 8192, 16384)
BASE = RunConfig(layers=2, width=32, heads=4, steps=2000, batch_size=256, lr=1e-2)
# general ability: a 1-layer d=16 model from scratch on general data and N facts, one seed
GENERAL = JointConfig(
    fact_counts=(32, 256, 2048),
    facts=RunConfig(layers=1, width=16, heads=4, steps=1000, batch_size=64, eval_every=500),
    tool_train_entities=1000,
    zipf=0.0,  # uniform: more fact bits than Zipf-like sampling at 2,048 facts (degradation_v2)
    rows=1 << 15,
    seeds=(0,),
)
GENERAL_KEYS = ("mode", "n_facts", "recall", "bits_memorized", "general_mc_kept")
GENERAL_KEYS += ("general_accuracy_kept", "text_bits_per_byte_change", "greedy_tv")


def cells(base: RunConfig = BASE, counts: tuple[int, ...] = FACT_COUNTS) -> list[RunConfig]:
    return [
        dataclasses.replace(base, mode=mode, n_facts=n)
        for mode in ("in-weight", "in-tool")
        for n in counts
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


def run_default(
    out: Path,
    progress: bool = True,
    resume: bool = False,
    todo: list[RunConfig] | None = None,
    joint: JointConfig = GENERAL,
    command: str | None = None,
) -> dict:
    """Run every cell under `out` (with resume: keep finished cells, continue a killed one)
    and the general-ability sweep under out/general; write summary.json and
    recall_vs_facts.png (recall, and general ability kept, against N). `command`: the command
    line that ran it (None from Python), in both summaries."""
    out = Path(out)
    if not resume and any(out.glob("*/record.json")):
        raise ValueError(
            f"{out} holds an earlier default run: pass --resume to reuse its finished cells, "
            "or choose another --out"
        )
    t0 = time.perf_counter()
    rows = []
    todo = cells() if todo is None else todo
    for i, cfg in enumerate(todo, 1):
        log(progress, f"[{i}/{len(todo)}] {cfg.mode}, {cfg.n_facts} facts")
        record = run(cfg, out / f"{cfg.mode}-{cfg.n_facts}", progress=progress, resume=resume)
        rows.append(summary_row(record))
        log(progress, f"    recall {rows[-1]['recall']:.3f} after {rows[-1]['steps']} steps")
    log(progress, "general ability kept (shared capacity)")
    both = run_joint(joint, out / "general", progress, resume, command=command)
    general = {
        "params": both["params"]["total"],
        "model": {k: both["model"][k] for k in ("layers", "width", "heads")},
        "steps": joint.facts.steps,
        "capacity_bits": both["capacity_bits"],
        "bits_per_fact": both["bits_per_fact"],
        "rows": [{k: r.get(k) for k in GENERAL_KEYS} for r in both["rows"]],
    }
    first = todo[0]
    plot = plots.default_benchmark(
        rows,
        general,
        out / "recall_vs_facts.png",
        f"{first.layers} layers, d={first.width} ({rows[0]['params']:,} params)",
    )
    summary = {
        "benchmark": "default",
        "command": command,
        "model": {"layers": first.layers, "width": first.width, "heads": first.heads},
        "params": rows[0]["params"],
        "rows": rows,
        "general": general,
        "plot": str(plot),
        "wall_s": time.perf_counter() - t0,
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def format_table(summary: dict) -> str:
    """Bits held in the weights per parameter (bits/param) and, in-tool, bits delivered with
    the store's help per parameter (delivered/param) are separate columns; then the general
    ability kept against N (general_lines)."""
    columns = [("mode", "mode"), ("facts", "n_facts"), ("recall", "recall", ".3f")]
    columns += [("unseen", "recall_unseen", ".3f"), ("bits/param", "bits_per_param", ".3f")]
    columns += [("delivered/param", "bits_delivered_per_param", ".3f")]
    columns += [("steps", "steps"), ("stop", "stop_reason")]
    return "\n".join(
        [
            f"default benchmark: {summary['params']:,}-parameter model",
            tables.format_table(summary["rows"], columns),
            *general_lines(summary.get("general")),
            f"plot: {summary['plot']}   total {summary['wall_s']:.0f} s",
        ]
    )


GENERAL_COLUMNS = (  # fact bits in-tool are answered through the store
    ("mode", "mode"),
    ("facts", "n_facts"),
    ("recall", "recall", ".3f"),
    ("bits", "bits_memorized", ",.0f"),
    ("graded", "general_mc_kept", ".3f"),  # kept above chance
    ("exact", "general_accuracy_kept", ".3f"),
    ("text bpb", "text_bits_per_byte_change", "+.3f"),
    ("gen tv", "greedy_tv", ".3f"),
)


def general_lines(general: dict | None) -> list[str]:
    """The general-ability table: per mode and N, the facts held beside the general ability
    kept against the general-only model (graded above chance, exact) and the held-out text's
    change in bits per byte."""
    if general is None:
        return []
    cap = general["capacity_bits"]
    capacity = (
        "-" if cap is None else f"{cap:,.0f} bits ({cap / general['bits_per_fact']:,.0f} facts)"
    )
    return [
        f"general ability kept, shared capacity: {general['params']:,}-parameter model, "
        f"{general['steps']} steps, fact capacity {capacity}",
        tables.format_table(general["rows"], GENERAL_COLUMNS),
    ]
