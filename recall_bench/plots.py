"""Figures (matplotlib, written as PNG files atomically)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np

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
    recall_lines(ax, rows, title)
    return save(fig, path)


def default_benchmark(rows: list[dict], general: dict, path: str | Path, title: str = "") -> Path:
    """The default benchmark's two axes: recall against N (left); general ability kept against
    N under the shared-capacity protocol, graded and exact, a dotted line at the measured fact
    capacity (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    recall_lines(left, rows, title)
    for mode, color in (("in-weight", "C0"), ("in-tool", "C1")):
        pts = sorted((r["n_facts"], r) for r in general["rows"] if r["mode"] == mode)
        x = [n for n, _ in pts]
        for key, style, what in (
            ("general_mc_kept", "-o", "graded"),
            ("general_accuracy_kept", "--s", "exact"),
        ):
            right.plot(x, [r[key] for _, r in pts], style, color=color, label=f"{mode}, {what}")
    if general["capacity_bits"]:
        cap = general["capacity_bits"] / general["bits_per_fact"]
        right.axvline(cap, color="k", ls=":", label="fact capacity")
    right.axhline(1.0, color="grey", lw=0.8)
    right.set_xscale("log", base=2)
    right.set_xlabel("facts in the mix (N)")
    right.set_ylabel("general ability kept (vs general-only)")
    right.set_title(f"shared capacity, {general['params']:,} params, {general['steps']} steps")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    return save(fig, path)


def recall_panels(panels: dict[str, list[dict]], path: str | Path) -> Path:
    """recall_vs_facts side by side, one panel per title (e.g. matched total / active params)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels.items(), strict=True):
        recall_lines(ax, rows, title)
    return save(fig, path)


def recall_lines(ax, rows: list[dict], title: str) -> None:
    """One line per row label (default: the mode), plus in-tool's unseen-entity recall."""
    for label in sorted({r.get("label", r["mode"]) for r in rows}):
        pts = sorted(
            (r["n_facts"], r["recall"], r.get("recall_unseen"))
            for r in rows
            if r.get("label", r["mode"]) == label
        )
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{label}: all facts")
        if any(p[2] is not None for p in pts):
            unseen = [p for p in pts if p[2] is not None]
            ax.plot(
                [p[0] for p in unseen],
                [p[2] for p in unseen],
                marker="s",
                linestyle="--",
                label=f"{label}: unseen entities",
            )
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("facts")
    ax.set_ylabel("exact-match recall (greedy decoding)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def bits_vs_facts(models: list[dict], path: str | Path, title: str = "") -> Path:
    """Bits memorized against fact count, one line per model (mean over seeds), beside the
    data's entropy: a line bending away from it is the model reaching its capacity."""
    fig, ax = plt.subplots(figsize=(6, 4))
    entropy = sorted({(p["n_facts"], p["entropy_bits"]) for m in models for p in m["curve"]})
    ax.plot(*zip(*entropy, strict=True), "k:", label="entropy of the data")
    for m in models:
        pts = m["curve"]
        ax.plot(
            [p["n_facts"] for p in pts],
            [p["bits"] for p in pts],
            marker="o",
            label=f"{m['name']} ({m['params']['total']:,} params)",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("facts (random-tokens: sequences)")
    ax.set_ylabel("bits memorized")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def bits_vs_steps(models: list[dict], path: str | Path, title: str = "") -> Path:
    """Bits/param of each model's best cell against log steps, one line per seed: a line
    still rising at its end stopped short of saturation."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, m in enumerate(models):
        for j, c in enumerate(m["steps_curves"]):
            label = f"{m['name']} ({m['gain_per_efold']:+.2f}/e-fold)" if j == 0 else None
            ax.plot(c["steps"], c["bits_per_param"], color=f"C{i}", alpha=0.8, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("bits/param (best fact count)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def capacity_vs_params(groups: list[dict], path: str | Path) -> Path:
    """Capacity against parameters per world kind and dtype (every seed, and the fitted
    line), with the published 2 (facts) and 3.6 (random tokens) bits/param lines; hollow
    points are lower bounds (data-capped: the model held nearly all it was given)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    xs = [m["params"]["total"] for g in groups for m in g["models"]]
    span = [min(xs) / 1.5, max(xs) * 1.5]
    for alpha, style in ((2.0, "--"), (3.6, "-.")):
        ax.plot(span, [alpha * x for x in span], "k" + style, lw=0.8, label=f"{alpha} bits/param")
    for g in groups:
        fit = g["fit"]
        if fit is None:  # every model data-capped: points only
            line = ax.plot([], [], lw=1, label=f"{g['world']} {g['dtype']}: data-capped")[0]
        else:
            label = (
                f"{g['world']} {g['dtype']}: {fit['bits_per_param']:.2f} "
                f"[{fit['interval'][0]:.2f}, {fit['interval'][1]:.2f}]"
            )
            alpha = fit["bits_per_param"]
            line = ax.plot(span, [alpha * x for x in span], lw=1, label=label)[0]
        for m in g["models"]:
            caps = m["capacity_bits_by_seed"]
            color = line.get_color()
            ax.scatter(
                [m["params"]["total"]] * len(caps),
                caps,
                s=14,
                edgecolors=color,
                facecolors=color if m["saturated"] else "none",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (total)")
    ax.set_ylabel("capacity (bits)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def params_for_recall(
    rows: list[dict], path: str | Path, published: dict[int, int] | None = None
) -> Path:
    """Smallest model reaching the recall target against fact count, per mode; a fact
    count no model of the sweep passed is marked at the top, above the largest tried;
    `published` in-weight points (facts: params) in grey."""
    fig, ax = plt.subplots(figsize=(6, 4))
    if published:
        n, params = zip(*sorted(published.items()), strict=True)
        ax.plot(n, params, "s--", color="0.6", label="in-weight, published")
    top = max(r["largest_params_tried"] for r in rows) * 2
    for mode in sorted({r["mode"] for r in rows}):
        pts = [r for r in rows if r["mode"] == mode]
        passed = [r for r in pts if r["params"] is not None]
        line = ax.plot(
            [r["n_facts"] for r in passed], [r["params"] for r in passed], marker="o", label=mode
        )[0]
        failed = [r["n_facts"] for r in pts if r["params"] is None]
        if failed:
            ax.scatter(
                failed,
                [top] * len(failed),
                marker="^",
                color=line.get_color(),
                label=f"{mode}: none of the sweep's models passed",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("facts")
    ax.set_ylabel("params of the smallest model with >= 95% recall")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def degradation(rows: list[dict], base: dict, path: str | Path) -> Path:
    """Recall, general accuracy, KL(base || new) and, with a text, its held-out bits per byte
    against fact count, one line per mode; the base model's scores dashed."""
    panels = [
        ("recall", "fact recall (greedy decoding)"),
        ("general_accuracy", "general-suite accuracy (held out)"),
        ("kl", "KL(base || new), nats/token"),
    ]
    if "text_bits_per_byte" in base:
        panels.append(("text_bits_per_byte", "held-out text, bits/byte"))
    fig, axes = plt.subplots(1, len(panels), figsize=(14 * len(panels) / 3, 4))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for mode in sorted({r["mode"] for r in rows}):
            pts = sorted((r["n_facts"], r[key]) for r in rows if r["mode"] == mode)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mode)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("facts injected")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax, (key, _) in zip(axes[1:], panels[1:], strict=True):
        if key in base:
            ax.axhline(base[key], color="gray", linestyle="--", label="base model")
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].set_ylim(-0.02, 1.02)
    axes[2].set_yscale("symlog", linthresh=1e-3)
    axes[2].set_ylim(bottom=0)
    axes[1].legend()
    fig.tight_layout()
    return save(fig, path)


def held_out_loss_vs_data(models: list[dict], path: str | Path) -> Path:
    """Held-out loss against the data's entropy over the model's capacity, one line per
    random-token model with several dataset sizes: where it turns is the double-descent
    point."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in models:
        pts = m["curve"]
        ax.plot(
            [p["entropy_bits"] / m["capacity_bits"] for p in pts],
            [p["held_out_loss"] for p in pts],
            marker="o",
            label=f"{m['name']} ({m['params']['total']:,} params)",
        )
    ax.axvline(1.0, color="k", ls=":", lw=0.8, label="data bits = capacity")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("dataset entropy / model capacity")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def joint_tradeoff(
    rows: list[dict], capacity_bits: float | None, bits_per_fact: float, path: str | Path
) -> Path:
    """Shared-capacity protocol: general ability kept (exact, and graded above chance) and the
    held-out text's change in bits per byte against N for each mode, a dotted line at the
    measured fact capacity; and kept against the fact bits stored in-weight. Bars: seed range."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))

    def bars(ax, x_key: str, y_key: str, mode: str, fmt: str, color: str, label: str) -> None:
        pts = sorted((r for r in rows if r["mode"] == mode and y_key in r), key=lambda r: r[x_key])
        if not pts:
            return
        y = np.array([r[y_key] for r in pts])
        lo, hi = (np.array([r[f"{y_key}_range"][i] for r in pts]) for i in (0, 1))
        x = [r[x_key] for r in pts]
        ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt=fmt, color=color, capsize=3, label=label)

    for mode, color in (("in-weight", "C0"), ("in-tool", "C1")):
        bars(axes[0], "n_facts", "general_accuracy_kept", mode, "-o", color, f"{mode}, exact")
        bars(axes[0], "n_facts", "general_mc_kept", mode, "--s", color, f"{mode}, graded")
        bars(axes[2], "n_facts", "text_bits_per_byte_change", mode, "-o", color, mode)
    bars(axes[1], "bits_memorized", "general_accuracy_kept", "in-weight", "-o", "C0", "exact")
    bars(axes[1], "bits_memorized", "general_mc_kept", "in-weight", "--s", "C0", "graded")
    if capacity_bits:
        for ax in (axes[0], axes[2]):
            ax.axvline(capacity_bits / bits_per_fact, color="k", ls=":", label="fact capacity")
        axes[1].axvline(capacity_bits, color="k", ls=":", label="fact capacity")
    labels = (
        ("facts in the mix (N)", "general ability kept (vs general-only)"),
        ("fact bits held in-weight", "general ability kept (in-weight)"),
        ("facts in the mix (N)", "held-out text: change in bits/byte"),
    )
    for ax, (xlabel, ylabel) in zip(axes, labels, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:  # a tiny sweep may leave a panel empty
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def joint_frontier(
    points: list[dict], capacity_bits: float, n_facts: int, path: str | Path
) -> Path:
    """The shared-capacity trade-off frontier at n_facts: graded general ability kept (left) and
    the held-out text's change in bits per byte (right), one line per series, one point per
    general fraction, bars the seed ranges. In-weight alone is drawn against the fact bits held
    (labels: the fraction; a dotted line at the capacity); with in-tool, whose weights hold no
    fact bits, every series is drawn against the general fraction (labels: recall)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    series: dict[str, list[dict]] = {}
    for p in points:  # frontiers written before the in-tool series are in-weight only
        series.setdefault(p.get("series", "in-weight"), []).append(p)
    by_bits = set(series) == {"in-weight"}
    for ax, key, label in (
        (axes[0], "general_mc_kept", "graded general ability kept (above chance)"),
        (axes[1], "text_bits_per_byte_change", "held-out text: change in bits/byte"),
    ):
        for name, group in series.items():
            if by_bits:
                x = np.array([p["bits_memorized"] for p in group])
                xlo, xhi = (np.array([p["bits_memorized_range"][i] for p in group]) for i in (0, 1))
            else:
                x = xlo = xhi = np.array([p["general_fraction"] for p in group])
            y = np.array([p[key] for p in group])
            ylo, yhi = (np.array([p[f"{key}_range"][i] for p in group]) for i in (0, 1))
            ax.errorbar(x, y, xerr=[x - xlo, xhi - x], yerr=[y - ylo, yhi - y], fmt="-o",
                        capsize=3, label=name)  # fmt: skip
            for p, xi, yi in zip(group, x, y, strict=True):
                recall = "" if p.get("recall") is None else f"{p['recall']:.2f}"
                tag = f"{p['general_fraction']:g}" if by_bits else recall
                ax.annotate(tag, (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if by_bits:
            ax.axvline(capacity_bits, color="k", ls=":", label="fact capacity (facts-only)")
            ax.set_xlabel(f"fact bits held in-weight ({n_facts:,} facts; label: general fraction)")
        else:
            ax.set_xlabel(f"general share of the training rows ({n_facts:,} facts; label: recall)")
        if key.startswith("text"):  # facts-only's change dwarfs the mixed cells'
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


# Allen-Zhu & Li 2024 (Part 3.3): knowledge bits/param of quantized GPT-2-architecture models
PUBLISHED_QUANTIZED = {16: 2.0, 8: 2.0, 4: 0.7}


def quantization(records: list[dict], path: str | Path) -> Path:
    """Bits/param (left) and recall (right) against weight bits, one line per quantization
    record (recall_bench/quantize.py), with Allen-Zhu & Li's published points."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for r in records:
        label = f"{r['mode']}, {r['n_facts']:,} facts"
        rows = sorted(r["widths"], key=lambda w: -w["weight_bits"])
        x = [w["weight_bits"] for w in rows]
        tool = r["mode"] == "in-tool"  # its bits are delivered with the store's help, not held
        key, kind = ("bits_delivered_per_param", ", delivered") if tool else ("bits_per_param", "")
        left.plot(x, [w[key] for w in rows], marker="o", label=label + kind)
        right.plot(x, [w["recall"] for w in rows], marker="o", label=label)
        if r["mode"] == "in-tool":
            unseen = [w["recall_unseen"] for w in rows]
            right.plot(x, unseen, marker="s", linestyle="--", label=f"{label}: unseen")
    pub = sorted(PUBLISHED_QUANTIZED.items())
    left.plot(*zip(*pub, strict=True), "k*", markersize=11, label="Allen-Zhu & Li 2024")
    left.set_ylabel("bits memorized / parameter")
    right.set_ylabel("exact-match recall (greedy decoding)")
    right.set_ylim(-0.02, 1.02)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks([2, 3, 4, 8, 16, 32], ["int2", "int3", "int4", "int8", "bf16", "fp32"])
        ax.set_xlabel("weight bits (post-training, per-channel round-to-nearest)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(fig, path)


def probe(record: dict, path: str | Path) -> Path:
    """A probe record (recall_bench/probe.py): recall after each zero and mean ablation as
    a heat map (left), and recall against the share of block weights removed (right)."""
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 5), width_ratios=(1.4, 1.6), layout="constrained"
    )
    rows = record["ablation"]
    names = list(
        dict.fromkeys(
            f"L{r['layer']} {r['component']}" + ("" if r["head"] is None else f" {r['head']}")
            for r in rows
        )
    )
    grid = [[r["recall"] for r in rows if r["method"] == m] for m in ("zero", "mean")]
    image = left.imshow(list(zip(*grid, strict=True)), vmin=0, vmax=1, cmap="viridis")
    for i, row in enumerate(zip(*grid, strict=True)):
        for j, value in enumerate(row):
            color = "white" if value < 0.5 else "black"
            left.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    left.set_xticks([0, 1], ["zero", "mean"], fontsize=8)
    left.set_yticks(range(len(names)), names, fontsize=8)
    left.set_title(f"recall after ablation (none: {record['sample']['recall']:.2f})", fontsize=9)
    fig.colorbar(image, ax=left, fraction=0.05)
    for method in dict.fromkeys(r["method"] for r in record["removal"]):
        pts = [(r["percent"], r["recall"]) for r in record["removal"] if r["method"] == method]
        right.plot(*zip(*pts, strict=True), marker="o", label=method)
    right.set_xscale("symlog", linthresh=1)
    ticks = [r["percent"] for r in record["removal"] if r["method"] == "random"]
    right.set_xticks(ticks, [f"{t:g}" for t in ticks])
    right.set_xlabel("block weights removed (%)")
    right.set_ylabel("exact-match recall (greedy decoding)")
    right.set_ylim(-0.02, 1.02)
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(f"{record['mode']}, {record['n_facts']:,} facts", fontsize=10)
    return save(fig, path)
