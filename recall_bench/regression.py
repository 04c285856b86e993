"""Golden records: tiny configurations whose metrics are pinned, so a change in jax, the
model or the metrics never moves a published number silently.

A golden file holds a run config, the metrics it produced, and a tolerance per metric
(absolute). `check` re-runs the config and returns a readable table of what moved.
Refresh on purpose with `python tools/refresh_golden.py` and commit the diff.
"""

from __future__ import annotations

from pathlib import Path

from recall_bench.experiments.run import RunConfig, holds_config, run
from recall_bench.records import clean_json, read_json, write_json_atomic

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "tests" / "golden"

# name -> (config, {metric: absolute tolerance})
GOLDEN = {
    "in_weight_tiny": (
        RunConfig(mode="in-weight", n_facts=1024, layers=1, width=16, heads=2, steps=200, seed=0),
        {"recall": 0.02, "token_accuracy": 0.02, "bits_memorized": 30.0},
    ),
    "in_tool_tiny": (
        RunConfig(mode="in-tool", n_facts=1024, layers=1, width=16, heads=2, steps=300, seed=0),
        {"recall": 0.02, "recall_unseen": 0.03, "call_valid": 0.02, "copy_accuracy": 0.02},
    ),
}


def golden_record(name: str) -> dict:
    """Run a golden configuration now and keep what the golden file pins."""
    cfg, tolerance = GOLDEN[name]
    record = run(cfg, progress=False)
    return {
        "config": clean_json(record["config"]),
        "metrics": {k: record["metrics"][k] for k in tolerance},
        "tolerance": tolerance,
        "steps": record["train"]["steps"],
        "env": {k: record["env"][k] for k in ("jax", "jaxlib", "flax", "optax", "git_commit")},
    }


def check(name: str) -> list[str]:
    """Differences between a fresh run and the golden file, as table lines (empty: none)."""
    golden = read_json(GOLDEN_DIR / f"{name}.json")
    if not holds_config(golden, GOLDEN[name][0]):  # fields the file predates: their defaults
        return [f"{name}: the configuration changed; refresh the golden file on purpose"]
    now = golden_record(name)
    lines = []
    for metric, tol in golden["tolerance"].items():
        then, value = golden["metrics"][metric], now["metrics"][metric]
        if abs(value - then) > tol:
            lines.append(f"{metric:<16} golden {then:<12.6g} now {value:<12.6g} tolerance {tol}")
    if lines:
        lines.insert(
            0,
            f"{name}: metrics moved beyond tolerance (golden from jax "
            f"{golden['env']['jax']}, commit {golden['env']['git_commit']}):",
        )
    return lines


def refresh(names: list[str] | None = None) -> list[Path]:
    """Re-run golden configurations and overwrite their files."""
    return [
        write_json_atomic(GOLDEN_DIR / f"{name}.json", golden_record(name))
        for name in names or list(GOLDEN)
    ]
