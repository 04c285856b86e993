"""Fact stores: (key, attribute) -> value, many lookups per call, behind one interface (Store).

Keys and values are fixed-length byte strings (symbols 0..255), so a key may hold any byte,
quotes and NUL included; stores treat them as data only. A failing store marks only the rows
it failed on (ERROR_STATUS), never raises on a lookup. MemoryStore lives here; the SQLite
store in sqlite_store.py; building a world's store and the call protocol in tool.py.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol

import numpy as np

from recall_bench.worlds import FactWorld

OK = 0  # the fact was found; its value is in LookupResult.values
NOT_FOUND_STATUS = 1  # no fact has this (key, attribute)
ERROR_STATUS = 2  # the store failed on this row (message in LookupResult.errors)
INVALID_STATUS = 3  # serve_calls only: the call was malformed and never reached the store


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


def check_facts(
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


def attribute_bits(attributes: np.ndarray) -> int:
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


def sorted_codes(
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


def check_batch(
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
        keys, attributes, values = check_facts(keys, attributes, values)
        self.key_length = keys.shape[1]
        self.value_length = values.shape[1]
        self._bits = attribute_bits(attributes)
        order, self._codes = sorted_codes(keys, attributes, self._bits)
        self._values = values[order]

    def __len__(self) -> int:
        return len(self._codes)

    def lookup(self, keys: np.ndarray, attributes: np.ndarray) -> LookupResult:
        """Vectorized search; rows outside the stored symbol and attribute ranges are NOT_FOUND."""
        start = time.perf_counter()
        keys, attributes, valid = check_batch(keys, attributes, self.key_length)
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
        keys, attributes, values = check_update(keys, attributes, values, self.value_length)
        valid = attributes < (1 << self._bits)
        codes = _pack(keys, np.where(valid, attributes, 0), self._bits)
        pos = np.minimum(np.searchsorted(self._codes, codes), max(len(self) - 1, 0))
        missing = int(np.sum(~valid | (self._codes[pos] != codes))) if len(self) else len(keys)
        if missing:
            raise ValueError(unknown_facts(missing, len(keys)))
        self._values[pos] = values

    def nbytes(self) -> int:
        """Bytes of the store's arrays (the packed keys and the values)."""
        return int(self._codes.nbytes + self._values.nbytes)

    def close(self) -> None:
        """Nothing to release: the arrays go with the object."""


def check_update(keys, attributes, values, value_length: int) -> tuple[np.ndarray, ...]:
    """Validated facts of an update whose values have the store's length."""
    keys, attributes, values = check_facts(keys, attributes, values)
    if values.shape[1] != value_length:
        raise ValueError(
            f"new values have {values.shape[1]} symbols; the store holds {value_length}"
        )
    return keys, attributes, values


def unknown_facts(missing: int, n: int) -> str:
    return f"{missing} of the {n} facts to update are not in the store: nothing was changed"


def world_facts(world: FactWorld) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, attributes, values) of every fact of a world, entity-major."""
    spec = world.spec
    keys = np.repeat(world.keys, spec.n_attributes, axis=0)
    attributes = np.tile(np.arange(spec.n_attributes), spec.n_entities)
    values = world.value_tokens().reshape(spec.n_facts, spec.value_length)
    return keys, attributes, values
