"""Building leaderboards: entries from run records, export of run folders, merge of two files.

Each entry is built from one run record (records.py) by `entry_from_record`, keeping what
identifies the run and what came out (layout: leaderboard/__init__.py); the same id twice
(the same config run twice) keeps one entry.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recall_bench import records
from recall_bench.leaderboard.ids import entry_id
from recall_bench.leaderboard.jsonio import (
    MAX_DEPTH,
    FieldError,
    LeaderboardError,
    check_limits,
    json_type,
    parse_json,
    read_text,
    short,
    with_hint,
)
from recall_bench.leaderboard.schema import (
    FORMAT,
    SCHEMA_VERSION,
    check_entry,
    parse_time,
    schema_check,
    validate,
    validators,
)
from recall_bench.record_types import Record

RECORD_HINT = "fix the run record or rerun it"
ON_CONFLICT = ("refuse", "keep-newest", "keep-first")  # same id, different metrics
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


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _pick(value: Any, keys: Iterable[str]) -> Any:
    """The listed keys of an object (others are dropped); a non-object is passed through."""
    if not isinstance(value, dict):
        return value
    return {k: value[k] for k in keys if k in value}


def _plain_record(record: Any) -> Record:
    """The record as plain JSON values, checked to be a run record of a known schema and
    upgraded to the current one."""
    try:
        record = json.loads(json.dumps(records.clean_json(record), allow_nan=False))
    except (TypeError, ValueError, RecursionError) as e:
        raise LeaderboardError(
            f"record is not JSON ({short(str(e), 80)}); give the dict read from record.json"
        ) from None
    if not isinstance(record, dict):
        raise FieldError(f"record: expected a JSON object, got {json_type(record)}")
    record = records.upgrade_record(record)
    schema = record.get("schema")
    if schema != records.RECORD_SCHEMA:
        raise LeaderboardError(
            f"schema: {short(schema)} is not {records.RECORD_SCHEMA!r} (nor an older version "
            "this reader upgrades); not a run record, or one from a newer recall_bench"
        )
    check_limits(record, "", MAX_DEPTH - 2)
    return record


def _metrics_and_better(record: Record) -> tuple[Any, Any]:
    """The record's non-null metrics and the direction of each one that has a known one."""
    metrics = record.get("metrics")
    better_in = record.get("better") if isinstance(record.get("better"), dict) else {}
    if not isinstance(metrics, dict):
        return metrics, better_in
    metrics = {k: v for k, v in metrics.items() if v is not None}
    better = {
        k: better_in.get(k, records.BETTER.get(k))
        for k in metrics
        if k in better_in or k in records.BETTER
    }
    return metrics, better


def _record_path(path: Path | None) -> str | None:
    """`path` relative to the working folder with / separators, or None when outside it."""
    if path is None:
        return None
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return None


# The joint protocol's settings that list its sweep (or repeat the cell's own config), not what
# one cell trained on: left out of the mixture an entry's config carries.
JOINT_SWEEP_KEYS = frozenset({"fact_counts", "modes", "capacity_counts", "seeds", "facts"})


def _cell_config(record: dict[str, Any]) -> Any:
    """A record's config; a joint-protocol cell's with its mixture (general fraction, sampling,
    rows, suite), which its fact-run config does not hold, so cells of two mixtures differ."""
    config = record.get("config")
    joint = record.get("joint")
    if (
        record.get("protocol") != "joint"
        or not isinstance(config, dict)
        or not isinstance(joint, dict)
    ):
        return config
    mixture = joint.get("config")
    if not isinstance(mixture, dict):
        return config
    return {**config, "joint": {k: v for k, v in mixture.items() if k not in JOINT_SWEEP_KEYS}}


def _entry_from_record(record: Any, path: Path | None = None) -> dict[str, Any]:
    record = _plain_record(record)
    model = record.get("model")
    if isinstance(model, dict):
        model = {**model, "params": record.get("params")}
        if model["params"] is None:
            del model["params"]
    metrics, better = _metrics_and_better(record)
    world = _pick(record.get("world"), _WORLD_KEYS)
    entry = {
        "id": None,
        "run_id": record.get("run_id"),
        "record": _record_path(path),
        "created": record.get("created"),
        "benchmark_version": record.get("benchmark_version"),
        "mode": record.get("mode"),
        "track": records.track(record.get("mode")),
        "n_facts": record.get("n_facts"),
        "seed": record.get("seed"),
        "world": world,
        "model": model,
        "config": _cell_config(record),
        "train": _pick(record.get("train"), _TRAIN_KEYS),
        "metrics": metrics,
        "better": better,
        "env": _pick(record.get("env"), _ENV_KEYS),
    }
    entry = {k: v for k, v in entry.items() if v is not None or k == "id"}
    entry["id"] = entry_id(entry)
    _, entry_validator = validators()
    schema_check(entry_validator, entry, "")
    check_entry(entry, "")
    return entry


def entry_from_record(record: Record) -> dict[str, Any]:
    """A leaderboard entry from one run record (null metrics dropped); validated."""
    try:
        return _entry_from_record(record)
    except LeaderboardError as e:
        raise LeaderboardError(with_hint(e, RECORD_HINT)) from None


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


def entry_from_file(path: Path) -> dict[str, Any] | None:
    """The entry of a record file; None for a reference run that holds no facts (the joint
    protocol's general-only model): it has nothing to rank."""
    try:
        record = parse_json(read_text(path), strict=False)
        if isinstance(record, dict) and record.get("n_facts") == 0 and "world" not in record:
            return None
        return _entry_from_record(record, path)
    except LeaderboardError as e:
        raise LeaderboardError(f"{path}: {with_hint(e, RECORD_HINT)}") from None


def _newer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether entry b was created after entry a (both already validated)."""
    return parse_time(b["created"], "created") > parse_time(a["created"], "created")


def _differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Metrics (timings, named *_s, left out) in which two entries differ, e.g.
    "recall 0.5 vs 0.6"; a metric only one of them has counts as differing."""
    names = sorted(k for k in {*a["metrics"], *b["metrics"]} if not k.endswith("_s"))
    pairs = [(k, a["metrics"].get(k, "absent"), b["metrics"].get(k, "absent")) for k in names]
    return [f"{k} {x} vs {y}" for k, x, y in pairs if x != y]


def _conflict(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """One line naming the id and the differing metrics of two entries of the same id."""
    differing = _differing(a, b)
    if not differing:
        return None
    what = f"{a['mode']}, {a['n_facts']} facts, seed {a['seed']}, {a['env']['device_kind']}"
    return f"id {a['id'][:12]} ({what}): {', '.join(differing)}"


@dataclasses.dataclass(frozen=True)
class Union:
    """Entries with unique ids, how many duplicates were dropped, and the conflicts among them
    (same id, different metrics), one line each."""

    entries: list[dict[str, Any]]
    dropped: int
    conflicts: list[str]


def union(entries: Iterable[dict[str, Any]], on_conflict: str = "refuse") -> Union:
    """One entry per id. Duplicates with equal metrics keep the newer `created`; with differing
    metrics (a conflict) refuse, or keep the newer (keep-newest) or the first (keep-first)."""
    if on_conflict not in ON_CONFLICT:
        raise LeaderboardError(f"on_conflict {on_conflict!r}: choose one of {ON_CONFLICT}")
    kept: dict[str, dict[str, Any]] = {}
    dropped, conflicts = 0, []
    for entry in entries:
        old = kept.get(entry["id"])
        if old is None:
            kept[entry["id"]] = entry
            continue
        dropped += 1
        conflict = _conflict(old, entry)
        if conflict is not None:
            conflicts.append(conflict)
        if _newer(old, entry) and (conflict is None or on_conflict == "keep-newest"):
            kept[entry["id"]] = entry
    if conflicts and on_conflict == "refuse":
        more = f"; and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
        raise LeaderboardError(
            f"{len(conflicts)} id(s) with different metrics (a rerun that did not reproduce, or "
            f"a code change under the same benchmark_version): {'; '.join(conflicts[:5])}{more}; "
            "nothing written: pass --on-conflict keep-newest or keep-first to keep one and proceed"
        )
    return Union(list(kept.values()), dropped, conflicts)


def _document(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "benchmark_version": records.BENCHMARK_VERSION,
        "created": now(),
        "entries": entries,
    }


def _write(found: Union, out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the leaderboard of `found` to `out`; what was written, as export/merge return."""
    doc = validate(_document(found.entries))
    records.write_json_atomic(out, doc)
    return {
        "out": str(out),
        "entries": len(found.entries),
        "duplicates_dropped": found.dropped,
        "conflicts": found.conflicts,
        "leaderboard": doc,
    }


def export(
    run_dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
    on_conflict: str = "refuse",
) -> dict[str, Any]:
    """Write a leaderboard of every record under run_dirs, one entry per id (see `union`).

    Returns {"out", "records", "entries", "duplicates_dropped", "conflicts", "leaderboard"}.
    """
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    paths = find_records(run_dirs)
    if not paths:
        raise LeaderboardError(
            f"no record.json found under {', '.join(map(str, run_dirs))}; run an experiment "
            "first or point at its run folder"
        )
    entries = [e for e in map(entry_from_file, paths) if e is not None]
    found = union(entries, on_conflict)
    return {"records": len(paths), **_write(found, out_path)}


def merge(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    out: str | os.PathLike[str],
    on_conflict: str = "refuse",
) -> dict[str, Any]:
    """Union of two leaderboards written to `out`, one entry per id (see `union`).

    Returns {"out", "entries" (count), "duplicates_dropped", "conflicts", "leaderboard"}.
    """
    first, second = validate(a), validate(b)
    return _write(union([*first["entries"], *second["entries"]], on_conflict), out)
