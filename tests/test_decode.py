"""The tool loop, driven by a scripted stand-in for the model: each row writes a fixed program
of tokens (constants, or copies of earlier positions), so every call, store answer and final
answer the harness produces is known exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recall_bench import formats
from recall_bench.decode import MAX_CALLS, greedy_decode
from recall_bench.formats import CALL, CALL_END, EOS, ERROR, NOT_FOUND, PAD, RESULT, RESULT_END
from recall_bench.stores import NOT_FOUND_STATUS
from recall_bench.tool import (
    ERROR_STATUS,
    INVALID_STATUS,
    OK,
    LookupResult,
    MemoryStore,
    build_store,
)
from recall_bench.worlds import FactSpec, make_fact_world

SPEC = FactSpec(n_entities=6, attribute_sizes=(4096, 1000))
WORLD = make_fact_world(SPEC)
VOCAB = formats.Vocab.of(SPEC)
ENTITY, ATTRIBUTE = formats.fact_index(SPEC)
PROMPTS = formats.prompt_tokens(WORLD, ENTITY, ATTRIBUTE)  # BOS k k k k ATTR: positions 0-5
T = formats.max_length(SPEC)  # 20


def copy(position: int) -> int:
    """A program step that writes the token at an earlier position of the row."""
    return -position - 1


class Scripted(nnx.Module):
    """Fed the token at position t, predicts program[row, t]: a token (>= 0) or a copy."""

    def __init__(self, program: np.ndarray):
        self.program = nnx.Variable(jnp.asarray(program, jnp.int32))
        self.pos_embed = nnx.Embed(program.shape[1], 1, rngs=nnx.Rngs(0))
        self.vocab_size = VOCAB.size

    def empty_cache(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.pos_embed.num_embeddings), jnp.int32)

    def decode_step(self, tokens, pos, cache):
        rows = jnp.arange(tokens.shape[0])
        cache = cache.at[rows, pos].set(tokens)
        step = self.program[...][rows, pos]
        choice = jnp.where(step >= 0, step, cache[rows, jnp.maximum(-step - 1, 0)])
        return jax.nn.one_hot(choice, self.vocab_size), cache


def program(steps: dict[int, int], n: int = len(PROMPTS), length: int = T) -> np.ndarray:
    """Programs for n rows writing steps[t] at position t (fed position t - 1); PAD elsewhere."""
    out = np.full((n, length), PAD, np.int64)
    for t, token in steps.items():
        out[:, t - 1] = token
    return out


# CALL k k k k ATTR CALL_END at 6-12, the store's RESULT v v RESULT_END at 13-16, then the
# model copies the two value tokens (14, 15) and ends: the in-tool training rendering.
TOOL_USER = {6: CALL, **{7 + i: copy(1 + i) for i in range(5)}, 12: CALL_END}
TOOL_USER |= {17: copy(14), 18: copy(15), 19: EOS, 16: EOS}  # 16: after a 3-token result


DTYPES = {"tokens": "int32", "call_tokens": "int32", "call_made": "bool", "call_valid": "bool"}
DTYPES |= {"call_key": "int32", "call_attribute": "int32", "store_status": "int8"}
DTYPES |= {"store_value": "int32", "answer": "int32", "answer_length": "int32"}


class FailingStore:
    """A store whose every lookup fails, taking a reported 0.25 s."""

    kind, key_length, value_length = "failing", SPEC.key_length, 2

    def __len__(self) -> int:
        return 0

    def lookup(self, keys: np.ndarray, attributes: np.ndarray) -> LookupResult:
        n = len(keys)
        status = np.full(n, ERROR_STATUS, np.int8)
        return LookupResult(np.zeros((n, 2), np.uint8), status, ["disk gone"], 0.25)

    def close(self) -> None:
        pass


def decode(steps_or_program, store, prompts=PROMPTS, **kw):
    prog = steps_or_program
    if isinstance(prog, dict):
        prog = program(prog, len(prompts))
    graphdef, params = nnx.split(Scripted(prog))
    return greedy_decode(graphdef, params, prompts, VOCAB, SPEC.key_length, 2, store, **kw)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_well_formed_call_is_served_and_copied(kind, tmp_path):
    store = build_store(WORLD, kind, tmp_path / "facts.sqlite")
    out = decode(TOOL_USER, store)
    store.close()
    np.testing.assert_array_equal(out.tokens, formats.render_in_tool(WORLD).tokens)
    assert out.call_made.all() and out.call_valid.all()
    np.testing.assert_array_equal(out.call_key, WORLD.keys[ENTITY])
    np.testing.assert_array_equal(out.call_attribute, ATTRIBUTE)
    assert (out.store_status == OK).all() and out.store_errors == []
    np.testing.assert_array_equal(out.store_value, WORLD.value_tokens()[ENTITY, ATTRIBUTE])
    calls = formats.call_tokens(WORLD, ENTITY, ATTRIBUTE)[:, 1:-1]
    np.testing.assert_array_equal(out.call_tokens[:, :5], calls)
    assert (out.call_tokens[:, 5:] == PAD).all()
    np.testing.assert_array_equal(
        out.answer[:, :2], formats.answer_tokens(WORLD, ENTITY, ATTRIBUTE)
    )
    assert (out.answer[:, 2:] == PAD).all() and (out.answer_length == 2).all()
    assert out.lookup_s >= 0.0
    assert {name: str(getattr(out, name).dtype) for name in DTYPES} == DTYPES


def test_answers_come_from_the_store_and_batches_agree():
    keys, attributes = WORLD.keys[ENTITY], ATTRIBUTE
    changed = (WORLD.value_tokens()[ENTITY, ATTRIBUTE] + 7) % 64
    out = decode(TOOL_USER, MemoryStore(keys, attributes, changed))
    np.testing.assert_array_equal(out.answer[:, :2], changed + VOCAB.value_offset)
    np.testing.assert_array_equal(out.store_value, changed)
    small = decode(TOOL_USER, MemoryStore(keys, attributes, changed), batch=5)  # 5 + 7 rows
    for name in ("tokens", "call_key", "store_status", "answer", "answer_length"):
        np.testing.assert_array_equal(getattr(small, name), getattr(out, name), err_msg=name)


def test_unknown_key_is_not_found_and_the_model_goes_on():
    symbol = min(set(range(64)) - set(WORLD.keys[:, 0]))  # no key of the world starts with it
    wrong_key = {**TOOL_USER, 7: VOCAB.key_offset + symbol}
    keys = WORLD.keys[ENTITY].copy()
    keys[:, 0] = symbol
    out = decode(wrong_key, build_store(WORLD))
    assert out.call_made.all() and out.call_valid.all()
    np.testing.assert_array_equal(out.call_key, keys)
    assert (out.store_status == NOT_FOUND_STATUS).all()
    assert (out.tokens[:, 13:17] == [RESULT, NOT_FOUND, RESULT_END, EOS]).all()
    assert (out.answer_length == 0).all() and (out.answer == PAD).all()


def test_malformed_and_missing_calls():
    """Row 0 writes an empty call, row 1 none (it answers with key symbols), row 2 a call
    holding a stray CALL (the span starts after the last one), row 3 never ends."""
    length = 24
    stray = {6: CALL, 7: copy(1), 8: CALL, **{9 + i: copy(1 + i) for i in range(5)}, 14: CALL_END}
    rows = [
        program({6: CALL, 7: CALL_END, 11: EOS}, 1, length),
        program({6: copy(1), 7: copy(2), 8: EOS}, 1, length),
        program({**stray, 19: copy(16), 20: copy(17), 21: EOS}, 1, length),
        program({t: copy(1) for t in range(6, length)}, 1, length),
    ]
    out = decode(np.concatenate(rows), build_store(WORLD), PROMPTS[:4])
    np.testing.assert_array_equal(out.call_made, [True, False, True, False])
    np.testing.assert_array_equal(out.call_valid, [False, False, True, False])
    np.testing.assert_array_equal(out.store_status, [INVALID_STATUS, -1, OK, -1])
    assert (out.call_key[[0, 1, 3]] == -1).all() and (out.call_attribute[[0, 1, 3]] == -1).all()
    np.testing.assert_array_equal(out.call_key[2], WORLD.keys[ENTITY[2]])
    np.testing.assert_array_equal(
        out.tokens[0, 6:12], [CALL, CALL_END, RESULT, NOT_FOUND, RESULT_END, EOS]
    )
    assert (out.call_tokens[0] == PAD).all() and out.answer_length[0] == 0
    np.testing.assert_array_equal(out.answer[1, :2], PROMPTS[1, 1:3])
    assert out.answer_length[1] == 2 and (out.tokens[1, 9:] == PAD).all()
    value = formats.answer_tokens(WORLD, ENTITY[2:3], ATTRIBUTE[2:3])[0]
    np.testing.assert_array_equal(out.answer[2, :2], value)
    assert out.answer_length[2] == 2
    assert out.answer_length[3] == -1 and (out.tokens[3, 6:] == PROMPTS[3, 1]).all()


def test_calls_past_the_limit_are_answered_error_and_rows_stop_at_the_end():
    """A row that keeps writing empty calls: call i fills positions 6 + 5i .. 10 + 5i."""
    length = 40
    steps = {6 + 5 * i: CALL for i in range(7)} | {7 + 5 * i: CALL_END for i in range(7)}
    out = decode(program(steps, 2, length), build_store(WORLD), PROMPTS[:2])
    for i in range(6):
        word = NOT_FOUND if i < MAX_CALLS else ERROR  # empty calls are invalid: NOT_FOUND
        expected = [CALL, CALL_END, RESULT, word, RESULT_END]
        np.testing.assert_array_equal(out.tokens[:, 6 + 5 * i : 11 + 5 * i], [expected] * 2)
    assert (out.tokens[:, 36:] == [CALL, CALL_END, RESULT, ERROR]).all()  # cut at the end
    assert (out.answer_length == -1).all() and (out.store_status == INVALID_STATUS).all()


def test_without_a_store_every_call_is_answered_error():
    out = decode(TOOL_USER, None)
    assert out.call_made.all() and not out.call_valid.any()
    assert (out.store_status == INVALID_STATUS).all()
    assert (out.tokens[:, 13:17] == [RESULT, ERROR, RESULT_END, EOS]).all()
    assert (out.answer_length == 0).all() and out.lookup_s == 0.0


def test_call_spans_at_the_edges_and_a_finished_row_stays_finished():
    """Row 0 closes a call it never opened, row 1 opens a stray CALL before an empty call
    (its span is empty, not what follows the stray), row 2 ends before the others call and
    scripts a call after its EOS that must never be written."""
    rows = [
        program({6: CALL_END, 10: EOS}, 1),
        program({6: CALL, 7: copy(1), 8: CALL, 9: CALL_END, 13: EOS}, 1),
        program({6: copy(1), 7: EOS, 8: CALL, 9: CALL_END}, 1),
    ]
    out = decode(np.concatenate(rows), build_store(WORLD), PROMPTS[:3])
    np.testing.assert_array_equal(out.call_made, [True, True, False])
    assert not out.call_valid.any() and (out.call_tokens == PAD).all()
    np.testing.assert_array_equal(out.store_status, [INVALID_STATUS, INVALID_STATUS, -1])
    np.testing.assert_array_equal(
        out.tokens[0, 6:11], [CALL_END, RESULT, NOT_FOUND, RESULT_END, EOS]
    )
    np.testing.assert_array_equal(
        out.tokens[1, 9:14], [CALL_END, RESULT, NOT_FOUND, RESULT_END, EOS]
    )
    assert (out.tokens[2, 8:] == PAD).all() and out.answer[2, 0] == PROMPTS[2, 1]
    np.testing.assert_array_equal(out.answer_length, [0, 0, 1])


def test_store_failures_and_lookup_time_add_up_over_calls_and_batches():
    """Two rows, one per batch, each calling twice a store that fails: four lookups."""
    call = {6: CALL, **{7 + i: copy(1 + i) for i in range(5)}, 12: CALL_END}
    again = {t + 10: step for t, step in call.items()}  # after RESULT ERROR RESULT_END
    out = decode(program(call | again | {26: EOS}, 2, 28), FailingStore(), PROMPTS[:2], batch=1)
    assert out.store_errors == ["disk gone"] * 4 and out.lookup_s == 1.0
    assert out.call_valid.all() and (out.store_status == ERROR_STATUS).all()
    for start in (13, 23):
        assert (out.tokens[:, start : start + 3] == [RESULT, ERROR, RESULT_END]).all()
    assert (out.answer_length == 0).all()
