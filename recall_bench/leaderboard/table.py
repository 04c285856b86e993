"""Leaderboard tables: entries ranked by a metric in its better direction, rendered by one
formatter as plain text or GitHub markdown."""

from __future__ import annotations

import os
from typing import Any

from recall_bench import records
from recall_bench.leaderboard.jsonio import LeaderboardError
from recall_bench.leaderboard.schema import validate

# (header, right-aligned) of the columns every leaderboard table has
_COLUMNS = (
    ("rank", True),
    ("mode", False),
    ("n_facts", True),
    ("params", True),
    ("dtype", False),
    ("recall", True),
    ("recall_unseen", True),
    ("bits/param", True),
    ("steps", True),
    ("converged", False),
    ("device", False),
)


def format_table(
    header: list[str], rows: list[list[str]], right: list[bool], markdown: bool = False
) -> str:
    """Columns padded to width (right-aligned where `right`), or a GitHub markdown table."""
    return (_markdown if markdown else _plain)(header, rows, right)


def _markdown(header: list[str], rows: list[list[str]], right: list[bool]) -> str:
    def line(cells: list[str]) -> str:
        escaped = [c.replace("\\", "\\\\").replace("|", "\\|") for c in cells]
        return "| " + " | ".join(escaped) + " |"

    sep = "| " + " | ".join("---:" if r else ":---" for r in right) + " |"
    return "\n".join([line(header), sep, *(line(r) for r in rows)]) + "\n"


def _plain(header: list[str], rows: list[list[str]], right: list[bool]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)]) + "\n"


def _cell(text: Any, limit: int = 40) -> str:
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text if len(text) <= limit else text[: limit - 1] + "~"


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


def _bits_per_param(entry: dict[str, Any]) -> float | None:
    metrics = entry["metrics"]
    if "bits_per_param" in metrics:
        return metrics["bits_per_param"]
    total = entry["model"]["params"]["total"]
    if "bits_memorized" in metrics and total > 0:
        return metrics["bits_memorized"] / total
    return None


def _row(entry: dict[str, Any], rank: str, sort_by: str, extra: bool) -> list[str]:
    metrics, env = entry["metrics"], entry["env"]
    bpp = _bits_per_param(entry)
    row = [
        rank,
        entry["mode"],
        str(entry["n_facts"]),
        _compact(entry["model"]["params"]["total"]),
        entry["model"]["dtype"],
        _num(metrics.get("recall")),
        _num(metrics.get("recall_unseen")),
        "-" if bpp is None else _num(bpp, 3),
        str(entry["train"]["steps"]),
        "yes" if entry["train"]["converged"] else "no",
        f"{env['device_kind']} x{env['device_count']}",
    ]
    if extra:
        row.append(_num(metrics.get(sort_by)))
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


def show(
    path: str | os.PathLike[str],
    markdown: bool = False,
    sort_by: str = "recall",
    mode: str | None = None,
) -> str:
    """A ranked table of a leaderboard (best first by sort_by), plain text or GitHub markdown;
    with mode, only that mode's entries."""
    doc = validate(path)
    entries = doc["entries"]
    if mode is not None:
        modes = sorted({e["mode"] for e in entries})
        entries = [e for e in entries if e["mode"] == mode]
        if not entries:
            raise LeaderboardError(
                f"--mode {_cell(mode)}: no entry has this mode; choose one of {', '.join(modes)}"
            )
    if entries and not any(sort_by in e["metrics"] for e in entries):
        names = sorted({k for e in entries for k in e["metrics"]})
        raise LeaderboardError(
            f"--sort {_cell(sort_by)}: no entry has this metric; choose one of {', '.join(names)}"
        )
    extra = sort_by not in ("recall", "recall_unseen", "bits_per_param")
    header = [name for name, _ in _COLUMNS] + ([_cell(sort_by)] if extra else [])
    right = [r for _, r in _COLUMNS] + ([True] if extra else [])
    rows = [_row(e, rank, sort_by, extra) for rank, e in _ranked(entries, sort_by)]
    return format_table(header, rows, right, markdown)
