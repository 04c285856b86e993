"""Summaries of edit records: one row per (method, k) over seeds, a text table, and the plot
of efficacy, generalization and specificity against k for every method."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recall_bench import plots, tables

SHOWN = ("efficacy", "generalization", "specificity")
GROUP_METRICS = (
    "efficacy_known",
    "specificity_same_entity",
    "specificity_neighbour",
    "specificity_other",
)
COSTS = ("wall_s_per_edit", "flops_per_edit", "bytes_per_edit")
# general ability kept (records of bases that learned the general suite; else None)
GENERAL = ("general_mc_kept", "general_accuracy_kept", "text_bits_per_byte_change")


def general_kept(record: dict, name: str) -> float | None:
    """One general-ability-kept measure of a record (None when it measured none)."""
    block = record["general_ability"]
    value = block["kept"][name] if isinstance(block, dict) else None
    return None if value is None or np.isnan(value) else value


def mean_of(values: list) -> float | None:
    """Mean of the values that are not None (None if there are none)."""
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarize(records: list[dict]) -> list[dict]:
    """One row per (method, k): means over seeds of the triad, the groups, the general
    ability kept, the costs, and min/max of the triad and of the graded general ability kept
    (the spread over seeds); methods in first-seen order."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    rows = []
    for method in methods:
        for k in sorted({r["k"] for r in records if r["method"] == method}):
            cell = [r for r in records if r["method"] == method and r["k"] == k]
            row = {"method": method, "k": k, "seeds": len(cell)}
            for name in (*SHOWN, *GROUP_METRICS, "weights_unchanged"):
                values = [r["metrics"][name] for r in cell]
                row[name] = mean_of(values)
                kept = [v for v in values if v is not None]
                if name in SHOWN and kept:
                    row[f"{name}_min"], row[f"{name}_max"] = min(kept), max(kept)
            for name in GENERAL:
                values = [v for v in (general_kept(r, name) for r in cell) if v is not None]
                row[name] = mean_of(values)
                if name == GENERAL[0] and values:
                    row[f"{name}_min"], row[f"{name}_max"] = min(values), max(values)
            for name in COSTS:
                row[name] = mean_of([r["cost"][name] for r in cell])
            rows.append(row)
    return rows


HEADERS = (
    "efficacy", "generalization", "specificity", "efficacy (known)", "same entity", "neighbour",
    "other", "general kept (graded)", "general kept (exact)", "text bits/byte change",
)  # fmt: skip
COLUMNS = (  # of the summary table: (header, row field, format)
    ("method", "method"),
    ("k", "k"),
    *((h, n, ".3f") for h, n in zip(HEADERS, (*SHOWN, *GROUP_METRICS, *GENERAL), strict=True)),
    ("s/edit", "wall_s_per_edit", ".2g"),
    ("FLOPs/edit", "flops_per_edit", ".2g"),
    ("bytes/edit", "bytes_per_edit", ".0f"),
)


def format_table(rows: list[dict]) -> str:
    """A markdown table of the summary rows (general ability kept: graded above chance,
    exact, and the text's change in bits per byte)."""
    return tables.format_table(rows, COLUMNS, markdown=True)


def plot(rows: list[dict], path: str | Path) -> Path:
    """Efficacy, generalization, specificity (and the graded general ability kept, when
    measured) against k, one line per method (mean over seeds, bars from the lowest to the
    highest seed)."""
    shown = SHOWN + tuple(n for n in GENERAL[:1] if any(r[n] is not None for r in rows))
    fig, axes = plots.plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.8), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, name in zip(axes[0], shown, strict=True):
        for i, method in enumerate(methods):
            pts = [r for r in rows if r["method"] == method and r[name] is not None]
            if not pts:
                continue
            ks = np.array([r["k"] for r in pts], float) * (1 + 0.03 * (i - len(methods) / 2))
            mean = np.array([r[name] for r in pts])
            spread = [
                mean - [r[f"{name}_min"] for r in pts],
                [r[f"{name}_max"] for r in pts] - mean,
            ]
            ax.errorbar(ks, mean, yerr=spread, marker="o", capsize=2, label=method)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("facts edited (k)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return plots.save(fig, path)
