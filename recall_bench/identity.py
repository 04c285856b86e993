"""What a checkpoint or an output folder holds, and the refusal to mix two of them.

A run's identity is its resolved config (a JSON-able dict) and that dict's hash. A folder
that already holds a record, or a checkpoint, of another identity is never resumed into or
overwritten: the error names the fields that differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recall_bench.records import clean_json, read_record, without_added_defaults

SHOWN = 6  # differing fields named in one message


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """'field: old -> new' for every leaf where two nested configs differ."""
    old, new = clean_json(old), clean_json(new)
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{path}.{key}" if path else str(key)
            out += differences(old.get(key, "(absent)"), new.get(key, "(absent)"), name)
        return out
    return [] if old == new else [f"{path or 'value'}: {old!r} -> {new!r}"]


def refuse_other(where: str | Path, what: str, old: dict, new: dict) -> None:
    """A ValueError naming the differing fields, if `old` (held in `where`) is not `new`; a
    field added since `old` was saved counts as its old value (records.ADDED_FIELDS)."""
    diff = differences(
        without_added_defaults(clean_json(old)), without_added_defaults(clean_json(new))
    )
    if not diff:
        return
    more = f" and {len(diff) - SHOWN} more" if len(diff) > SHOWN else ""
    raise ValueError(
        f"{where} holds {what} of another configuration ({'; '.join(diff[:SHOWN])}{more}): "
        "choose another --out, or remove it to start over"
    )


def resolved(config: dict, cls: type) -> dict:
    """A recorded config read back through its dataclass, so fields it predates take their
    defaults (as is, if it no longer fits the class)."""
    try:
        return dataclasses.asdict(cls(**config))
    except (TypeError, ValueError):
        return config


def finished_record(
    path: str | Path, cfg: Any, resume: bool, identity: tuple[Callable, dict] | None = None
) -> dict | None:
    """The record at `path` if it was made by the config dataclass `cfg` (or by `identity`:
    what a record says it was made under, and what this run is) and resume is set; None if
    there is none. A record of another config, or of this one without --resume, is refused: a
    finished run is never retrained over."""
    path = Path(path)
    if not path.exists():
        return None
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"{path.parent} is a file, not a folder: choose another --out")
    record = read_record(path)
    if identity is None:
        identity = (lambda r: resolved(r.get("config", {}), type(cfg)), dataclasses.asdict(cfg))
    refuse_other(path, "a finished record", identity[0](record), identity[1])
    if not resume:
        raise ValueError(
            f"{path} already holds this run's finished record: pass --resume to return it "
            "without training, or choose another --out"
        )
    return record
