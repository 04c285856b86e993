"""ROME and MEMIT applied to a base model (docs/edits.md): closed-form edits of MLP output
projections (edit_weights.py), timed after a warm-up call that compiles them, with their
matmul FLOPs. They train nothing, so they are not cells of the engine; edits.py records them
as it records every method."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from recall_bench import edit, formats
from recall_bench.edit_weights import (
    WeightEditConfig,
    check_editable,
    edit_layers,
    key_moments,
    memit_edit,
    replace_kernels,
    rome_edits,
)
from recall_bench.model import ModelConfig


def padded(seqs: formats.Sequences, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [size, L], valid [size]): rows past the real ones repeat row 0 and are invalid."""
    n = len(seqs.tokens)
    rows = np.concatenate([np.arange(n), np.zeros(size - n, np.int64)])
    return seqs.tokens[rows], (np.arange(size) < n).astype(np.float32)


def located_edit(
    wcfg: WeightEditConfig,
    chunk: int,
    base: tuple,
    mcfg: ModelConfig,
    edits: edit.EditSet,
    method: str,
) -> tuple[Any, dict, dict]:
    """(params, cost, info) of ROME (sequential rank-one edits, `chunk` facts per compiled
    call) or MEMIT (one batched least-squares edit) of base = (graphdef, params, world), timed
    after a warm-up call that compiles it; the key moments come from every prompt of the base
    world (key-first)."""
    graphdef, base_params, world = base
    check_editable(graphdef, base_params, wcfg)
    seqs = edit.edit_sequences(world, edits)
    p, v = seqs.prompt_length, world.spec.value_length
    # every fact's prompt and all but its last value token: keys at each value position
    prompts = formats.render_in_weight(world).tokens[:, : p + v - 1]
    rome_layer, layers = edit_layers(graphdef, base_params, wcfg)
    if method == "rome":
        layers = (rome_layer,)
    key_moments(graphdef, base_params, prompts, layers, v)  # compile
    t0 = time.perf_counter()
    moments = jax.block_until_ready(key_moments(graphdef, base_params, prompts, layers, v))
    moments_s = time.perf_counter() - t0
    if method == "rome":
        size = chunk
        tokens, valid = padded(seqs, -(-edits.k // size) * size)
        run = rome_call(graphdef, base_params, wcfg, p, v, rome_layer, moments[0], size)
    else:
        size = max(16, 1 << (edits.k - 1).bit_length())
        tokens, valid = padded(seqs, size)
        run = memit_call(graphdef, base_params, wcfg, p, v, layers, moments)
    jax.block_until_ready(jax.tree.leaves(run(tokens[:size], valid[:size] * 0)))  # compile
    t0 = time.perf_counter()
    params = run(tokens, valid)
    jax.block_until_ready(jax.tree.leaves(params))
    wall = time.perf_counter() - t0 + moments_s
    flops = located_flops(mcfg, edits.k, wcfg, layers, len(prompts), seqs.tokens.shape[1])
    cost = {"wall_s": wall, "flops": flops, "moments_s": moments_s}
    return params, cost, {"layers": list(layers)}


def rome_call(graphdef, base_params, wcfg: WeightEditConfig, p, v, layer: int, moment, size: int):
    """tokens, valid -> params after ROME on every row, `size` rows per compiled call."""

    def run(tokens, valid):
        params = base_params
        for i in range(0, len(tokens), size):
            w = rome_edits(
                graphdef, params, tokens[i : i + size], valid[i : i + size], p, v, wcfg,
                layer, moment,
            )  # fmt: skip
            params = replace_kernels(params, {layer: w})
        return params

    return run


def memit_call(graphdef, base_params, wcfg: WeightEditConfig, p: int, v: int, layers, moments):
    """tokens, valid -> params after one MEMIT edit of every valid row."""

    def run(tokens, valid):
        kernels = memit_edit(graphdef, base_params, tokens, valid, p, v, wcfg, layers, moments)
        return replace_kernels(base_params, kernels)

    return run


def located_flops(mcfg: ModelConfig, k: int, wcfg, layers, n_prompts: int, length: int) -> int:
    """Matmul FLOPs of ROME / MEMIT: key moments over n_prompts prompts (once), value_steps
    gradient steps per fact (3 forward passes each), keys and the solves per layer."""
    hidden, width = mcfg.mlp_ratio * mcfg.width, mcfg.width
    prompt = edit.sequence_flops(mcfg, length - 2)
    moments = n_prompts * (prompt + 2 * hidden * hidden * len(layers))
    values = k * wcfg.value_steps * 3 * edit.sequence_flops(mcfg, length - 2)
    solves = len(layers) * (2 * hidden**3 + k * (prompt + 2 * hidden * hidden + 2 * hidden * width))
    return int(moments + values + solves)
