"""The key-value tool: stores agree with the world, keep hostile bytes as data, fail per row,
and turn any model call into a recorded outcome."""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from recall_bench import sqlite_store
from recall_bench.formats import (
    CALL,
    ERROR,
    NOT_FOUND,
    PAD,
    RESULT,
    RESULT_END,
    Vocab,
    answer_tokens,
    call_tokens,
    fact_index,
)
from recall_bench.stores import NOT_FOUND_STATUS, StoreError
from recall_bench.tool import (
    ERROR_STATUS,
    INVALID_STATUS,
    OK,
    MemoryStore,
    SQLiteStore,
    build_store,
    parse_call,
    result_lengths,
    serve_calls,
    world_facts,
)
from recall_bench.worlds import FactSpec, make_fact_world

SPEC = FactSpec(n_entities=500, attribute_sizes=(4096, 1000))
WORLD = make_fact_world(SPEC)
VOCAB = Vocab.of(SPEC)
HOSTILE = [
    b"'; DROP TABLE facts; --",
    b'"); DELETE FROM meta; --\x00',
    b"\x00" * 23,
    b"'" * 23,
    b"x' OR '1'='1",
]
MEMORY_STORE = build_store(WORLD, "memory")


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    store = build_store(WORLD, request.param, tmp_path / "facts.sqlite")
    yield store
    store.close()


def hostile_facts() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys and values made of SQL metacharacters, quotes and NUL bytes."""
    width = max(len(k) for k in HOSTILE)
    keys = np.array([list(k.ljust(width, b"\x00")) for k in HOSTILE])
    values = keys[::-1].copy()
    return keys, np.arange(len(HOSTILE)) % 2, values


def test_store_matches_world(store):
    rng = np.random.default_rng(0)
    entity = rng.integers(0, SPEC.n_entities, 300)
    attribute = rng.integers(0, SPEC.n_attributes, 300)
    result = store.lookup(WORLD.keys[entity], attribute)
    assert len(store) == SPEC.n_facts
    assert (result.status == OK).all() and result.errors == []
    np.testing.assert_array_equal(result.values, WORLD.value_tokens()[entity, attribute])
    assert result.values.shape == (300, SPEC.value_length) and result.seconds >= 0


def test_every_fact_of_the_world(store):
    keys, attributes, values = world_facts(WORLD)
    result = store.lookup(keys, attributes)
    assert (result.status == OK).all()
    np.testing.assert_array_equal(result.values, values)


def test_unknown_keys_and_attributes_not_found(store):
    unknown = (WORLD.keys[:1] + 1) % SPEC.key_alphabet
    while (WORLD.keys == unknown).all(axis=1).any():
        unknown = (unknown + 1) % SPEC.key_alphabet
    keys = np.concatenate([unknown, WORLD.keys[:4], [[300, 0, 0, 0], [-1, 0, 0, 0]]])
    attributes = np.array([0, 0, SPEC.n_attributes, -1, 10**12, 0, 0])
    result = store.lookup(keys, attributes)
    np.testing.assert_array_equal(result.status, [NOT_FOUND_STATUS, OK] + [NOT_FOUND_STATUS] * 5)
    assert (result.values[result.status != OK] == 0).all()


def test_empty_batch(store):
    result = store.lookup(np.zeros((0, SPEC.key_length), np.int32), np.zeros(0, np.int32))
    assert result.status.shape == (0,) and result.values.shape == (0, SPEC.value_length)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_hostile_bytes_are_data(kind, tmp_path):
    keys, attributes, values = hostile_facts()
    if kind == "memory":
        store = MemoryStore(keys, attributes, values)
    else:
        store = SQLiteStore.build(tmp_path / "hostile.sqlite", keys, attributes, values)
    for _ in range(2):
        result = store.lookup(keys, attributes)
        assert (result.status == OK).all()
        np.testing.assert_array_equal(result.values, values)
    assert (store.lookup(keys, 1 - attributes).status == NOT_FOUND_STATUS).all()
    assert len(store) == len(HOSTILE)
    store.close()
    if kind == "sqlite":
        with sqlite3.connect(tmp_path / "hostile.sqlite") as conn:
            assert conn.execute("SELECT count(*) FROM facts").fetchone() == (len(HOSTILE),)
            assert conn.execute("SELECT count(*) FROM meta").fetchone() == (4,)


def test_long_keys_use_the_byte_fallback():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 256, (200, 9))
    attributes = rng.integers(0, 3, 200)
    values = rng.integers(0, 256, (200, 3))
    store = MemoryStore(keys, attributes, values)
    result = store.lookup(keys, attributes)
    assert (result.status == OK).all()
    np.testing.assert_array_equal(result.values, values)
    assert (store.lookup(keys, attributes + 3).status == NOT_FOUND_STATUS).all()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_duplicate_facts_rejected(kind, tmp_path):
    keys = np.array([[1, 2], [3, 4], [1, 2]])
    with pytest.raises(ValueError, match="duplicate fact"):
        if kind == "memory":
            MemoryStore(keys, np.array([0, 0, 0]), np.zeros((3, 1)).astype(int))
        else:
            SQLiteStore.build(tmp_path / "d.sqlite", keys, np.zeros(3, int), np.zeros((3, 1), int))
    assert not list(tmp_path.iterdir())


def test_unknown_kind_and_missing_path():
    with pytest.raises(ValueError, match="memory"):
        build_store(WORLD, "redis")
    with pytest.raises(ValueError, match="path"):
        build_store(WORLD, "sqlite")


def test_not_a_store_is_a_clear_error(tmp_path):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match=r"garbage\.sqlite.*build_store"):
        SQLiteStore(garbage)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a recall_bench store"):
        SQLiteStore(other)
    with pytest.raises(StoreError, match="no such store"):
        SQLiteStore(tmp_path / "missing.sqlite")


def test_build_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "facts.sqlite"
    path.write_bytes(b"old junk")
    store = build_store(WORLD, "sqlite", path)
    assert len(store) == SPEC.n_facts
    store.close()
    assert [p.name for p in tmp_path.iterdir()] == ["facts.sqlite"]


def test_killed_build_leaves_old_store(tmp_path, monkeypatch):
    path = tmp_path / "facts.sqlite"
    build_store(WORLD, "sqlite", path).close()

    def crash(tmp, *facts):
        sqlite3.connect(tmp).execute("CREATE TABLE facts (x)").connection.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(sqlite_store, "_write_facts", crash)
    with pytest.raises(KeyboardInterrupt):
        build_store(make_fact_world(SPEC.with_entities(10)), "sqlite", path)
    assert [p.name for p in tmp_path.iterdir()] == ["facts.sqlite"]
    store = SQLiteStore(path)
    assert len(store) == SPEC.n_facts
    store.close()


class PoisonedStore(SQLiteStore):
    """A store whose queries fail whenever they touch one key, like a bad disk page."""

    poison = b""

    def _query(self, piece):
        for i, value in super()._query(piece):
            if any(key == self.poison for _, key, _ in piece):
                raise sqlite3.OperationalError("disk I/O error")
            yield i, value


def test_failure_mid_batch_keeps_other_rows(tmp_path):
    build_store(WORLD, "sqlite", tmp_path / "facts.sqlite").close()
    store = PoisonedStore(tmp_path / "facts.sqlite")
    keys, attributes, values = world_facts(WORLD)
    store.poison = bytes(keys[777].astype(np.uint8))
    result = store.lookup(keys, attributes)
    bad = (keys == keys[777]).all(axis=1)
    assert (result.status[bad] == ERROR_STATUS).all()
    assert (result.status[~bad] == OK).all()
    np.testing.assert_array_equal(result.values[~bad], values[~bad])
    assert len(result.errors) == 1 and "disk I/O error" in result.errors[0]
    store.close()


def test_corrupt_value_is_a_row_error(tmp_path):
    path = tmp_path / "facts.sqlite"
    build_store(WORLD, "sqlite", path).close()
    keys, attributes, values = world_facts(WORLD)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE facts SET value = x'00' WHERE key = ?", (bytes(keys[0].astype("u1")),))
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    result = store.lookup(keys[:10], attributes[:10])
    np.testing.assert_array_equal(result.status, [ERROR_STATUS] * 2 + [OK] * 8)
    np.testing.assert_array_equal(result.values[2:], values[2:10])
    assert "corrupt store" in result.errors[0]
    store.close()


def test_timeout_marks_rows_error_never_raises(tmp_path):
    store = build_store(WORLD, "sqlite", tmp_path / "facts.sqlite")
    keys, attributes, values = world_facts(WORLD)
    store.timeout_s = 0.0
    result = store.lookup(keys, attributes)
    assert (result.status == ERROR_STATUS).all() and "timeout" in result.errors[0]
    store.timeout_s = 10.0
    result = store.lookup(keys, attributes)
    assert (result.status == OK).all()
    np.testing.assert_array_equal(result.values, values)
    store.close()


def test_serve_calls_writes_results(store):
    entity, attribute = fact_index(SPEC, np.arange(3))
    calls = [c[1:-1] for c in call_tokens(WORLD, entity, attribute)]
    unknown = calls[0].copy()
    unknown[:-1] = VOCAB.key_offset + (WORLD.keys[0] + 1) % SPEC.key_alphabet
    assert not (WORLD.keys == unknown[:-1] - VOCAB.key_offset).all(axis=1).any()
    calls += [unknown, np.array([CALL, 5]), np.array([], np.int64)]
    parsed, tokens, result = serve_calls(store, calls, VOCAB, SPEC.key_length)
    n = len(entity)
    assert [p.valid for p in parsed] == [True] * (n + 1) + [False, False]
    assert tokens.shape == (n + 3, SPEC.value_length + 2) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens[:n, 1:-1], answer_tokens(WORLD, entity, attribute))
    assert (tokens[:n, 0] == RESULT).all() and (tokens[:n, -1] == RESULT_END).all()
    np.testing.assert_array_equal(tokens[n:, :3], [[RESULT, NOT_FOUND, RESULT_END]] * 3)
    assert (tokens[n:, 3:] == PAD).all()
    np.testing.assert_array_equal(result_lengths(tokens), [SPEC.value_length + 2] * n + [3] * 3)
    np.testing.assert_array_equal(result.status[n:], [NOT_FOUND_STATUS] + [INVALID_STATUS] * 2)


def test_serve_calls_error_token(tmp_path):
    store = build_store(WORLD, "sqlite", tmp_path / "facts.sqlite")
    store.timeout_s = 0.0
    calls = [c[1:-1] for c in call_tokens(WORLD, *fact_index(SPEC, np.arange(2)))]
    _, tokens, result = serve_calls(store, calls, VOCAB, SPEC.key_length)
    assert (tokens[:, 1] == ERROR).all() and (result.status == ERROR_STATUS).all()
    assert result.errors
    store.close()


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        ([], "empty"),
        ([VOCAB.key_offset] * SPEC.key_length, "wrong length"),
        ([VOCAB.key_offset] * (SPEC.key_length + 2), "wrong length"),
        ([VOCAB.attr_offset] + [VOCAB.key_offset] * SPEC.key_length, "non-key token in key"),
        ([-5] * SPEC.key_length + [VOCAB.attr_offset], "non-key token in key"),
        ([VOCAB.value_offset] * SPEC.key_length + [VOCAB.attr_offset], "non-key token in key"),
        ([VOCAB.key_offset] * SPEC.key_length + [VOCAB.attr_offset - 1], "unknown attribute"),
        ([VOCAB.key_offset] * SPEC.key_length + [10**9], "unknown attribute"),
        ([VOCAB.key_offset] * (SPEC.key_length + 1), "unknown attribute"),
        ([0.5] * (SPEC.key_length + 1), "non-integer tokens"),
        ([[VOCAB.key_offset] * (SPEC.key_length + 1)], "not a 1-d token array"),
    ],
)
def test_malformed_calls(call, reason):
    parsed = parse_call(np.array(call), VOCAB, SPEC.key_length)
    assert not parsed.valid and parsed.reason == reason
    assert parsed.key is None and parsed.attribute is None


def test_valid_call_round_trips():
    call = call_tokens(WORLD, np.array([7]), np.array([1]))[0, 1:-1]
    parsed = parse_call(call, VOCAB, SPEC.key_length)
    assert parsed.valid and parsed.reason == "ok" and parsed.attribute == 1
    np.testing.assert_array_equal(parsed.key, WORLD.keys[7])


TOKENS = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.integers(0, VOCAB.size + 2), st.integers(-10, 10)
)
NEAR_VALID = hnp.arrays(
    np.int64, SPEC.key_length + 1, elements=st.integers(VOCAB.attr_offset, VOCAB.value_offset)
)
CALLS = (
    hnp.arrays(hnp.integer_dtypes() | hnp.unsigned_integer_dtypes(), st.integers(0, 8))
    | hnp.arrays(np.int64, st.integers(0, 8), elements=TOKENS)
    | NEAR_VALID
)


@settings(max_examples=150, deadline=None)
@given(st.lists(CALLS, max_size=6))
def test_any_calls_are_recorded_outcomes(calls):
    parsed, tokens, result = serve_calls(MEMORY_STORE, calls, VOCAB, SPEC.key_length)
    assert len(parsed) == len(calls) == len(tokens) == len(result.status)
    lengths = result_lengths(tokens)
    for p, row, status, length in zip(parsed, tokens, result.status, lengths, strict=True):
        assert isinstance(p.reason, str) and p.valid == (p.reason == "ok")
        assert row[0] == RESULT and row[length - 1] == RESULT_END and (row[length:] == PAD).all()
        if not p.valid:
            assert status == INVALID_STATUS and row[1] == NOT_FOUND
        elif status == OK:
            assert length == SPEC.value_length + 2


def test_memory_store_edge_sizes_and_types():
    """An empty store and a one-fact store answer every row NOT_FOUND (or the fact) with
    the documented shapes and dtypes; a key symbol past 255 never aliases a stored key
    (256 at one position is 1 at the one before it, once packed into an integer)."""
    empty = MemoryStore(np.zeros((0, 4), int), np.zeros(0, int), np.zeros((0, 2), int))
    result = empty.lookup(np.array([[1, 2, 3, 4], [0, 0, 0, 0]]), np.array([0, 1]))
    assert result.values.shape == (2, 2) and result.values.dtype == np.uint8
    assert result.status.dtype == np.int8 and (result.status == NOT_FOUND_STATUS).all()
    one = MemoryStore(np.array([[1, 0, 0, 0]]), np.array([0]), np.array([[7, 9]]))
    keys = np.array([[1, 0, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0], [0, 256, 0, 0], [1, 0, 0, 0]])
    t0 = time.perf_counter()
    result = one.lookup(keys, np.array([0, 0, 0, 0, 1]))
    elapsed = time.perf_counter() - t0
    np.testing.assert_array_equal(result.status, [OK] + [NOT_FOUND_STATUS] * 4)
    np.testing.assert_array_equal(result.values, [[7, 9]] + [[0, 0]] * 4)
    assert result.values.dtype == np.uint8 and result.status.dtype == np.int8
    assert 0.0 <= result.seconds <= elapsed


def test_serve_calls_types_timing_and_a_large_vocabulary():
    """Token ids past 255 (a 200-symbol key alphabet) are written without uint8 overflow;
    status and values keep their dtypes; a batch with no valid call spends no lookup time."""
    vocab = Vocab(n_attributes=2, key_alphabet=200, value_alphabet=64)
    keys = np.array([[199, 3, 150, 0], [5, 6, 7, 8]])
    store = MemoryStore(keys, np.array([1, 0]), np.array([[63, 62], [0, 1]]))
    calls = [
        np.append(k + vocab.key_offset, vocab.attr_offset + a)
        for k, a in zip(keys, [1, 0], strict=True)
    ]
    parsed, tokens, result = serve_calls(store, [*calls, np.array([CALL])], vocab, 4)
    assert [p.valid for p in parsed] == [True, True, False]
    np.testing.assert_array_equal(
        tokens[0, 1:3], [vocab.value_offset + 63, vocab.value_offset + 62]
    )
    np.testing.assert_array_equal(tokens[1, 1:3], [vocab.value_offset, vocab.value_offset + 1])
    assert vocab.value_offset + 63 > 255 and tokens.dtype == np.int32
    assert result.status.dtype == np.int8 and result.values.dtype == np.uint8
    np.testing.assert_array_equal(result.values, [[63, 62], [0, 1], [0, 0]])
    _, _, none = serve_calls(store, [np.array([CALL])], vocab, 4)
    assert none.seconds == 0.0 and none.status.tolist() == [INVALID_STATUS]
