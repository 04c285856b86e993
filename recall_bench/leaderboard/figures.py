"""The leaderboard page's headline plots, drawn from its seed-group rows (page.seed_groups):
recall against facts, params for 95% recall, bits/param against parameters, general
ability kept against facts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recall_bench import plots

TARGET = 0.95  # recall the params-for-recall plot asks for
FACT_MODES = ("in-weight", "in-tool", "side-memory", "in-weight+replay", "in-tool+replay")


def _mean(row: dict[str, Any], metric: str) -> float | None:
    stats = row["metrics"].get(metric)
    return None if stats is None else stats["mean"]


def recall_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fact mode and fact count, the best seed-group mean recall (and its unseen recall)."""
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        recall = _mean(row, "recall")
        if row["mode"] not in FACT_MODES or recall is None:
            continue
        key = (row["mode"], row["n_facts"])
        if key not in best or recall > best[key]["recall"]:
            best[key] = {"mode": row["mode"], "n_facts": row["n_facts"], "recall": recall}
            if _mean(row, "recall_unseen") is not None:
                best[key]["recall_unseen"] = _mean(row, "recall_unseen")
    return list(best.values())


def params_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fact mode and fact count, the smallest model whose mean recall reaches TARGET (None
    when none did) and the largest model tried, as plots.params_for_recall reads them."""
    cells: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        if row["mode"] in FACT_MODES and _mean(row, "recall") is not None:
            cells.setdefault((row["mode"], row["n_facts"]), []).append(row)
    out = []
    for (mode, n), members in sorted(cells.items()):
        passed = [r["params"] for r in members if _mean(r, "recall") >= TARGET]
        out.append(
            {
                "mode": mode,
                "n_facts": n,
                "params": min(passed) if passed else None,
                "largest_params_tried": max(r["params"] for r in members),
            }
        )
    return out


def _by_label(rows: list[dict[str, Any]], metric: str, label: Any) -> dict[str, list]:
    series: dict[str, list] = {}
    for row in rows:
        if row["metrics"].get(metric) is not None:
            series.setdefault(label(row), []).append(row)
    return dict(sorted(series.items()))


def _interval_points(ax: Any, series: dict[str, list], x: str, metric: str) -> None:
    """Each row a point at its seed mean with a min-max bar, one colour per series."""
    for label, members in series.items():
        members = sorted(members, key=lambda r: r[x])
        stats = [r["metrics"][metric] for r in members]
        ax.errorbar(
            [r[x] for r in members],
            [s["mean"] for s in stats],
            yerr=[[s["mean"] - s["min"] for s in stats], [s["max"] - s["mean"] for s in stats]],
            fmt="o",
            ms=4,
            capsize=2,
            label=label,
        )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def bits_per_param(rows: list[dict[str, Any]], path: Path) -> Path:
    """Bits/param (held in weights or a memory layer) against total parameters."""
    fig, ax = plots.plt.subplots(figsize=(6, 4))
    series = _by_label(rows, "bits_per_param", lambda r: f"{r['mode']} {r['dtype']}")
    _interval_points(ax, series, "params", "bits_per_param")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel("bits/param (seed mean, min-max bar)")
    return plots.save(fig, path)


def general_kept(rows: list[dict[str, Any]], path: Path) -> Path:
    """General-suite accuracy kept (retention above chance) against facts, per mode."""
    fig, ax = plots.plt.subplots(figsize=(6, 4))
    series = _by_label(rows, "general_accuracy_kept", lambda r: r["mode"])
    _interval_points(ax, series, "n_facts", "general_accuracy_kept")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("facts")
    ax.set_ylabel("general accuracy kept (seed mean, min-max bar)")
    return plots.save(fig, path)


def headline_plots(rows: list[dict[str, Any]], out_dir: Path) -> list[tuple[str, str]]:
    """Write the four headline plots (those the rows have data for) into out_dir; returns
    (file name, caption) pairs."""
    out: list[tuple[str, str]] = []
    recall, params = recall_rows(rows), params_rows(rows)
    if recall:
        plots.recall_vs_facts(recall, out_dir / "recall_vs_facts.png", "best entry per fact count")
        out.append(("recall_vs_facts.png", "Recall against facts, every mode (best entry per N)"))
    if params:
        plots.params_for_recall(params, out_dir / "params_for_recall.png")
        out.append(("params_for_recall.png", "Parameters for 95% recall against facts"))
    if any("bits_per_param" in r["metrics"] for r in rows):
        bits_per_param(rows, out_dir / "bits_per_param.png")
        out.append(("bits_per_param.png", "Bits/param against parameters"))
    if any("general_accuracy_kept" in r["metrics"] for r in rows):
        general_kept(rows, out_dir / "general_kept.png")
        out.append(("general_kept.png", "General ability kept against facts"))
    return out
