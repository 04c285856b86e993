"""Leaderboard tables: entries ranked by a metric in its better direction, rendered by one
formatter as plain text or GitHub markdown."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from recall_bench import records
from recall_bench.leaderboard.jsonio import LeaderboardError
from recall_bench.leaderboard.schema import validate
from recall_bench.tables import Column, cell, format_table

LIMIT = 40  # characters shown of any one cell

# (header, right-aligned) of the columns before and after a track's metric columns
_FIRST = (("rank", True), ("mode", False), ("n_facts", True), ("params", True), ("dtype", False))
_LAST = (("steps", True), ("converged", False), ("device", False))


@dataclasses.dataclass(frozen=True)
class Track:
    """How one track's table reads: its title, default ranking metric and metric columns."""

    title: str
    sort_by: str
    columns: tuple[tuple[str, str], ...]  # (header, metric)


# Tracks (records.TRACKS maps modes to them) are ranked apart: bits held in weights, bits
# delivered with a store's help and bits held in a memory layer are different quantities.
TRACKS = {
    "in-weight-capacity": Track(
        "in-weight capacity: bits held in the weights",
        "bits_per_param",
        (("recall", "recall"), ("bits/param", "bits_per_param")),
    ),
    "in-tool-recall": Track(
        "in-tool recall: facts read from a store",
        "recall",
        (
            ("recall", "recall"),
            ("recall_unseen", "recall_unseen"),
            ("delivered/param", "bits_delivered_per_param"),
        ),
    ),
    "side-memory": Track(
        "side memory: bits held in a memory layer",
        "bits_per_param",
        (
            ("recall", "recall"),
            ("bits/param", "bits_per_param"),
            ("bits/active param", "bits_per_active_param"),
        ),
    ),
    "retrieval-context": Track(
        "retrieval into the context: facts written into the prompt",
        "recall",
        (
            ("recall", "recall"),
            ("recall_unseen", "recall_unseen"),
            ("delivered/param", "bits_delivered_per_param"),
        ),
    ),
    "other": Track("other modes", "recall", (("recall", "recall"),)),
}


def _cell(text: Any) -> str:
    return cell(str(text), limit=LIMIT)


def _compact(n: int) -> str:
    for scale, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(n)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.4g}"


def _row(entry: dict[str, Any], rank: str, metrics: list[str]) -> list[str]:
    """One entry's cells, as text, in the order of its section's header."""
    model, env, train = entry["model"], entry["env"], entry["train"]
    row = [
        rank,
        entry["mode"],
        str(entry["n_facts"]),
        _compact(model["params"]["total"]),
        model["dtype"],
        *(_num(entry["metrics"].get(m)) for m in metrics),
        str(train["steps"]),
        "yes" if train["converged"] else "no",
        f"{env['device_kind']} x{env['device_count']}",
    ]
    return [_cell(c) for c in row]


def _direction(entries: list[dict[str, Any]], metric: str) -> str:
    for entry in entries:
        if metric in entry["better"]:
            return entry["better"][metric]
    return records.BETTER.get(metric, "higher")


def _ranked(entries: list[dict[str, Any]], metric: str) -> list[tuple[str, dict[str, Any]]]:
    """(rank, entry) best first by `metric` in its `better` direction; ties share a rank."""
    sign = -1.0 if _direction(entries, metric) == "higher" else 1.0
    has = [e for e in entries if metric in e["metrics"]]
    rest = [e for e in entries if metric not in e["metrics"]]
    has.sort(key=lambda e: (sign * e["metrics"][metric], e["model"]["params"]["total"]))
    out: list[tuple[str, dict[str, Any]]] = []
    for i, entry in enumerate(has):
        tied = i > 0 and has[i - 1]["metrics"][metric] == entry["metrics"][metric]
        rank = out[-1][0] if tied else str(i + 1)
        out.append((rank, entry))
    out.extend(("-", e) for e in rest)
    return out


def _section(track: Track, entries: list[dict[str, Any]], sort_by: str, markdown: bool) -> str:
    """One track's heading and ranked table (the sort metric gets a column if it has none)."""
    headers = [h for h, _ in track.columns]
    metrics = [m for _, m in track.columns]
    if sort_by not in metrics:
        headers, metrics = [*headers, _cell(sort_by)], [*metrics, sort_by]
    header = [h for h, _ in _FIRST] + headers + [h for h, _ in _LAST]
    right = [r for _, r in _FIRST] + [True] * len(metrics) + [r for _, r in _LAST]
    ranked = _ranked(entries, sort_by)
    title = f"{track.title} ({len(entries)} entries, ranked by {sort_by})"
    heading = f"### {title}\n\n" if markdown else f"{title}\n"
    rows = [dict(zip(header, _row(e, r, metrics), strict=True)) for r, e in ranked]
    columns = [Column(h, h, right=r) for h, r in zip(header, right, strict=True)]
    return heading + format_table(rows, columns, markdown, LIMIT) + "\n"


def _only(entries: list[dict[str, Any]], field: str, value: str | None) -> list[dict[str, Any]]:
    """The entries whose `field` is `value` (all when value is None); none is an error."""
    if value is None:
        return entries
    kept = [e for e in entries if e[field] == value]
    if not kept:
        known = ", ".join(sorted({e[field] for e in entries}))
        raise LeaderboardError(
            f"--{field} {_cell(value)}: no entry has this {field}; choose one of {known}"
        )
    return kept


def show(
    path: str | os.PathLike[str],
    markdown: bool = False,
    sort_by: str | None = None,
    mode: str | None = None,
    track: str | None = None,
) -> str:
    """Ranked tables of a leaderboard, one per track (best first by sort_by, default each
    track's own metric; a track none of whose entries has sort_by is left out), plain text or
    GitHub markdown; with mode or track, only those entries."""
    entries = _only(_only(validate(path)["entries"], "mode", mode), "track", track)
    if sort_by is not None and entries and not any(sort_by in e["metrics"] for e in entries):
        names = sorted({k for e in entries for k in e["metrics"]})
        raise LeaderboardError(
            f"--sort {_cell(sort_by)}: no entry has this metric; choose one of {', '.join(names)}"
        )
    sections = []
    for name, view in TRACKS.items():
        members = [e for e in entries if e["track"] == name]
        metric = sort_by or view.sort_by
        if any(metric in e["metrics"] for e in members):
            sections.append(_section(view, members, metric, markdown))
    return "\n".join(sections) if sections else "no entries\n"
