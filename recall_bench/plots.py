"""Figures (matplotlib, written as PNG files atomically)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def recall_vs_facts(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Recall against fact count, one line per mode (in-tool also on unseen entities)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in sorted({r["mode"] for r in rows}):
        pts = sorted(
            (r["n_facts"], r["recall"], r.get("recall_unseen")) for r in rows if r["mode"] == mode
        )
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{mode}: all facts")
        if any(p[2] is not None for p in pts):
            unseen = [p for p in pts if p[2] is not None]
            ax.plot(
                [p[0] for p in unseen],
                [p[2] for p in unseen],
                marker="s",
                linestyle="--",
                label=f"{mode}: unseen entities",
            )
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("facts")
    ax.set_ylabel("exact-match recall (greedy decoding)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)
