"""Leaderboards: validated, versioned collections of run records, with their provenance.

A leaderboard file (schema_version 1, JSON Schema in leaderboard_schema.json):

  {"format": "recall_bench.leaderboard", "schema_version": 1, "benchmark_version": str,
   "created": ISO time, "entries": [entry, ...]}

Each entry is built from one run record (records.py) by `entry_from_record`:

  id (sha256 of the canonical JSON of mode, world hash, model architecture, run config minus
  output paths and logging knobs, and seed: the same config run twice has the same id),
  run_id, created, benchmark_version, mode, n_facts, seed, world {kind, spec, hash,
  entropy_bits?}, model {architecture fields..., params {total, non_embedding}}, config (the
  full resolved run config), train {steps, exposures_per_fact, wall_s, compile_s?, converged,
  stop_reason}, metrics {name: finite number} (null metrics of the record are dropped),
  better {metric: "higher" | "lower"}, env {python, jax, jaxlib, flax, optax, orbax, numpy,
  platform, backend?, device_kind, device_count, cpu_count?, git_commit, git_dirty}.

`validate` treats its input as untrusted: anything malformed raises LeaderboardError (a
ValueError) whose message names the offending field, never another exception.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import importlib.resources
import json
import math
import os
import re
import stat
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from recall_bench import records

FORMAT = "recall_bench.leaderboard"
SCHEMA_VERSION = 1
MAX_BYTES = 50 * 1024 * 1024  # files larger than this are rejected before reading
MAX_DEPTH = 16  # nesting depth of containers, counted from the top-level object
MAX_ABS_NUMBER = 2**63  # any number at or beyond this magnitude is rejected

# Config keys that say where output goes or how chatty a run is, not what was run; they are
# left out of the entry id (at any depth of the config).
VOLATILE_CONFIG_KEYS = frozenset(
    {
        "out",
        "out_dir",
        "output",
        "output_dir",
        "run_dir",
        "log_dir",
        "checkpoint_dir",
        "ckpt_dir",
        "resume",
        "verbose",
        "quiet",
        "progress",
        "log_every",
    }
)

_WORLD_KEYS = ("kind", "spec", "hash", "entropy_bits")
_TRAIN_KEYS = ("steps", "exposures_per_fact", "wall_s", "compile_s", "converged", "stop_reason")
_ENV_KEYS = (
    "python",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax",
    "numpy",
    "platform",
    "backend",
    "device_kind",
    "device_count",
    "cpu_count",
    "git_commit",
    "git_dirty",
)
_FILE_HINT = "fix that field or re-export the leaderboard from its run records"
_RECORD_HINT = "fix the run record or rerun it"


class LeaderboardError(ValueError):
    """A leaderboard or record that cannot be used; the message names the field and the fix."""


class _FieldError(LeaderboardError):
    """A bad field; the caller appends what to do (fix the file, or the record)."""


# ---------------------------------------------------------------- schema


def load_schema() -> dict[str, Any]:
    """The leaderboard JSON Schema (draft 2020-12) shipped with the package."""
    text = importlib.resources.files("recall_bench").joinpath("leaderboard_schema.json")
    return json.loads(text.read_text(encoding="utf-8"))


def _is_strict_int(checker: Any, value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """`pattern` with ECMA-262 anchors: Python's `$` would also match before a final newline."""
    if validator.is_type(instance, "string"):
        if pattern.endswith("$") and not pattern.endswith("\\$"):
            pattern = pattern[:-1] + r"\Z"
        if not re.search(pattern, instance):
            yield jsonschema.exceptions.ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def _validators() -> tuple[Any, Any]:
    """(file validator, single-entry validator); integers are strict (3.0 is not one)."""
    base = jsonschema.Draft202012Validator
    strict = jsonschema.validators.extend(
        base,
        validators={"pattern": _ecma_pattern},
        type_checker=base.TYPE_CHECKER.redefine("integer", _is_strict_int),
    )
    schema = load_schema()
    base.check_schema(schema)
    entry_schema = {
        "$schema": schema["$schema"],
        "$ref": "#/$defs/entry",
        "$defs": schema["$defs"],
    }
    return strict(schema), strict(entry_schema)


# ---------------------------------------------------------------- messages


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        text = "<value>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: Any) -> str:
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


def _path(parts: Iterable[Any], prefix: str = "") -> str:
    out = prefix
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part.isascii():
            out += f".{part}" if out else part
        else:
            out += f"[{_short(str(part), 40)}]"
    return out or "(top level)"


def _describe(error: jsonschema.exceptions.ValidationError, prefix: str) -> str:
    """One line for a jsonschema error: field path, what is wrong."""
    parts = list(error.absolute_path)
    keyword, expected, value = error.validator, error.validator_value, error.instance
    if keyword == "required" and isinstance(value, dict):
        missing = [k for k in expected if k not in value]
        name = missing[0] if missing else "?"
        return f"{_path([*parts, name], prefix)}: missing required field"
    if keyword == "additionalProperties" and isinstance(value, dict):
        known = set(error.schema.get("properties", {}))
        extra = sorted(k for k in value if k not in known)
        name = extra[0] if extra else "?"
        return f"{_path([*parts, name], prefix)}: unknown field"
    where = _path(parts, prefix)
    if keyword == "propertyNames":
        return f"{where}: field name {_short(value)} is not allowed (use lower_snake_case)"
    if keyword == "type":
        want = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{where}: expected {want}, got {_json_type(value)} {_short(value)}"
    if keyword == "minimum":
        return f"{where}: {_short(value)} is below {expected}"
    if keyword == "maximum":
        return f"{where}: {_short(value)} is above {expected}"
    if keyword == "exclusiveMinimum":
        return f"{where}: {_short(value)} must be above {expected}"
    if keyword == "exclusiveMaximum":
        return f"{where}: {_short(value)} must be below {expected}"
    if keyword == "const":
        return f"{where}: expected {_short(expected)}, got {_short(value)}"
    if keyword == "enum":
        return f"{where}: {_short(value)} is not one of {_short(expected)}"
    if keyword == "pattern":
        return f"{where}: {_short(value)} does not match {expected}"
    if keyword in ("maxLength", "minLength"):
        size = "long" if keyword == "maxLength" else "short"
        return f"{where}: string is too {size} ({keyword} {expected})"
    return f"{where}: {_short(error.message, 120)}"


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
                f"duplicate key {_short(key)} in one JSON object; keep one and re-validate"
            )
        out[key] = value
    return out


def _parse(text: str, strict: bool = True) -> Any:
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
            f"unreadable JSON number ({_short(str(e), 80)}); the file is corrupted"
        ) from None


def _read_text(path: Path) -> str:
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


def _walk(obj: Any, prefix: str, max_depth: int) -> None:
    """Reject containers nested deeper than max_depth, huge numbers and unencodable text."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(obj, ())]
    while stack:
        value, parts = stack.pop()
        if isinstance(value, (dict, list)):
            if len(parts) >= max_depth:
                raise _FieldError(
                    f"{_path(parts, prefix)}: nested too deeply (limit {MAX_DEPTH} levels)"
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
            raise _FieldError(f"{_path(parts, prefix)}: {_short(value)} is too large (limit 2**63)")


def _check_text(text: str, parts: tuple[Any, ...], prefix: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _FieldError(
            f"{_path(parts, prefix)}: string holds an unpaired surrogate (not valid Unicode)"
        ) from None


# ---------------------------------------------------------------- semantics


def _parse_time(value: str, where: str) -> datetime.datetime:
    try:
        text = value[:-1] + "+00:00" if value.endswith("Z") else value
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise _FieldError(
            f"{where}: {_short(value)} is not an ISO 8601 time with a timezone "
            "(e.g. 2025-01-01T00:00:00+00:00)"
        )
    return when


def _strip_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_volatile(v) for k, v in value.items() if k not in VOLATILE_CONFIG_KEYS}
    if isinstance(value, list):
        return [_strip_volatile(v) for v in value]
    return value


def _canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def entry_id(mode: Any, world_hash: Any, model: Any, config: Any, seed: Any) -> str:
    """sha256 over the canonical JSON of what was run (not of what came out, nor where)."""
    if isinstance(model, dict):
        model = {k: v for k, v in model.items() if k != "params"}
    payload = {
        "mode": mode,
        "world_hash": world_hash,
        "model": model,
        "config": _strip_volatile(config),
        "seed": seed,
    }
    return hashlib.sha256(_canonical(payload)).hexdigest()


def _check_entry(entry: dict[str, Any], prefix: str) -> None:
    """Checks the schema cannot express; `entry` has already passed the schema."""
    _parse_time(entry["created"], _path(["created"], prefix))
    params = entry["model"]["params"]
    if params["non_embedding"] > params["total"]:
        raise _FieldError(
            f"{_path(['model', 'params', 'non_embedding'], prefix)}: {params['non_embedding']} "
            f"is above model.params.total = {params['total']}"
        )
    for name, direction in entry["better"].items():
        known = records.BETTER.get(name)
        if known is not None and direction != known:
            raise _FieldError(
                f"{_path(['better', name], prefix)}: {direction!r}, but {name} is always "
                f"{known!r}-is-better"
            )
    world = entry["world"]
    expected = entry_id(
        entry["mode"], world["hash"], entry["model"], entry["config"], entry["seed"]
    )
    if entry["id"] != expected:
        raise _FieldError(
            f"{_path(['id'], prefix)}: does not match the entry's mode, world hash, model, "
            f"config and seed (expected {expected[:16]}...); the entry was edited after export"
        )


def _with_hint(error: LeaderboardError, hint: str) -> str:
    """The message, with what to do appended to a field error (others say it already)."""
    return f"{error}; {hint}" if isinstance(error, _FieldError) else str(error)


def _schema_check(validator: Any, obj: Any, prefix: str) -> None:
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is not None:
        raise _FieldError(_describe(error, prefix))


def _check_doc(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise _FieldError(f"(top level): expected a JSON object, got {_json_type(doc)}")
    if doc.get("format") != FORMAT:
        raise LeaderboardError(
            f"format: expected {FORMAT!r}, got {_short(doc.get('format'))}; this is not a "
            "recall_bench leaderboard"
        )
    version = doc.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise LeaderboardError(
            f"schema_version: {_short(version)} is not supported; this reader understands "
            f"schema_version {SCHEMA_VERSION} (upgrade recall_bench, or re-export the file)"
        )
    _walk(doc, "", MAX_DEPTH)
    file_validator, _ = _validators()
    _schema_check(file_validator, doc, "")
    _parse_time(doc["created"], "created")
    seen: dict[str, int] = {}
    for i, entry in enumerate(doc["entries"]):
        prefix = f"entries[{i}]"
        _check_entry(entry, prefix)
        if entry["id"] in seen:
            raise LeaderboardError(
                f"{prefix}.id: duplicate of entries[{seen[entry['id']]}].id (same config "
                "twice); keep one, e.g. with `recall-bench leaderboard merge`"
            )
        seen[entry["id"]] = i
    return doc


def validate(obj_or_path: dict[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """Check a leaderboard (a parsed object or a file path); return it, parsed.

    Raises LeaderboardError, and nothing else, for anything malformed.
    """
    if isinstance(obj_or_path, (str, os.PathLike)):
        path = Path(obj_or_path)
        try:
            return _check_doc(_parse(_read_text(path)))
        except LeaderboardError as e:
            raise LeaderboardError(f"{path}: {_with_hint(e, _FILE_HINT)}") from None
    try:
        text = json.dumps(obj_or_path, allow_nan=False, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError) as e:
        raise LeaderboardError(
            f"not a JSON value ({_short(str(e), 80)}); build it from plain dicts, lists, "
            "strings, finite numbers, booleans and None"
        ) from None
    if len(text) > MAX_BYTES:
        raise LeaderboardError(f"over the {MAX_BYTES}-byte limit; split the leaderboard")
    try:
        return _check_doc(_parse(text))
    except LeaderboardError as e:
        raise LeaderboardError(_with_hint(e, _FILE_HINT)) from None


# ---------------------------------------------------------------- export


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _pick(value: Any, keys: Iterable[str]) -> Any:
    """The listed keys of an object (others are dropped); a non-object is passed through."""
    if not isinstance(value, dict):
        return value
    return {k: value[k] for k in keys if k in value}


def _entry_from_record(record: Any) -> dict[str, Any]:
    try:
        record = json.loads(json.dumps(records.clean_json(record), allow_nan=False))
    except (TypeError, ValueError, RecursionError) as e:
        raise LeaderboardError(
            f"record is not JSON ({_short(str(e), 80)}); give the dict read from record.json"
        ) from None
    if not isinstance(record, dict):
        raise _FieldError(f"record: expected a JSON object, got {_json_type(record)}")
    schema = record.get("schema")
    if schema != records.RECORD_SCHEMA:
        raise LeaderboardError(
            f"schema: {_short(schema)} is not {records.RECORD_SCHEMA!r}; not a run record, or "
            "one from an unsupported version"
        )
    _walk(record, "", MAX_DEPTH - 2)
    model = record.get("model")
    if isinstance(model, dict):
        model = {**model, "params": record.get("params")}
        if model["params"] is None:
            del model["params"]
    metrics = record.get("metrics")
    better_in = record.get("better") if isinstance(record.get("better"), dict) else {}
    if isinstance(metrics, dict):
        metrics = {k: v for k, v in metrics.items() if v is not None}
        better = {
            k: better_in.get(k, records.BETTER.get(k))
            for k in metrics
            if k in better_in or k in records.BETTER
        }
    else:
        better = better_in
    world = _pick(record.get("world"), _WORLD_KEYS)
    entry = {
        "id": None,
        "run_id": record.get("run_id"),
        "created": record.get("created"),
        "benchmark_version": record.get("benchmark_version"),
        "mode": record.get("mode"),
        "n_facts": record.get("n_facts"),
        "seed": record.get("seed"),
        "world": world,
        "model": model,
        "config": record.get("config"),
        "train": _pick(record.get("train"), _TRAIN_KEYS),
        "metrics": metrics,
        "better": better,
        "env": _pick(record.get("env"), _ENV_KEYS),
    }
    entry = {k: v for k, v in entry.items() if v is not None or k == "id"}
    world_hash = world.get("hash") if isinstance(world, dict) else None
    entry["id"] = entry_id(
        entry.get("mode"), world_hash, entry.get("model"), entry.get("config"), entry.get("seed")
    )
    _, entry_validator = _validators()
    _schema_check(entry_validator, entry, "")
    _check_entry(entry, "")
    return entry


def entry_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """A leaderboard entry from one run record (null metrics dropped); validated."""
    try:
        return _entry_from_record(record)
    except LeaderboardError as e:
        raise LeaderboardError(_with_hint(e, _RECORD_HINT)) from None


def find_records(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Record files: each path is a record file or a folder searched for record.json."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):  # does not follow symlinked folders
                dirs.sort()
                if "record.json" in files:
                    found.append(Path(root) / "record.json")
        elif path.is_file():
            found.append(path)
        else:
            raise LeaderboardError(f"{path}: no such file or folder; give run folders or records")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def _entry_from_file(path: Path) -> dict[str, Any]:
    try:
        return _entry_from_record(_parse(_read_text(path), strict=False))
    except LeaderboardError as e:
        raise LeaderboardError(f"{path}: {_with_hint(e, _RECORD_HINT)}") from None


def _newer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether entry b was created after entry a (both already validated)."""
    return _parse_time(b["created"], "created") > _parse_time(a["created"], "created")


def _union(entries: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Entries with unique ids (the newer `created` wins, first seen on a tie); dropped count."""
    kept: dict[str, dict[str, Any]] = {}
    dropped = 0
    for entry in entries:
        old = kept.get(entry["id"])
        if old is None:
            kept[entry["id"]] = entry
            continue
        dropped += 1
        if _newer(old, entry):
            kept[entry["id"]] = entry
    return list(kept.values()), dropped


def _document(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "benchmark_version": records.BENCHMARK_VERSION,
        "created": _now(),
        "entries": entries,
    }


def _export(run_dirs: Any, out_path: str | os.PathLike[str]) -> tuple[dict[str, Any], int, int]:
    paths = find_records(run_dirs)
    if not paths:
        raise LeaderboardError(
            f"no record.json found under {', '.join(map(str, run_dirs))}; run an experiment "
            "first or point at its run folder"
        )
    entries, dropped = _union(_entry_from_file(p) for p in paths)
    doc = validate(_document(entries))
    records.write_json_atomic(out_path, doc)
    return doc, len(paths), dropped


def export(
    run_dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
) -> dict[str, Any]:
    """Write a leaderboard of every record under run_dirs (one entry per id, newest kept)."""
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    return _export(list(run_dirs), out_path)[0]


def merge(
    a: str | os.PathLike[str], b: str | os.PathLike[str], out: str | os.PathLike[str]
) -> dict[str, Any]:
    """Union of two leaderboards written to `out`; duplicate ids keep the newer `created`.

    Returns {"out", "entries" (count), "duplicates_dropped", "leaderboard"}.
    """
    first, second = validate(a), validate(b)
    entries, dropped = _union([*first["entries"], *second["entries"]])
    doc = validate(_document(entries))
    records.write_json_atomic(out, doc)
    return {
        "out": str(out),
        "entries": len(entries),
        "duplicates_dropped": dropped,
        "leaderboard": doc,
    }


# ---------------------------------------------------------------- show

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
    return (_markdown if markdown else _plain)(header, rows, right)


# ---------------------------------------------------------------- CLI


def _fail(error: object, code: int) -> int:
    message = " ".join(str(error).split()).encode("utf-8", "backslashreplace").decode()
    print(f"error: {message}", file=sys.stderr)
    return code


def _guard(func: Any) -> Any:
    """Run a CLI command: LeaderboardError -> exit 2, a write failure -> exit 1, one line."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except LeaderboardError as e:
            return _fail(e, 2)
        except OSError as e:
            target = getattr(args, "out", None) or e.filename or ""
            return _fail(f"cannot write {target}: {e.strerror or e}", 1)

    return run


@_guard
def cli_export(args: argparse.Namespace) -> int:
    """`leaderboard export RUN_DIRS... -o FILE`."""
    doc, n_records, dropped = _export(list(args.run_dirs), args.out)
    print(
        f"wrote {args.out}: {len(doc['entries'])} entries from {n_records} records "
        f"({dropped} duplicate ids dropped)"
    )
    return 0


@_guard
def cli_validate(args: argparse.Namespace) -> int:
    """`leaderboard validate FILE`."""
    doc = validate(args.file)
    print(f"ok: {args.file}: {len(doc['entries'])} entries, schema_version {SCHEMA_VERSION}")
    return 0


@_guard
def cli_merge(args: argparse.Namespace) -> int:
    """`leaderboard merge A B -o C`."""
    result = merge(args.a, args.b, args.out)
    print(
        f"wrote {result['out']}: {result['entries']} entries "
        f"({result['duplicates_dropped']} duplicates dropped)"
    )
    return 0


@_guard
def cli_show(args: argparse.Namespace) -> int:
    """`leaderboard show FILE [--markdown] [--sort METRIC] [--mode MODE]`."""
    sys.stdout.write(show(args.file, args.markdown, args.sort, args.mode))
    return 0


def add_leaderboard_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `leaderboard {export,validate,merge,show}` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "leaderboard", help="export, validate, merge and show leaderboards"
    )
    sub = parser.add_subparsers(dest="leaderboard_command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="leaderboard from run folders (searched for record.json)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder or record file")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="leaderboard to write")
    p.set_defaults(func=cli_export)

    p = sub.add_parser("validate", help="check a leaderboard file against the schema")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cli_validate)

    p = sub.add_parser("merge", help="union of two leaderboards (newer duplicate kept)")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="leaderboard to write")
    p.set_defaults(func=cli_merge)

    p = sub.add_parser("show", help="ranked table of a leaderboard")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--markdown", action="store_true", help="GitHub markdown table")
    p.add_argument("--sort", default="recall", metavar="METRIC", help="rank by (default recall)")
    p.add_argument("--mode", metavar="MODE", help="only entries of this mode (e.g. in-weight)")
    p.set_defaults(func=cli_show)
    return parser
