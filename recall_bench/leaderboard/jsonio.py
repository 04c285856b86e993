"""Reading untrusted JSON: size, type and UTF-8 checks before parsing, a parser that rejects
NaN, overflowing numbers and duplicate keys, and a walk that bounds nesting and magnitudes.

Every failure is a LeaderboardError (a ValueError) with a one-line message; a FieldError
names a field, and its caller appends what to do.
"""

from __future__ import annotations

import json
import math
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MAX_BYTES = 50 * 1024 * 1024  # files larger than this are rejected before reading
MAX_DEPTH = 16  # nesting depth of containers, counted from the top-level object
MAX_ABS_NUMBER = 2**63  # any number at or beyond this magnitude is rejected


class LeaderboardError(ValueError):
    """A leaderboard or record that cannot be used; the message names the field and the fix."""


class FieldError(LeaderboardError):
    """A bad field; the caller appends what to do (fix the file, or the record)."""


def with_hint(error: LeaderboardError, hint: str) -> str:
    """The message, with what to do appended to a field error (others say it already)."""
    return f"{error}; {hint}" if isinstance(error, FieldError) else str(error)


# ---------------------------------------------------------------- messages


def short(value: Any, limit: int = 60) -> str:
    """`value` as compact JSON, cut to `limit` characters, for an error message."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        text = "<value>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (integer and number kept apart)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def field_path(parts: Iterable[Any], prefix: str = "") -> str:
    """A field's path as `entries[0].metrics.recall`; odd keys quoted in brackets."""
    out = prefix
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part.isascii():
            out += f".{part}" if out else part
        else:
            out += f"[{short(str(part), 40)}]"
    return out or "(top level)"


# ---------------------------------------------------------------- parsing


def _reject_constant(name: str) -> Any:
    raise LeaderboardError(
        f"{name} is not valid JSON (recall_bench writes non-finite numbers as null); "
        "re-export the file"
    )


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise LeaderboardError(f"number {text[:40]} overflows to infinity; re-export the file")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise LeaderboardError(
                f"duplicate key {short(key)} in one JSON object; keep one and re-validate"
            )
        out[key] = value
    return out


def parse_json(text: str, strict: bool = True) -> Any:
    """json.loads that rejects NaN/Infinity, overflowing numbers and duplicate keys.

    With strict=False (run records), NaN/Infinity become null, as records.clean_json does.
    """
    constant = _reject_constant if strict else (lambda name: None)
    try:
        return json.loads(
            text,
            parse_constant=constant,
            parse_float=_finite_float,
            object_pairs_hook=_no_duplicate_keys,
        )
    except LeaderboardError:
        raise
    except json.JSONDecodeError as e:
        raise LeaderboardError(
            f"not valid JSON ({e}); the file is truncated or corrupted: re-export it"
        ) from None
    except RecursionError:
        raise LeaderboardError(
            f"JSON nested too deeply (limit {MAX_DEPTH} levels); the file is corrupted"
        ) from None
    except (ValueError, OverflowError) as e:  # e.g. integers with more than 4300 digits
        raise LeaderboardError(
            f"unreadable JSON number ({short(str(e), 80)}); the file is corrupted"
        ) from None


def read_text(path: Path) -> str:
    """The file's text, checking size (before reading), type and UTF-8."""
    limit = MAX_BYTES
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise LeaderboardError("is a directory; give the JSON file inside it")
        if not stat.S_ISREG(st.st_mode):
            raise LeaderboardError("is not a regular file; give a JSON file")
        if st.st_size > limit:
            raise LeaderboardError(
                f"file is {st.st_size} bytes, over the {limit}-byte limit; split it into "
                "smaller leaderboards"
            )
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except LeaderboardError:
        raise
    except FileNotFoundError:
        raise LeaderboardError("no such file; check the path") from None
    except OSError as e:
        raise LeaderboardError(f"cannot read ({e.strerror or e}); check its permissions") from None
    except ValueError as e:  # e.g. a NUL byte in the path
        raise LeaderboardError(f"not a usable path ({e}); check the path") from None
    if len(data) > limit:
        raise LeaderboardError(f"file grew over the {limit}-byte limit while being read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LeaderboardError(
            f"not UTF-8 (bad byte at offset {e.start}); the file is corrupted: re-export it"
        ) from None


def check_limits(obj: Any, prefix: str, max_depth: int) -> None:
    """Reject containers nested deeper than max_depth, huge numbers and unencodable text."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(obj, ())]
    while stack:
        value, parts = stack.pop()
        if isinstance(value, (dict, list)):
            if len(parts) >= max_depth:
                raise FieldError(
                    f"{field_path(parts, prefix)}: nested too deeply (limit {MAX_DEPTH} levels)"
                )
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    _check_text(key, parts, prefix)
                stack.append((item, (*parts, key)))
        elif isinstance(value, str):
            _check_text(value, parts, prefix)
        elif (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and not abs(value) < MAX_ABS_NUMBER
        ):
            raise FieldError(
                f"{field_path(parts, prefix)}: {short(value)} is too large (limit 2**63)"
            )


def _check_text(text: str, parts: tuple[Any, ...], prefix: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FieldError(
            f"{field_path(parts, prefix)}: string holds an unpaired surrogate (not valid Unicode)"
        ) from None
