"""Recall, bits memorized, and distribution divergences.

Bits memorized (docs/design.md §3): for each fact,
    max(0, H(fact) - NLL_2(value tokens | prompt)),
with the NLL summed over the value tokens in float32 and clipped per fact, never per token.
Capacity = max over fact counts of bits memorized; bits/param = capacity / parameters.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recall_bench.model import apply

LN2 = math.log(2.0)


def bits_memorized(value_nll_bits: np.ndarray, fact_bits: np.ndarray) -> float:
    """Sum over facts of max(0, H - NLL), both in bits; a fact the model knows less than
    nothing about counts 0, not a negative number."""
    gain = np.asarray(fact_bits, np.float64) - np.asarray(value_nll_bits, np.float64)
    return float(np.maximum(gain, 0.0).sum())


@functools.partial(jax.jit, static_argnums=0)
def _sequence_stats(graphdef, params, tokens, loss_mask, value_mask):
    """Teacher-forced per-sequence stats of one model on a [M, L] block of sequences."""
    return stats_from_logits(apply(graphdef, params, tokens[:, :-1]), tokens, loss_mask, value_mask)


def stats_from_logits(logits, tokens, loss_mask, value_mask) -> dict[str, jax.Array]:
    """Per-sequence stats from next-token logits [M, L-1, V] of sequences tokens [M, L]."""
    targets = tokens[:, 1:]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    correct = jnp.argmax(logits, axis=-1) == targets
    loss_mask, value_mask = loss_mask[:, 1:], value_mask[:, 1:]
    return {
        "exact": jnp.all(correct | (loss_mask == 0), axis=1),
        "value_correct": jnp.sum(correct * value_mask, axis=1),
        "value_nll_bits": jnp.sum(nll * value_mask, axis=1, dtype=jnp.float32) / LN2,
        "loss_sum": jnp.sum(nll * loss_mask, axis=1),
    }


LOGITS_PER_BLOCK = 1 << 25  # logits computed at once (128 MiB in float32)


_ROW_LOGITS: dict = {}  # (graphdef, parameter shapes, sequence length) -> logits per row


def rows_per_block(graphdef: nnx.GraphDef, params: nnx.State, tokens: np.ndarray) -> int:
    """Rows whose logits fit LOGITS_PER_BLOCK (at most 4096): 4,096 sequences of 64 tokens
    over 2,048 symbols would be 2 GiB of logits at once. The model is traced once per shape."""
    shapes = tuple((x.shape, x.dtype) for x in jax.tree.leaves(params))
    key = (graphdef, shapes, tokens.shape[1])
    if key not in _ROW_LOGITS:
        row = jax.eval_shape(lambda p, t: apply(graphdef, p, t), params, tokens[:1, :-1])
        _ROW_LOGITS[key] = math.prod(row.shape)
    return int(np.clip(LOGITS_PER_BLOCK // _ROW_LOGITS[key], 1, 4096))


def sequence_stats(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tokens: np.ndarray,
    loss_mask: np.ndarray,
    value_mask: np.ndarray,
    block: int | None = None,
) -> dict[str, np.ndarray]:
    """Teacher-forced stats of every sequence, in blocks of `block` rows (default: as many as
    keep the logits under LOGITS_PER_BLOCK).

    exact: every loss-masked target is the argmax (equivalent to greedy decoding reproducing
    the answer, by induction over positions); value_correct: value tokens right;
    value_nll_bits: NLL of the value tokens in bits; loss_sum: NLL over all loss tokens.
    """
    block = block or rows_per_block(graphdef, params, tokens)
    parts = []
    for start in range(0, len(tokens), block):
        sl = slice(start, start + block)
        n = len(tokens[sl])
        pad = (-n) % min(block, len(tokens))  # keep one compiled shape for the last block
        args = [np.pad(a[sl], ((0, pad), (0, 0))) for a in (tokens, loss_mask, value_mask)]
        out = _sequence_stats(graphdef, params, *args)
        parts.append({k: np.asarray(v)[:n] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


ENSEMBLE_BLOCK = 512  # rows scored at once per model of an ensemble


@functools.partial(jax.jit, static_argnums=0)
def _ensemble_stats(graphdef, params, tokens, loss_mask, value_mask):
    """Teacher-forced stats of K stacked models, each on its own [M, L] rows."""

    def one(p, t, lm, vm):
        return stats_from_logits(apply(graphdef, p, t[:, :-1]), t, lm, vm)

    return jax.vmap(one)(params, tokens, loss_mask, value_mask)


def ensemble_stats(graphdef, params, seqs: list) -> list[dict[str, np.ndarray]]:
    """Per model k, sequence_stats of the sequences seqs[k] (formats.Sequences, one length)
    under model k of stacked params, in blocks of ENSEMBLE_BLOCK rows (the last one padded:
    one compiled shape whatever their number)."""
    arrays = [
        np.stack([getattr(q, f) for q in seqs]) for f in ("tokens", "loss_mask", "value_mask")
    ]
    n, parts = arrays[0].shape[1], []
    for start in range(0, n, ENSEMBLE_BLOCK):
        block = [a[:, start : start + ENSEMBLE_BLOCK] for a in arrays]
        pad = ((0, 0), (0, ENSEMBLE_BLOCK - block[0].shape[1]), (0, 0))
        out = _ensemble_stats(graphdef, params, *(np.pad(a, pad) for a in block))
        parts.append({k: np.asarray(v)[:, : n - start] for k, v in out.items()})
    return [
        {k: np.concatenate([p[k][m] for p in parts]) for k in parts[0]} for m in range(len(seqs))
    ]


@jax.jit
def relative_change(params, base) -> jax.Array:
    """[K] ||theta_k - base_k|| / ||base_k|| of stacked models (all parameters as one vector)."""

    def total(tree) -> jax.Array:
        return sum(jnp.sum(jnp.square(x).reshape(len(x), -1), 1) for x in jax.tree.leaves(tree))

    return jnp.sqrt(total(jax.tree.map(jnp.subtract, params, base)) / total(base))


def summarize_in_weight(
    stats: dict[str, np.ndarray],
    value_mask: np.ndarray,
    fact_bits: np.ndarray,
    params_total: int,
    params_non_embedding: int,
) -> dict[str, float]:
    """Recall, token accuracy, bits memorized and bits/param from sequence_stats."""
    bits = bits_memorized(stats["value_nll_bits"], fact_bits)
    return {
        "recall": float(np.mean(stats["exact"])),
        "token_accuracy": float(stats["value_correct"].sum() / value_mask.sum()),
        "bits_memorized": bits,
        "bits_per_param": bits / params_total,
        "bits_per_param_non_embedding": bits / params_non_embedding,
        "value_nll_bits": float(np.mean(stats["value_nll_bits"])),
    }


def noise_floor(
    held_out_nll_bits: np.ndarray, held_out_bits: np.ndarray, bits: float, n_facts: int
) -> dict[str, float]:
    """Bits "memorized" of facts the model never trained on (same clipping) are noise: their
    mean per fact is the floor, and n_facts times it is taken off the bits held."""
    floor = bits_memorized(held_out_nll_bits, held_out_bits) / len(held_out_bits)
    return {
        "noise_floor_bits_per_fact": floor,
        "bits_memorized_corrected": max(0.0, bits - floor * n_facts),
    }


def kl_tv(base_logits: jax.Array, new_logits: jax.Array, mask: jax.Array) -> tuple[float, float]:
    """Mean per-token KL(base || new) in nats and total-variation distance over masked
    positions of two models' next-token distributions."""
    p_log = jax.nn.log_softmax(base_logits.astype(jnp.float32), axis=-1)
    q_log = jax.nn.log_softmax(new_logits.astype(jnp.float32), axis=-1)
    p = jnp.exp(p_log)
    kl = jnp.sum(p * (p_log - q_log), axis=-1)
    tv = 0.5 * jnp.sum(jnp.abs(p - jnp.exp(q_log)), axis=-1)
    denom = jnp.maximum(mask.sum(), 1)
    return float((kl * mask).sum() / denom), float((tv * mask).sum() / denom)
