"""Batched greedy decoding with the tool in the loop (docs/design.md §5).

Each row decodes freely with a key/value cache inside one compiled while-loop. The loop
returns to Python only when every still-running row has either finished or closed a call
(written CALL_END); the harness then parses all those calls, answers the valid ones with
one batched store lookup, writes `RESULT ... RESULT_END` into the rows, and resumes. A
malformed call, an unknown key or a store failure is written back as a token and recorded.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recall_bench.formats import CALL, CALL_END, EOS, ERROR, PAD, RESULT, RESULT_END, Vocab
from recall_bench.tool import INVALID_STATUS, LookupResult, Store, result_lengths, serve_calls

MAX_CALLS = 4  # calls a row may make; later ones are answered ERROR without a lookup


@dataclasses.dataclass(frozen=True)
class Decoded:
    """Per row: tokens [B, T] (prompt + everything decoded or inserted), and a trace of the
    first call: call_tokens [B, C] (between CALL and CALL_END, PAD-filled), call_made,
    call_valid, call_key [B, key_length] (-1 if invalid), call_attribute (-1 if invalid),
    store_status [B] (tool.OK / NOT_FOUND_STATUS / ERROR_STATUS / INVALID_STATUS, -1 when no
    call), store_value [B, value_length]; answer [B, T] tokens after the last RESULT_END
    (or after the prompt) up to EOS, PAD-filled; answer_length [B]."""

    tokens: np.ndarray
    call_tokens: np.ndarray
    call_made: np.ndarray
    call_valid: np.ndarray
    call_key: np.ndarray
    call_attribute: np.ndarray
    store_status: np.ndarray
    store_value: np.ndarray
    answer: np.ndarray
    answer_length: np.ndarray
    store_errors: list[str]
    lookup_s: float


@functools.partial(jax.jit, static_argnums=0, donate_argnums=(2, 3, 4, 5, 6, 7))
def _advance(graphdef, params, buffer, pos, filled, cache, done, pending):
    """Decode until no row can move without the harness (finished or waiting on a call).

    pos: next position each row feeds to the model; filled: tokens known in the row. A row
    with pos + 1 < filled is reading given tokens (prompt or tool result) into its cache;
    with pos + 1 == filled it writes its greedy choice at `filled`.
    """
    model = nnx.merge(graphdef, params)
    rows = jnp.arange(buffer.shape[0])
    t_max = buffer.shape[1]

    def cond(state):
        _, _, _, _, done, pending = state
        return jnp.any(~done & ~pending)

    def body(state):
        buffer, pos, filled, cache, done, pending = state
        logits, cache = model.decode_step(buffer[rows, pos], pos, cache)
        choice = jnp.argmax(logits, axis=-1).astype(buffer.dtype)
        moving = ~done & ~pending
        writes = moving & (pos + 1 == filled)
        slot = jnp.minimum(filled, t_max - 1)
        buffer = buffer.at[rows, slot].set(jnp.where(writes, choice, buffer[rows, slot]))
        filled = filled + writes
        pos = pos + moving
        done = done | (writes & ((choice == EOS) | (filled >= t_max)))
        pending = pending | (writes & (choice == CALL_END) & ~done)
        return buffer, pos, filled, cache, done, pending

    return jax.lax.while_loop(cond, body, (buffer, pos, filled, cache, done, pending))


def greedy_decode(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompts: np.ndarray,
    vocab: Vocab,
    key_length: int,
    value_length: int,
    store: Store | None,
    batch: int = 8192,
) -> Decoded:
    """Greedy-decode every prompt [N, P] with `store` answering calls (None: no tool; a call
    is answered ERROR). Rows are decoded `batch` at a time."""
    parts = [
        _decode_block(
            graphdef, params, prompts[i : i + batch], vocab, key_length, value_length, store
        )
        for i in range(0, len(prompts), batch)
    ]
    fields = {
        f.name: np.concatenate([getattr(p, f.name) for p in parts])
        for f in dataclasses.fields(Decoded)
        if f.name not in ("store_errors", "lookup_s")
    }
    return Decoded(
        **fields,
        store_errors=[e for p in parts for e in p.store_errors],
        lookup_s=sum(p.lookup_s for p in parts),
    )


def _decode_block(graphdef, params, prompts, vocab, key_length, value_length, store) -> Decoded:
    model = nnx.merge(graphdef, params)
    n, p = prompts.shape
    t_max = model.pos_embed.num_embeddings
    buffer = np.full((n, t_max), PAD, np.int32)
    buffer[:, :p] = prompts
    state = (
        jnp.asarray(buffer),
        jnp.zeros(n, jnp.int32),
        jnp.full(n, p, jnp.int32),
        model.empty_cache(n),
        jnp.zeros(n, bool),
        jnp.zeros(n, bool),
    )
    trace = {
        "call_tokens": np.full((n, t_max), PAD, np.int32),
        "call_made": np.zeros(n, bool),
        "call_valid": np.zeros(n, bool),
        "call_key": np.full((n, key_length), -1, np.int32),
        "call_attribute": np.full(n, -1, np.int32),
        "store_status": np.full(n, -1, np.int8),
        "store_value": np.zeros((n, value_length), np.int32),
    }
    calls_made = np.zeros(n, np.int32)
    errors: list[str] = []
    lookup_s = 0.0
    while True:
        state = _advance(graphdef, params, *state)
        buffer_d, pos, filled_d, cache, done, pending_d = state
        pending = np.flatnonzero(np.asarray(pending_d))
        if len(pending) == 0:
            break
        buffer, filled = np.array(buffer_d), np.array(filled_d)
        calls = [_call_span(buffer[r, : filled[r]]) for r in pending]
        parsed, tokens, found = _serve(store, calls, vocab, key_length, value_length)
        errors += found.errors
        lookup_s += found.seconds
        lengths = result_lengths(tokens)
        for j, r in enumerate(pending):
            calls_made[r] += 1
            if calls_made[r] == 1:
                _trace_first_call(trace, r, calls[j], found, j, parsed)
            write = tokens[j, : lengths[j]]
            if calls_made[r] > MAX_CALLS:
                write = np.array([RESULT, ERROR, RESULT_END], np.int32)
            write = write[: t_max - filled[r]]
            buffer[r, filled[r] : filled[r] + len(write)] = write
            filled[r] += len(write)
        done = np.asarray(done) | (filled >= t_max)
        state = (
            jnp.asarray(buffer),
            pos,
            jnp.asarray(filled),
            cache,
            jnp.asarray(done),
            jnp.zeros(n, bool),
        )
    buffer = np.asarray(state[0])
    answer, answer_length = _answers(buffer, p)
    return Decoded(
        tokens=buffer,
        answer=answer,
        answer_length=answer_length,
        store_errors=errors,
        lookup_s=lookup_s,
        **trace,
    )


def _serve(store, calls, vocab, key_length, value_length) -> tuple:
    """(parsed calls or None, result tokens, lookup result) for the calls of the waiting rows;
    with no store, every call is answered ERROR and marked INVALID_STATUS, without a lookup."""
    if store is not None:
        return serve_calls(store, calls, vocab, key_length)
    tokens = np.tile(np.array([RESULT, ERROR, RESULT_END], np.int32), (len(calls), 1))
    values = np.zeros((len(calls), value_length), np.int32)
    return None, tokens, LookupResult(values, np.full(len(calls), INVALID_STATUS, np.int8), [], 0.0)


def _trace_first_call(trace: dict, r: int, call, found: LookupResult, j: int, parsed) -> None:
    """Record row r's first call (the j-th of this batch) and the store's answer to it."""
    trace["call_made"][r] = True
    trace["call_tokens"][r, : len(call)] = call
    trace["store_status"][r] = found.status[j]
    trace["store_value"][r] = found.values[j]
    if parsed is not None and parsed[j].valid:
        trace["call_valid"][r] = True
        trace["call_key"][r] = parsed[j].key
        trace["call_attribute"][r] = parsed[j].attribute


def _call_span(row: np.ndarray) -> np.ndarray:
    """Tokens between the last CALL and the final CALL_END of a row (empty if no CALL)."""
    opens = np.flatnonzero(row[:-1] == CALL)
    return row[opens[-1] + 1 : -1] if len(opens) else row[:0]


def _answers(buffer: np.ndarray, prompt_length: int) -> tuple[np.ndarray, np.ndarray]:
    """The answer of each row: tokens after the last RESULT_END (or the prompt) up to EOS."""
    n, t = buffer.shape
    answer = np.full((n, t), PAD, np.int32)
    length = np.zeros(n, np.int32)
    for r in range(n):
        row = buffer[r]
        ends = np.flatnonzero(row == RESULT_END)
        start = ends[-1] + 1 if len(ends) else prompt_length
        eos = np.flatnonzero(row[start:] == EOS)
        stop = start + eos[0] if len(eos) else t
        length[r] = stop - start if len(eos) else -1
        answer[r, : stop - start] = row[start:stop]
    return answer, length
