"""The consolidation sweep's output: one record per cell, summary.json (mean and [min, max]
over seeds of every measure at every evaluation step), a table and the trajectory plots."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from recall_bench import tables
from recall_bench.experiments.consolidate import ConsolidateConfig, run_consolidation
from recall_bench.experiments.recording import grouped, write_summary
from recall_bench.plots import plt, save
from recall_bench.records import write_json_atomic

PANELS = (
    ("recall_without_store", "new facts recalled without the store"),
    ("old_recall_kept", "old facts kept (recall / base's)"),
    ("recall_through_store", "new facts recalled through the store"),
    ("tool_recall_fresh", "tool recall, fresh entities"),
    ("general_accuracy_kept", "general accuracy kept"),
)
STYLE = {"own-answers": "-", "true-facts": "--"}


def run_consolidate(
    cfg: ConsolidateConfig, out: str | Path, progress: bool = True, command: str | None = None
) -> dict:
    """The whole sweep into `out` (refused if it holds an earlier one): records, summary
    (`command`: the command line that ran it, None from Python), plots."""
    out, t0 = Path(out), time.perf_counter()
    if (out / "summary.json").exists():
        raise ValueError(
            f"{out} holds an earlier consolidation run (summary.json): choose another --out "
            "or delete it"
        )
    records = run_consolidation(cfg, progress)
    for r in records:
        folder = out / f"{r['consolidation']['method']}-{r['n_facts']}-s{r['seed']}"
        write_json_atomic(folder / "record.json", r)
    return summarize(cfg, records, out, time.perf_counter() - t0, command)


def trajectory(record: dict) -> list[dict]:
    """A cell's measurements at each evaluation step: its train block's history (a record
    made before it was built by the cell engine: its `trajectory`)."""
    return record["trajectory"] if "trajectory" in record else record["train"]["history"]


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per (method, N, evaluation step): the mean over seeds of each measure and its
    [min, max] (measures that are None on some seed are left out)."""
    groups = grouped(records, lambda r: (r["consolidation"]["method"], r["n_facts"]))
    rows = []
    for (method, n), group in sorted(groups.items()):
        for i, first in enumerate(trajectory(group[0])):
            points = [trajectory(r)[i] for r in group]
            row = {"method": method, "n_facts": n, "step": first["step"], "seeds": len(group)}
            for key in first:
                values = [p[key] for p in points]
                if key == "step" or any(v is None or np.isnan(v) for v in values):
                    continue
                row[key] = float(np.mean(values))
                row[f"{key}_range"] = [float(min(values)), float(max(values))]
            row["answers_right"] = float(
                np.mean([r["consolidation"]["data"]["right"] for r in group])
            )
            rows.append(row)
    return rows


def summarize(
    cfg: ConsolidateConfig, records: list[dict], out: Path, wall_s: float, command: str | None
) -> dict:
    rows = summary_rows(records)
    plots = [
        str(trajectory_plot(rows, "step", out / "consolidation_vs_steps.png")),
        str(trajectory_plot(rows, "bits_moved", out / "consolidation_vs_bits.png")),
    ]
    params = records[0]["params"]
    return write_summary(
        out, "consolidation", cfg, command, wall_s, params=params, rows=rows, plots=plots
    )


def trajectory_plot(rows: list[dict], x_key: str, path: Path) -> Path:
    """Each PANELS measure against steps or bits moved: one colour per N, solid for the
    model's own answers, dashed for the true facts; means over seeds."""
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.8))
    counts = sorted({r["n_facts"] for r in rows})
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        for c, n in enumerate(counts):
            for method, style in STYLE.items():
                pts = [r for r in rows if r["n_facts"] == n and r["method"] == method and key in r]
                if pts:
                    x, y = [p[x_key] for p in pts], [p[key] for p in pts]
                    ax.plot(x, y, style, marker="o", ms=3, color=f"C{c}", label=f"{n}, {method}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("offline steps" if x_key == "step" else "bits moved into the weights")
        ax.set_xscale("symlog", linthresh=50 if x_key == "step" else 100)
        ax.set_ylim(-0.03, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, title="new facts, data", title_fontsize=6)
    fig.tight_layout()
    return save(fig, path)


COLUMNS = (  # of the table: (header, row field or function of the row, format)
    ("data", lambda r: "base" if r["step"] == 0 else r["method"]),
    ("facts", "n_facts"),
    ("step", "step"),
    ("alone", "recall_without_store", ".3f"),
    ("bits moved", "bits_moved", ",.0f"),
    ("through", "recall_through_store", ".3f"),
    ("old kept", "old_recall_kept", ".3f"),
    ("tool", "tool_recall_fresh", ".3f"),
    ("gen kept", "general_accuracy_kept", ".3f"),
)


def format_table(summary: dict) -> str:
    """The base (step 0) and the last evaluation of every method and N."""
    last = max(r["step"] for r in summary["rows"])
    first = summary["rows"][0]["method"]  # whose step 0 shows the base
    shown = [
        r
        for r in summary["rows"]
        if (r["step"] == 0 and r["method"] == first) or r["step"] == last > 0
    ]
    lines = [
        f"consolidation: {summary['params']['total']:,}-parameter model",
        tables.format_table(shown, COLUMNS),
        f"plots: {', '.join(summary['plots'])}   total {summary['wall_s']:.0f} s",
    ]
    return "\n".join(lines)
