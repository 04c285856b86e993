"""The key-value tool: a world's fact store (stores.py, sqlite_store.py) and the call
protocol between a model and it.

A model's call is untrusted: parse_call and serve_calls turn any token array into a recorded
outcome, never an exception, and a failing store marks only the rows it failed on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from recall_bench.formats import ERROR, NOT_FOUND, PAD, RESULT, RESULT_END, Vocab
from recall_bench.sqlite_store import SQLiteStore
from recall_bench.stores import (
    ERROR_STATUS,
    INVALID_STATUS,
    OK,
    LookupResult,
    MemoryStore,
    Store,
    world_facts,
)
from recall_bench.worlds import FactWorld

STORE_KINDS = ("memory", "sqlite")


def build_store(world: FactWorld, kind: str = "memory", path: str | Path | None = None) -> Store:
    """A store of all the world's facts; kind "sqlite" writes (or replaces) the file at path."""
    if kind == "memory":
        return MemoryStore(*world_facts(world))
    if kind == "sqlite":
        if path is None:
            raise ValueError("a sqlite store needs a path: build_store(world, 'sqlite', path)")
        return SQLiteStore.build(path, *world_facts(world))
    raise ValueError(f"unknown store kind {kind!r}: use one of {STORE_KINDS}")


@dataclasses.dataclass(frozen=True)
class ParsedCall:
    """A model's call: valid, key symbols and attribute (None unless valid), reason ("ok" or
    what was wrong: a short fixed phrase, so reasons can be counted)."""

    valid: bool
    key: np.ndarray | None
    attribute: int | None
    reason: str


def _invalid(reason: str) -> ParsedCall:
    return ParsedCall(False, None, None, reason)


def parse_call(call: np.ndarray, vocab: Vocab, key_length: int) -> ParsedCall:
    """Parse the tokens between CALL and CALL_END: key_length key symbols, then one attribute."""
    tokens = np.asarray(call)
    if tokens.ndim != 1:
        return _invalid("not a 1-d token array")
    if tokens.size == 0:
        return _invalid("empty")
    if tokens.dtype.kind not in "iu":
        return _invalid("non-integer tokens")
    if len(tokens) != key_length + 1:
        return _invalid("wrong length")
    key, attribute = tokens[:key_length], tokens[key_length]
    if not ((key >= vocab.key_offset) & (key < vocab.key_offset + vocab.key_alphabet)).all():
        return _invalid("non-key token in key")
    if not vocab.attr_offset <= attribute < vocab.attr_offset + vocab.n_attributes:
        return _invalid("unknown attribute")
    return ParsedCall(
        True, (key - vocab.key_offset).astype(np.int32), int(attribute) - vocab.attr_offset, "ok"
    )


def serve_calls(
    store: Store, calls: list[np.ndarray], vocab: Vocab, key_length: int
) -> tuple[list[ParsedCall], np.ndarray, LookupResult]:
    """Answer a batch of calls with one store lookup.

    Returns (parsed calls, result tokens, lookup result), all B rows in call order. Result
    tokens are [B, value_length + 2] int32: RESULT value RESULT_END when found, else
    RESULT NOT_FOUND|ERROR RESULT_END followed by PAD; result_lengths gives tokens to write.
    The lookup result's status is INVALID_STATUS for malformed calls (not sent to the store).
    """
    parsed = [parse_call(call, vocab, key_length) for call in calls]
    rows = [i for i, p in enumerate(parsed) if p.valid]
    status = np.full(len(calls), INVALID_STATUS, np.int8)
    values = np.zeros((len(calls), store.value_length), np.uint8)
    errors: list[str] = []
    seconds = 0.0
    if rows:
        keys = np.stack([parsed[i].key for i in rows])
        found = store.lookup(keys, np.array([parsed[i].attribute for i in rows]))
        status[rows], values[rows] = found.status, found.values
        errors, seconds = found.errors, found.seconds
    tokens = np.full((len(calls), store.value_length + 2), PAD, np.int32)
    tokens[:, 0] = RESULT
    ok = status == OK
    tokens[ok, 1:-1] = values[ok].astype(np.int32) + vocab.value_offset
    tokens[ok, -1] = RESULT_END
    tokens[~ok, 1] = np.where(status[~ok] == ERROR_STATUS, ERROR, NOT_FOUND)
    tokens[~ok, 2] = RESULT_END
    return parsed, tokens, LookupResult(values, status, errors, seconds)


def result_lengths(tokens: np.ndarray) -> np.ndarray:
    """[B] tokens of each serve_calls row to write back (PAD only ever fills the tail)."""
    return (np.asarray(tokens) != PAD).sum(axis=1).astype(np.int32)
