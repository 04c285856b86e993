"""Golden records: tiny configurations whose metrics are pinned, so a change in jax, the
model or the metrics never moves a published number silently.

A golden file holds a run config, the metrics it produced, its steps and stop reason. The
tolerances live here, in code, never in the file they check: steps and stop reason must
match exactly, each metric within its absolute tolerance (None-valued metrics exactly).
`check` re-runs the config and returns a readable table of what moved. Refresh on purpose
with `python tools/refresh_golden.py` (it shows the diff, and refuses on a dirty git tree)
and commit the diff with the reason.
"""

from __future__ import annotations

from pathlib import Path

from recall_bench.experiments.run import RunConfig, holds_config, run
from recall_bench.records import clean_json, read_json

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "tests" / "golden"
EXACT = ("steps", "stop_reason")  # train fields pinned exactly

# name -> (config, {metric: absolute tolerance}). in_weight_tiny sits mid-range (recall
# ~0.56 at its 500-step budget), so a collapse or a jump both show; in_tool_tiny ends on the
# plateau rule at 1,000 steps, through a SQLite store, on 51 held-out entities.
GOLDEN = {
    "in_weight_tiny": (
        RunConfig(
            mode="in-weight", n_facts=512, layers=1, width=16, heads=2, steps=500, batch_size=128
        ),
        {"recall": 0.01, "token_accuracy": 0.01, "bits_memorized": 10.0, "bits_per_param": 2e-3},
    ),
    "in_tool_tiny": (
        RunConfig(
            mode="in-tool",
            n_facts=256,
            layers=1,
            width=16,
            heads=2,
            steps=1000,
            batch_size=64,
            store="sqlite",
        ),
        {
            "recall": 0.01,
            "recall_unseen": 0.02,  # one of the 51 held-out entities
            "call_valid": 0.01,
            "copy_accuracy": 0.01,
            "bits_delivered": 10.0,  # in-tool bits come with the store's help
        },
    ),
}


def golden_record(name: str, record: dict | None = None) -> dict:
    """What a golden file pins, from `record` (default: run the configuration now)."""
    cfg, tolerance = GOLDEN[name]
    record = run(cfg, progress=False) if record is None else record
    return {
        "config": clean_json(record["config"]),
        "metrics": {k: record["metrics"][k] for k in tolerance},
        "train": {k: record["train"][k] for k in EXACT},
        "env": {k: record["env"][k] for k in ("jax", "jaxlib", "flax", "optax", "git_commit")},
    }


def show(value) -> str:
    """A pinned value for a table: floats to 8 significant digits."""
    return f"{value:.8g}" if isinstance(value, float) else str(value)


def within(then: float | None, value: float | None, tol: float) -> bool:
    """|value - then| <= tol (False for NaN); a None only matches a None."""
    if then is None or value is None:
        return then is value
    return abs(value - then) <= tol


def moved(golden: dict, now: dict, tolerance: dict[str, float]) -> list[str]:
    """Table lines for every pinned field of `now` that differs from `golden` beyond its
    tolerance (empty: none did)."""
    lines = []
    for key in EXACT:
        then, value = golden["train"][key], now["train"][key]
        if then != value:
            lines.append(f"{key:<16} golden {show(then):<12} now {show(value):<12} exact")
    for metric, tol in tolerance.items():
        then, value = golden["metrics"].get(metric), now["metrics"].get(metric)
        if not within(then, value, tol):
            lines.append(
                f"{metric:<16} golden {show(then):<12} now {show(value):<12} tolerance {tol}"
            )
    return lines


def check(name: str, record: dict | None = None) -> list[str]:
    """Differences between a fresh run (or `record`) and the golden file, as table lines
    (empty: none)."""
    golden = read_json(GOLDEN_DIR / f"{name}.json")
    cfg, tolerance = GOLDEN[name]
    if not holds_config(golden, cfg):  # fields the file predates: their defaults
        return [f"{name}: the configuration changed; refresh the golden file on purpose"]
    lines = moved(golden, golden_record(name, record), tolerance)
    if lines:
        lines.insert(
            0,
            f"{name}: moved beyond tolerance (golden from jax {golden['env']['jax']}, "
            f"commit {golden['env']['git_commit']}):",
        )
    return lines


def diff(old: dict | None, new: dict) -> list[str]:
    """Per pinned field, old -> new (old None: a new golden file)."""
    lines = []
    for part in ("train", "metrics"):
        for key, value in new[part].items():
            then = None if old is None else old.get(part, {}).get(key)
            mark = "" if then == value else "   (changed)"
            lines.append(f"  {key:<16} {show(then):>14} -> {show(value):<14}{mark}")
    return lines
