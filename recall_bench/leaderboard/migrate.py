"""Older leaderboard files, upgraded on reading: each step turns schema_version n into n + 1.

1 -> 2: each entry's id, checked against version 1's formula (mode, world hash, model, config
and seed), is recomputed with version 2's, which adds the benchmark version, device kind and
jax/jaxlib versions; each entry gets its track (records.track of its mode); in-tool entries'
bits metrics (and their `better`) take the in-tool names (records.IN_TOOL_NAMES:
bits_memorized -> bits_delivered, ...), as run records did from record/1 to record/2.

2 -> 3: entries may carry `record`, the path of their run record; a version 2 file never
knew it, so its entries are kept as they are (without `record`) and only the version moves.

3 -> 4: the track enum names `retrieval-context` (it gained it within version 3: a version 3
file holds it only when written after that), and entries that scored the general skill suite
name its exact-match accuracies `skill_<skill>_accuracy`, as run records do from record/3
(records.skill_names: the copy skill's `copy_accuracy` had overwritten the in-tool one; the
entry's id, over what was run, is unchanged).

Steps run on untrusted input before the schema check: they change only what has the expected
shape and leave the rest for the check to report.
"""

from __future__ import annotations

from typing import Any

from recall_bench import records
from recall_bench.leaderboard.ids import digest, entry_id, what_ran
from recall_bench.leaderboard.jsonio import FieldError


def _entry_1_to_2(entry: Any, prefix: str) -> Any:
    if not isinstance(entry, dict):
        return entry
    if entry.get("id") != digest(what_ran(entry)):
        raise FieldError(
            f"{prefix}.id: does not match the entry's mode, world hash, model, config and seed "
            "(schema_version 1); the entry was edited after export"
        )
    track = records.track(entry.get("mode"))
    entry = {**entry, "track": track}
    if track == "in-tool-recall":
        for key in ("metrics", "better"):
            if isinstance(entry.get(key), dict):
                entry[key] = records.delivered_names(entry[key])
    return {**entry, "id": entry_id(entry)}


def _doc_1_to_2(doc: dict[str, Any]) -> dict[str, Any]:
    entries = doc.get("entries")
    if isinstance(entries, list):
        entries = [_entry_1_to_2(e, f"entries[{i}]") for i, e in enumerate(entries)]
    return {**doc, "schema_version": 2, "entries": entries}


def _doc_2_to_3(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "schema_version": 3}


def _doc_3_to_4(doc: dict[str, Any]) -> dict[str, Any]:
    entries = doc.get("entries")
    if isinstance(entries, list):
        entries = [records.skill_names(e) for e in entries]
    return {**doc, "schema_version": 4, "entries": entries}


STEPS = {1: _doc_1_to_2, 2: _doc_2_to_3, 3: _doc_3_to_4}  # from schema_version n to n + 1


def upgrade(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` (a leaderboard of a known schema_version) upgraded to the current version."""
    version = doc["schema_version"]
    while version in STEPS:
        doc = STEPS[version](doc)
        version += 1
    return doc
