"""The tool-base protocol's sweep, summary (means and ranges over seeds), plots and table."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from recall_bench import general, tables
from recall_bench.experiments.recording import grouped, seed_spread, write_summary
from recall_bench.experiments.tool_base import STORE, TOOL_FT, ToolBaseConfig
from recall_bench.experiments.tool_base_run import sweep_cells
from recall_bench.plots import plt, save

SUMMARY_KEYS = (
    "recall",
    "recall_unseen",
    "bits_memorized",
    "bits_delivered",
    "general_accuracy",
    "general_accuracy_kept",
    "general_mc_accuracy",
    "general_mc_kept",
    "text_bits_per_byte",
    "text_bits_per_byte_change",
    "old_recall",
    "old_recall_kept",
    "old_bits",
    "old_bits_kept",
    "dtheta_rel",
    "greedy_tv",
    "greedy_kl",
)


def run_tool_base(
    cfg: ToolBaseConfig,
    out: str | Path,
    progress: bool = True,
    resume: bool = False,
    command: str | None = None,
) -> dict:
    """The sweep (tool_base_run.sweep_cells), then summary.json (`command`: the command line
    that ran it, None from Python) and the plots."""
    out, t0 = Path(out), time.perf_counter()
    bases, records = sweep_cells(cfg, out, progress, resume)
    rows = summary_rows(records)
    plot = plot_kept(rows, out / "kept_vs_facts.png")
    paths = plot_trajectories(cfg, records, out / "trajectories.png")
    base_scores = {str(s): b["info"]["scores"] for s, b in bases.items()}
    return write_summary(
        out, "degradation-tool-base", cfg, command, time.perf_counter() - t0,
        model=dataclasses.asdict(cfg.model_config()),
        params=records[0]["params"],
        base_scores=base_scores,
        base_train={str(s): b["info"]["train"] for s, b in bases.items()},
        rows=rows,
        plots=[str(plot), str(paths)],
    )  # fmt: skip


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per (method, lr, N): the mean over seeds of each measure and its [min, max],
    how many seeds reached the target, and at which steps."""
    groups = grouped(
        records, lambda r: (r["tool_base"]["method"], r["tool_base"]["lr"], r["n_facts"])
    )
    rows = []
    for (method, lr, n), group in groups.items():
        row = {"method": method, "lr": lr, "n_facts": n, "seeds": [r["seed"] for r in group]}
        row.update(seed_spread(group, SUMMARY_KEYS))
        row["reached"] = sum(r["tool_base"]["reached"] for r in group)
        row["first_pass_steps"] = [r["tool_base"]["first_pass_step"] for r in group]
        row["gradient_steps"] = [r["tool_base"]["gradient_steps"] for r in group]
        row["budget"] = group[0]["tool_base"]["budget"]
        rows.append(row)
    return rows


def style(method: str, lr: float | None, lrs: list) -> dict:
    """Store-write black; in-weight one colour per lr, dashed with replay; the store write's
    in-tool fine-tune dotted, with triangles."""
    if method == STORE:
        return {"color": "k", "ls": "-", "marker": "s", "label": "store-write (0 steps)"}
    color = f"C{sorted(lrs).index(lr)}"
    if method == TOOL_FT:
        return {"color": color, "ls": ":", "marker": "^", "label": f"{method}, lr {lr:g}"}
    ls = "--" if method.endswith("+replay") else "-"
    return {"color": color, "ls": ls, "marker": "o", "label": f"{method}, lr {lr:g}"}


def plot_kept(rows: list[dict], path: Path) -> Path:
    """Graded general ability kept (above chance), old-knowledge bits kept and new-fact recall
    at the stop against N, one line per method and lr (bars: seed range); each in-weight
    general point is labelled with its recall."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    lrs = sorted({r["lr"] for r in rows if r["lr"] is not None})
    keys = ("general_mc_kept", "old_bits_kept", "recall")
    for method, lr in sorted({(r["method"], r["lr"]) for r in rows}, key=str):
        pts = sorted(
            (r for r in rows if (r["method"], r["lr"]) == (method, lr)), key=lambda r: r["n_facts"]
        )
        x = [r["n_facts"] for r in pts]
        st = style(method, lr, lrs)
        for ax, key in zip(axes, keys, strict=True):
            y = np.array([r.get(key, np.nan) for r in pts])
            lo = np.array([r.get(f"{key}_range", [np.nan] * 2)[0] for r in pts])
            hi = np.array([r.get(f"{key}_range", [np.nan] * 2)[1] for r in pts])
            ax.errorbar(x, y, yerr=[y - lo, hi - y], capsize=3, **st)
        if method != STORE:
            for r in pts:
                at = (r["n_facts"], r.get("general_mc_kept", np.nan))
                axes[0].annotate(
                    f"{r['recall']:.2f}", at, xytext=(3, 2), textcoords="offset points",
                    fontsize=6, color=st["color"],
                )  # fmt: skip
    labels = (
        "general ability kept (graded, above chance)\nlabels: in-weight recall of the new facts",
        "old-knowledge bits kept",
        "recall of the new facts at the stop",
    )
    for ax, label in zip(axes, labels, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("new facts (N)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def kept_series(history: list[dict], key: str, chance: float | None) -> list[float]:
    """A trajectory's measure relative to its step-0 value (the base's): above chance for a
    graded score (chance given), a ratio otherwise."""
    first = history[0][key]
    if chance is not None:
        return [general.above_chance(h[key], first, chance) for h in history]
    return [h[key] / first if first else math.nan for h in history]


def plot_trajectories(cfg: ToolBaseConfig, records: list[dict], path: Path) -> Path:
    """Per N (columns): new-fact recall, graded general kept and old bits kept against the
    fine-tuning step, one thin line per seed of each in-weight method and lr."""
    counts = sorted({r["n_facts"] for r in records})
    fig, axes = plt.subplots(3, len(counts), figsize=(4 * len(counts), 9), squeeze=False)
    chance = 1.0 / (cfg.suite.distractors + 1)
    lrs = sorted({*cfg.lrs, *cfg.in_tool_lrs})
    for r in records:
        tb = r["tool_base"]
        if tb["method"] == STORE:
            continue
        history = r["train"]["history"]
        steps = [h["step"] for h in history]
        col = counts.index(r["n_facts"])
        st = style(tb["method"], tb["lr"], lrs)
        series = (
            [h["recall"] for h in history],
            kept_series(history, "general_mc_accuracy", chance),
            kept_series(history, "old_bits", None),
        )
        for row, ys in enumerate(series):
            label = st["label"] if r["seed"] == cfg.seeds[0] else None
            axes[row][col].plot(steps, ys, color=st["color"], ls=st["ls"], lw=0.8, label=label)
    names = ("new-fact recall", "general kept (graded)", "old bits kept")
    for col, n in enumerate(counts):
        axes[0][col].set_title(f"{n} new facts")
        for row, name in enumerate(names):
            axes[row][col].set_ylabel(name)
            axes[row][col].set_xlabel("fine-tuning step")
            axes[row][col].grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    return save(fig, path)


COLUMNS = (  # of the summary table: (header, row field or function of the row, format)
    ("method", "method"),
    ("lr", "lr", "g"),
    ("facts", "n_facts"),
    ("recall", "recall", ".3f"),
    ("hit", lambda r: f"{r['reached']}/{len(r['seeds'])}"),  # seeds reaching the target
    ("steps", lambda r: ",".join("-" if s is None else str(s) for s in r["first_pass_steps"])),
    ("graded", "general_mc_kept", ".3f"),
    ("dbpb", "text_bits_per_byte_change", "+.3f"),
    ("oldrec", "old_recall_kept", ".3f"),
    ("oldbit", "old_bits_kept", ".3f"),
    ("dtheta", "dtheta_rel", ".3f"),
    ("gtv", "greedy_tv", ".4f"),  # TV on the base's own greedy continuations
)


def format_table(summary: dict) -> str:
    lines = [
        f"tool-base: {summary['params']['total']:,}-parameter base (general + tool pool + old "
        "facts); new facts by store write or in-weight fine-tuning (first pass)",
        tables.format_table(summary["rows"], COLUMNS),
        f"plots: {', '.join(summary['plots'])}   total {summary['wall_s']:.0f} s",
    ]
    return "\n".join(lines)
