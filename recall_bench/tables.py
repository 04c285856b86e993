"""The one table formatter: rows (dicts) and the columns to show of them, as plain text
(padded columns under a dashed rule; never colour codes, so it reads the same in a pipe or
a log) or a GitHub markdown table. The tables of every command and benchmark use it (the
golden check's lines in regression.py, pinned by its tests, are lines, not a table).
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

MISSING = "-"  # a None (absent) value


@dataclasses.dataclass(frozen=True)
class Column:
    """One column: its header, the row's field (or a function of the row) it shows, the
    format spec of numbers (".3f", ",.0f", ","), and its alignment (None: right when every
    value is a number)."""

    header: str
    key: str | Callable[[Mapping[str, Any]], Any]
    fmt: str = ""
    right: bool | None = None

    def value(self, row: Mapping[str, Any]) -> Any:
        return self.key(row) if callable(self.key) else row.get(self.key)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cell(value: Any, fmt: str = "", limit: int | None = None) -> str:
    """One cell's text: None as "-", booleans as yes/no, numbers by `fmt` (nan and inf as
    Python writes them), unprintable characters as "?", cut to `limit` characters with "~"."""
    if value is None:
        text = MISSING
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif is_number(value):
        text = format(value, fmt)
    else:
        text = str(value)
    text = "".join(c if c.isprintable() else "?" for c in text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "~"
    return text


def width(text: str) -> int:
    """Columns `text` takes on a terminal: wide (East Asian) characters 2, combining 0."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column | tuple],
    markdown: bool = False,
    limit: int | None = None,
    header: bool = True,
) -> str:
    """`rows` as a table of `columns` (Columns, or tuples of Column's fields), with no
    trailing newline: plain text, or with markdown a GitHub table (pipes escaped); every
    cell cut to `limit` characters if given; without `header`, plain text rows only (a
    list of fields and values)."""
    columns = [c if isinstance(c, Column) else Column(*c) for c in columns]
    values = [[c.value(r) for c in columns] for r in rows]
    right = [
        c.right if c.right is not None else all(is_number(v[i]) or v[i] is None for v in values)
        for i, c in enumerate(columns)
    ]
    head = [cell(c.header, limit=limit) for c in columns]
    body = [[cell(v, c.fmt, limit) for v, c in zip(vs, columns, strict=True)] for vs in values]
    if markdown:
        return _markdown(head, body, right)
    return _plain(head if header else None, body, right)


def _markdown(header: list[str], rows: list[list[str]], right: list[bool]) -> str:
    def line(cells: list[str]) -> str:
        escaped = [c.replace("\\", "\\\\").replace("|", "\\|") for c in cells]
        return "| " + " | ".join(escaped) + " |"

    rule = "| " + " | ".join("---:" if r else ":---" for r in right) + " |"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _plain(header: list[str] | None, rows: list[list[str]], right: list[bool]) -> str:
    """Padded columns two spaces apart: the header (if any) and a dashed rule, then rows."""
    top = [] if header is None else [header]
    widths = [max([0, *(width(r[i]) for r in [*top, *rows])]) for i in range(len(right))]

    def pad(text: str, w: int, r: bool) -> str:
        fill = " " * (w - width(text))
        return fill + text if r else text + fill

    def line(cells: list[str]) -> str:
        return "  ".join(pad(c, w, r) for c, w, r in zip(cells, widths, right, strict=True))

    rule = ["  ".join("-" * w for w in widths)]
    lines = [*(line(r) for r in top), *(rule if top else []), *(line(r) for r in rows)]
    return "\n".join(text.rstrip() for text in lines)
