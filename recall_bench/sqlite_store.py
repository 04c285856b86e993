"""A fact store in a SQLite file: read-only, parameterized queries only, a timeout per call.

Model output is untrusted input to the store (docs/design.md §5): keys travel as BLOB
parameters, never as SQL text; a failing chunk of a lookup is bisected so that only the rows it
failed on become ERROR_STATUS.
"""

from __future__ import annotations

import collections
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from recall_bench.stores import (
    ERROR_STATUS,
    NOT_FOUND_STATUS,
    OK,
    LookupResult,
    StoreError,
    attribute_bits,
    check_batch,
    check_facts,
    check_update,
    sorted_codes,
    unknown_facts,
)

STORE_FORMAT = "recall_bench.store/1"
_CHUNK = 256  # rows per SQLite query; pieces are powers of two so their statements stay cached
_PROGRESS_STEPS = 1000  # SQLite VM steps between timeout checks


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
        keys, attributes, values = check_facts(keys, attributes, values)
        order, _ = sorted_codes(keys, attributes, attribute_bits(attributes))
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
        keys, attributes, valid = check_batch(keys, attributes, self.key_length)
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
        keys, attributes, values = check_update(keys, attributes, values, self.value_length)
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
            raise ValueError(unknown_facts(missing, len(keys)))

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
