"""Leaderboard validation: the JSON Schema shipped with the package, plus the checks it cannot
express (times with a timezone, non_embedding <= total, metric directions, ids, unique ids).
A file of an older schema_version is upgraded first (migrate.py), then checked as current.

`validate` treats its input as untrusted: anything malformed raises LeaderboardError (a
ValueError) whose message names the offending field, never another exception.
"""

from __future__ import annotations

import datetime
import functools
import importlib.resources
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from recall_bench import records
from recall_bench.leaderboard import migrate
from recall_bench.leaderboard.ids import entry_id
from recall_bench.leaderboard.jsonio import (
    MAX_BYTES,
    MAX_DEPTH,
    FieldError,
    LeaderboardError,
    check_limits,
    field_path,
    json_type,
    parse_json,
    read_text,
    short,
    with_hint,
)

FORMAT = "recall_bench.leaderboard"
SCHEMA_VERSION = 4  # files of an older version are upgraded on reading (migrate.py)
FILE_HINT = "fix that field or re-export the leaderboard from its run records"


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
def validators() -> tuple[Any, Any]:
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


def _describe(error: jsonschema.exceptions.ValidationError, prefix: str) -> str:
    """One line for a jsonschema error: field path, what is wrong."""
    parts = list(error.absolute_path)
    keyword, expected, value = error.validator, error.validator_value, error.instance
    if keyword == "required" and isinstance(value, dict):
        missing = [k for k in expected if k not in value]
        name = missing[0] if missing else "?"
        return f"{field_path([*parts, name], prefix)}: missing required field"
    if keyword == "additionalProperties" and isinstance(value, dict):
        known = set(error.schema.get("properties", {}))
        extra = sorted(k for k in value if k not in known)
        name = extra[0] if extra else "?"
        return f"{field_path([*parts, name], prefix)}: unknown field"
    where = field_path(parts, prefix)
    if keyword == "propertyNames":
        return f"{where}: field name {short(value)} is not allowed (use lower_snake_case)"
    if keyword == "type":
        want = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{where}: expected {want}, got {json_type(value)} {short(value)}"
    if keyword == "minimum":
        return f"{where}: {short(value)} is below {expected}"
    if keyword == "maximum":
        return f"{where}: {short(value)} is above {expected}"
    if keyword == "exclusiveMinimum":
        return f"{where}: {short(value)} must be above {expected}"
    if keyword == "exclusiveMaximum":
        return f"{where}: {short(value)} must be below {expected}"
    if keyword == "const":
        return f"{where}: expected {short(expected)}, got {short(value)}"
    if keyword == "enum":
        return f"{where}: {short(value)} is not one of {short(expected)}"
    if keyword == "pattern":
        return f"{where}: {short(value)} does not match {expected}"
    if keyword in ("maxLength", "minLength"):
        size = "long" if keyword == "maxLength" else "short"
        return f"{where}: string is too {size} ({keyword} {expected})"
    return f"{where}: {short(error.message, 120)}"


def schema_check(validator: Any, obj: Any, prefix: str) -> None:
    """Raise a FieldError describing the most relevant schema violation of `obj`, if any."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is not None:
        raise FieldError(_describe(error, prefix))


def parse_time(value: str, where: str) -> datetime.datetime:
    """An ISO 8601 time with a timezone (a trailing Z allowed), or a FieldError."""
    try:
        text = value[:-1] + "+00:00" if value.endswith("Z") else value
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise FieldError(
            f"{where}: {short(value)} is not an ISO 8601 time with a timezone "
            "(e.g. 2025-01-01T00:00:00+00:00)"
        )
    return when


def _check_track(entry: dict[str, Any], prefix: str) -> None:
    """The track follows from the mode, and bits carry the names of the track's kind: held
    in the weights (bits_memorized, ...) or, in-tool, delivered with the store's help."""
    track = records.track(entry["mode"])
    if entry["track"] != track:
        raise FieldError(
            f"{field_path(['track'], prefix)}: {entry['track']!r}, but mode {entry['mode']!r} is "
            f"on track {track!r}; the entry was edited after export"
        )
    in_tool = track in records.DELIVERED_TRACKS
    for held, delivered in records.IN_TOOL_NAMES.items():
        wrong, right = (held, delivered) if in_tool else (delivered, held)
        if wrong in entry["metrics"]:
            raise FieldError(
                f"{field_path(['metrics', wrong], prefix)}: on track {track!r} these bits are "
                f"{'delivered with the store' if in_tool else 'held in the weights'}: name "
                f"them {right!r}"
            )


def check_entry(entry: dict[str, Any], prefix: str) -> None:
    """Checks the schema cannot express; `entry` has already passed the schema."""
    parse_time(entry["created"], field_path(["created"], prefix))
    params = entry["model"]["params"]
    if params["non_embedding"] > params["total"]:
        raise FieldError(
            f"{field_path(['model', 'params', 'non_embedding'], prefix)}: "
            f"{params['non_embedding']} is above model.params.total = {params['total']}"
        )
    for name, direction in entry["better"].items():
        known = records.BETTER.get(name)
        if known is not None and direction != known:
            raise FieldError(
                f"{field_path(['better', name], prefix)}: {direction!r}, but {name} is always "
                f"{known!r}-is-better"
            )
    _check_track(entry, prefix)
    expected = entry_id(entry)
    if entry["id"] != expected:
        raise FieldError(
            f"{field_path(['id'], prefix)}: does not match the entry's mode, world hash, model, "
            "config, seed, benchmark version, device kind and jax versions (expected "
            f"{expected[:16]}...); the entry was edited after export"
        )


def _check_doc(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise FieldError(f"(top level): expected a JSON object, got {json_type(doc)}")
    if doc.get("format") != FORMAT:
        raise LeaderboardError(
            f"format: expected {FORMAT!r}, got {short(doc.get('format'))}; this is not a "
            "recall_bench leaderboard"
        )
    version = doc.get("schema_version")
    if type(version) is not int or not 1 <= version <= SCHEMA_VERSION:
        raise LeaderboardError(
            f"schema_version: {short(version)} is not supported; this reader understands "
            f"schema_version 1 to {SCHEMA_VERSION} (upgrade recall_bench, or re-export the file)"
        )
    check_limits(doc, "", MAX_DEPTH)
    doc = migrate.upgrade(doc)
    file_validator, _ = validators()
    schema_check(file_validator, doc, "")
    parse_time(doc["created"], "created")
    seen: dict[str, int] = {}
    for i, entry in enumerate(doc["entries"]):
        prefix = f"entries[{i}]"
        check_entry(entry, prefix)
        if entry["id"] in seen:
            raise LeaderboardError(
                f"{prefix}.id: duplicate of entries[{seen[entry['id']]}].id (same config "
                "twice); keep one, e.g. with `recall-bench leaderboard merge`"
            )
        seen[entry["id"]] = i
    return doc


def validate(obj_or_path: dict[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """Check a leaderboard (a parsed object or a file path); return it, parsed and upgraded to
    schema_version SCHEMA_VERSION.

    Raises LeaderboardError, and nothing else, for anything malformed.
    """
    if isinstance(obj_or_path, (str, os.PathLike)):
        path = Path(obj_or_path)
        try:
            return _check_doc(parse_json(read_text(path)))
        except LeaderboardError as e:
            raise LeaderboardError(f"{path}: {with_hint(e, FILE_HINT)}") from None
    try:
        text = json.dumps(obj_or_path, allow_nan=False, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError) as e:
        raise LeaderboardError(
            f"not a JSON value ({short(str(e), 80)}); build it from plain dicts, lists, "
            "strings, finite numbers, booleans and None"
        ) from None
    if len(text) > MAX_BYTES:
        raise LeaderboardError(f"over the {MAX_BYTES}-byte limit; split the leaderboard")
    try:
        return _check_doc(parse_json(text))
    except LeaderboardError as e:
        raise LeaderboardError(with_hint(e, FILE_HINT)) from None
