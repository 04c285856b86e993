"""The key-value tool: fact stores with one batched lookup interface, and call parsing.

Keys and values are fixed-length byte strings (symbols 0..255), so a key may hold any byte,
quotes and NUL included; stores treat them as data only (SQL is always parameterized).
A model's call is untrusted: parse_call and serve_calls turn any token array into a recorded
outcome, never an exception, and a failing store marks only the rows it failed on.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from recall_bench.formats import ERROR, NOT_FOUND, PAD, RESULT, RESULT_END, Vocab
from recall_bench.worlds import FactWorld

OK = 0  # the fact was found; its value is in LookupResult.values
NOT_FOUND_STATUS = 1  # no fact has this (key, attribute)
ERROR_STATUS = 2  # the store failed on this row (message in LookupResult.errors)
INVALID_STATUS = 3  # serve_calls only: the call was malformed and never reached the store

STORE_KINDS = ("memory", "sqlite")
STORE_FORMAT = "recall_bench.store/1"
_CHUNK = 256  # rows per SQLite query; pieces are powers of two so their statements stay cached
_PROGRESS_STEPS = 1000  # SQLite VM steps between timeout checks


class StoreError(ValueError):
    """A store file that cannot be opened; the message names the file and what to do."""


@dataclasses.dataclass(frozen=True)
class LookupResult:
    """values: [B, value_length] uint8 symbols (0 where status != OK); status: [B] int8;
    errors: one message per kind of store failure; seconds: wall time of the lookup."""

    values: np.ndarray
    status: np.ndarray
    errors: list[str]
    seconds: float


class Store(Protocol):
    """A fact store: (key, attribute) -> value, many lookups per call."""

    kind: str
    key_length: int
    value_length: int

    def __len__(self) -> int: ...

    def lookup(self, keys: np.ndarray, attributes: np.ndarray) -> LookupResult:
        """keys: [B, key_length] symbols, attributes: [B]; store failures become ERROR rows."""
        ...

    def close(self) -> None: ...


def _as_int_array(name: str, array: np.ndarray, ndim: int) -> np.ndarray:
    """array as an integer ndarray of the given rank, or a ValueError naming it."""
    array = np.asarray(array)
    if array.ndim != ndim or (array.size and array.dtype.kind not in "iub"):
        raise ValueError(
            f"{name} must be a {ndim}-d integer array, got {array.dtype} {array.shape}"
        )
    return array.astype(np.int64, copy=False)


def _in_byte_range(symbols: np.ndarray) -> np.ndarray:
    """[N] rows whose symbols all fit in a byte."""
    return ((symbols >= 0) & (symbols < 256)).all(axis=1)


def _check_facts(
    keys: np.ndarray, attributes: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated facts as (keys uint8 [N, K], attributes int64 [N], values uint8 [N, V])."""
    keys = _as_int_array("keys", keys, 2)
    attributes = _as_int_array("attributes", attributes, 1)
    values = _as_int_array("values", values, 2)
    if not len(keys) == len(attributes) == len(values):
        raise ValueError(
            f"keys, attributes and values have {len(keys)}, {len(attributes)} and "
            f"{len(values)} rows: give one row per fact"
        )
    if not (_in_byte_range(keys).all() and _in_byte_range(values).all()):
        raise ValueError("key and value symbols must be in [0, 256): they are stored as bytes")
    if (attributes < 0).any():
        raise ValueError("attributes must be non-negative")
    return keys.astype(np.uint8), attributes, values.astype(np.uint8)


def _attribute_bits(attributes: np.ndarray) -> int:
    return max(int(attributes.max(initial=0)).bit_length(), 1)


def _pack(keys: np.ndarray, attributes: np.ndarray, attribute_bits: int) -> np.ndarray:
    """[N] codes whose order is the order of (key bytes, attribute), as in SQLite's key.

    int64 when key bytes and attribute fit in 63 bits, else raw big-endian bytes (np.void).
    """
    key_length = keys.shape[1]
    if 8 * key_length + attribute_bits <= 63:
        shifts = attribute_bits + 8 * np.arange(key_length - 1, -1, -1, dtype=np.int64)
        return (keys.astype(np.int64) << shifts).sum(axis=1) | attributes
    raw = np.concatenate(
        [keys.astype(np.uint8), attributes.astype(">u8")[:, None].view(np.uint8)], axis=1
    )
    return np.ascontiguousarray(raw).view(f"V{raw.shape[1]}").ravel()


def _sorted_codes(
    keys: np.ndarray, attributes: np.ndarray, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """(order, sorted codes) of the facts; a duplicate (key, attribute) is a ValueError."""
    codes = _pack(keys, attributes, bits)
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    duplicate = np.flatnonzero(codes[1:] == codes[:-1])
    if len(duplicate):
        row = order[duplicate[0] + 1]
        raise ValueError(
            f"duplicate fact: key {keys[row].tolist()} with attribute {int(attributes[row])} "
            f"appears more than once; each (key, attribute) must be unique"
        )
    return order, codes


def _check_batch(
    keys: np.ndarray, attributes: np.ndarray, key_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, attributes, storable) of a lookup batch; storable rows could name a stored fact."""
    keys = np.asarray(keys)
    keys = _as_int_array("keys", keys.reshape(0, key_length) if keys.size == 0 else keys, 2)
    attributes = _as_int_array("attributes", attributes, 1)
    if keys.shape[1] != key_length or len(keys) != len(attributes):
        raise ValueError(
            f"lookup wants keys [B, {key_length}] and attributes [B], "
            f"got {keys.shape} and {attributes.shape}"
        )
    return keys, attributes, _in_byte_range(keys) & (attributes >= 0)


class MemoryStore:
    """Facts in sorted numpy arrays; a batch is one vectorized binary search."""

    kind = "memory"

    def __init__(self, keys: np.ndarray, attributes: np.ndarray, values: np.ndarray) -> None:
        keys, attributes, values = _check_facts(keys, attributes, values)
        self.key_length = keys.shape[1]
        self.value_length = values.shape[1]
        self._bits = _attribute_bits(attributes)
        order, self._codes = _sorted_codes(keys, attributes, self._bits)
        self._values = values[order]

    def __len__(self) -> int:
        return len(self._codes)

    def lookup(self, keys: np.ndarray, attributes: np.ndarray) -> LookupResult:
        """Vectorized search; rows outside the stored symbol and attribute ranges are NOT_FOUND."""
        start = time.perf_counter()
        keys, attributes, valid = _check_batch(keys, attributes, self.key_length)
        valid &= attributes < (1 << self._bits)
        codes = _pack(np.where(valid[:, None], keys, 0), np.where(valid, attributes, 0), self._bits)
        pos = np.minimum(np.searchsorted(self._codes, codes), max(len(self) - 1, 0))
        found = valid & (self._codes[pos] == codes) if len(self) else np.zeros_like(valid)
        stored = self._values[pos] if len(self) else np.zeros((len(codes), self.value_length))
        values = np.where(found[:, None], stored, 0)
        status = np.where(found, OK, NOT_FOUND_STATUS).astype(np.int8)
        return LookupResult(values.astype(np.uint8), status, [], time.perf_counter() - start)

    def update(self, keys: np.ndarray, attributes: np.ndarray, values: np.ndarray) -> None:
        """Give stored facts new values (each must be stored already)."""
        keys, attributes, values = _check_update(keys, attributes, values, self.value_length)
        valid = attributes < (1 << self._bits)
        codes = _pack(keys, np.where(valid, attributes, 0), self._bits)
        pos = np.minimum(np.searchsorted(self._codes, codes), max(len(self) - 1, 0))
        missing = int(np.sum(~valid | (self._codes[pos] != codes))) if len(self) else len(keys)
        if missing:
            raise ValueError(_unknown_facts(missing, len(keys)))
        self._values[pos] = values

    def nbytes(self) -> int:
        """Bytes of the store's arrays (the packed keys and the values)."""
        return int(self._codes.nbytes + self._values.nbytes)

    def close(self) -> None:
        """Nothing to release: the arrays go with the object."""


class SQLiteStore:
    """Facts in a SQLite file (table facts(key BLOB, attribute, value BLOB), WITHOUT ROWID).

    Opened read-only; every lookup call gets timeout_s seconds, after which its unfinished
    rows are ERROR. Build one with SQLiteStore.build or build_store(world, "sqlite", path).
    """

    kind = "sqlite"

    def __init__(self, path: str | Path, timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        if not self.path.is_file():
            raise StoreError(
                f"{self.path}: no such store file; build it with build_store(world, 'sqlite', path)"
            )
        uri = self.path.resolve().as_uri() + "?mode=ro"
        self._conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            meta = dict(self._conn.execute("SELECT name, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise StoreError(
                f"{self.path} is not a recall_bench store ({e}); "
                "rebuild it with build_store(world, 'sqlite', path)"
            ) from e
        if meta.get("format") != STORE_FORMAT:
            self._conn.close()
            raise StoreError(
                f"{self.path} has store format {meta.get('format')!r}, expected {STORE_FORMAT!r}; "
                "rebuild it with build_store(world, 'sqlite', path)"
            )
        self.key_length = int(meta["key_length"])
        self.value_length = int(meta["value_length"])
        self._count = int(meta["count"])

    @classmethod
    def build(
        cls,
        path: str | Path,
        keys: np.ndarray,
        attributes: np.ndarray,
        values: np.ndarray,
        timeout_s: float = 10.0,
    ) -> SQLiteStore:
        """Write the facts to path atomically (temp file in the same folder, then os.replace)."""
        keys, attributes, values = _check_facts(keys, attributes, values)
        order, _ = _sorted_codes(keys, attributes, _attribute_bits(attributes))
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            _write_facts(tmp, keys[order], attributes[order], values[order])
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return cls(path, timeout_s)

    def __len__(self) -> int:
        return self._count

    def lookup(self, keys: np.ndarray, attributes: np.ndarray) -> LookupResult:
        """Chunked parameterized queries; a failing chunk is bisected so only bad rows are ERROR."""
        start = time.perf_counter()
        keys, attributes, valid = _check_batch(keys, attributes, self.key_length)
        rows = np.flatnonzero(valid)
        queries = list(
            zip(rows.tolist(), _blobs(keys[rows]), attributes[rows].tolist(), strict=True)
        )
        found: dict[int, bytes] = {}
        failed: dict[int, str] = {}
        deadline = time.monotonic() + self.timeout_s
        timeout = f"timeout: lookup call took over {self.timeout_s} s"
        self._conn.set_progress_handler(lambda: time.monotonic() >= deadline, _PROGRESS_STEPS)
        try:
            pending = [queries] if queries else []
            while pending:
                piece = pending.pop()
                if time.monotonic() >= deadline:
                    failed.update((i, timeout) for i, _, _ in piece)
                    continue
                done = set()
                try:
                    for i, value in self._query(piece):
                        done.add(i)
                        if value is not None:
                            found[i] = value
                except sqlite3.Error as e:
                    left = [q for q in piece if q[0] not in done]
                    timed_out = time.monotonic() >= deadline
                    if timed_out or len(left) == 1:
                        message = timeout if timed_out else f"{type(e).__name__}: {e}"
                        failed.update((i, message) for i, _, _ in left)
                    elif left:
                        pending += [left[: len(left) // 2], left[len(left) // 2 :]]
        finally:
            self._conn.set_progress_handler(None, 0)
        return self._result(len(keys), found, failed, time.perf_counter() - start)

    def update(self, keys: np.ndarray, attributes: np.ndarray, values: np.ndarray) -> None:
        """Give stored facts new values (each must be stored already), in one transaction
        of parameterized UPDATEs on a writable connection of its own."""
        keys, attributes, values = _check_update(keys, attributes, values, self.value_length)
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            sql = "UPDATE facts SET value = ? WHERE key = ? AND attribute = ?"
            conn.executemany(
                sql, zip(_blobs(values), _blobs(keys), attributes.tolist(), strict=True)
            )
            missing = len(keys) - conn.total_changes
            conn.execute("COMMIT" if not missing else "ROLLBACK")
        finally:
            conn.close()
        if missing:
            raise ValueError(_unknown_facts(missing, len(keys)))

    def _result(
        self, batch: int, found: dict[int, bytes], failed: dict[int, str], seconds: float
    ) -> LookupResult:
        """Assemble a LookupResult; a stored value of the wrong size is a corrupt-store ERROR."""
        for i, value in found.items():
            if len(value) != self.value_length:
                failed[i] = f"corrupt store: a stored value is not {self.value_length} bytes"
        good = [i for i in found if i not in failed]
        values = np.zeros((batch, self.value_length), np.uint8)
        status = np.full(batch, NOT_FOUND_STATUS, np.int8)
        if good:
            blob = b"".join(found[i] for i in good)
            values[good] = np.frombuffer(blob, np.uint8).reshape(len(good), self.value_length)
            status[good] = OK
        status[list(failed)] = ERROR_STATUS
        counts = collections.Counter(failed.values())
        errors = [f"{message} ({n} rows)" for message, n in counts.items()]
        return LookupResult(values, status, errors, seconds)

    def _query(self, piece: list[tuple[int, bytes, int]]) -> Iterator[tuple[int, bytes | None]]:
        """(row, value or None) for every query of the piece, in power-of-two sized statements."""
        for lo, n in _power_of_two_pieces(len(piece)):
            sql = (
                "SELECT q.column1, f.value FROM (VALUES "
                + ",".join(["(?, ?, ?)"] * n)
                + ") AS q LEFT JOIN facts AS f ON f.key = q.column2 AND f.attribute = q.column3"
            )
            yield from self._conn.execute(sql, [x for q in piece[lo : lo + n] for x in q])

    def close(self) -> None:
        self._conn.close()


def _check_update(keys, attributes, values, value_length: int) -> tuple[np.ndarray, ...]:
    """Validated facts of an update whose values have the store's length."""
    keys, attributes, values = _check_facts(keys, attributes, values)
    if values.shape[1] != value_length:
        raise ValueError(
            f"new values have {values.shape[1]} symbols; the store holds {value_length}"
        )
    return keys, attributes, values


def _unknown_facts(missing: int, n: int) -> str:
    return f"{missing} of the {n} facts to update are not in the store: nothing was changed"


def _power_of_two_pieces(n: int) -> Iterator[tuple[int, int]]:
    """(start, size) pieces covering n rows, each a power of two of at most _CHUNK rows."""
    lo = 0
    while lo < n:
        size = min(_CHUNK, 1 << ((n - lo).bit_length() - 1))
        yield lo, size
        lo += size


def _blobs(symbols: np.ndarray) -> list[bytes]:
    """One bytes object per row of an [N, L] array of byte symbols (trailing NULs kept)."""
    if symbols.size == 0:
        return [b""] * len(symbols)
    raw = np.ascontiguousarray(symbols, dtype=np.uint8)
    return raw.view(f"V{raw.shape[1]}").ravel().tolist()


def _write_facts(path: str, keys: np.ndarray, attributes: np.ndarray, values: np.ndarray) -> None:
    """Create the tables and insert sorted facts in one fast, unjournaled transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        conn.execute(
            "CREATE TABLE facts (key BLOB NOT NULL, attribute INTEGER NOT NULL, "
            "value BLOB NOT NULL, PRIMARY KEY (key, attribute)) WITHOUT ROWID"
        )
        conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        rows = zip(_blobs(keys), attributes.tolist(), _blobs(values), strict=True)
        conn.executemany("INSERT INTO facts VALUES (?, ?, ?)", rows)
        meta = {
            "format": STORE_FORMAT,
            "key_length": keys.shape[1],
            "value_length": values.shape[1],
            "count": len(keys),
        }
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
        conn.execute("COMMIT")
    finally:
        conn.close()


def world_facts(world: FactWorld) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, attributes, values) of every fact of a world, entity-major."""
    spec = world.spec
    keys = np.repeat(world.keys, spec.n_attributes, axis=0)
    attributes = np.tile(np.arange(spec.n_attributes), spec.n_entities)
    values = world.value_tokens().reshape(spec.n_facts, spec.value_length)
    return keys, attributes, values


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
