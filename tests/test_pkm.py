"""Product-key memory: the lookup is the exact top-k over all K product keys, gradients
reach only the rows read, a GPT with a memory layer decodes as it runs in full, and a memory
added to a trained model starts as a no-op and trains alone."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from recall_bench.experiments.run import RunConfig, run
from recall_bench.leaderboard import entry_from_record
from recall_bench.model import ModelConfig, add_side_memory, apply, count_params, init_model
from recall_bench.pkm import ProductKeyMemory
from recall_bench.train import TrainConfig, make_optimizer

# (width, size, topk, heads, key_dim, input shape): topk from 1 to sqrt(size), 1-3 heads
SHAPES = [(4, 16, 4, 1, 2, (5,)), (6, 49, 3, 3, 4, (2, 3)), (8, 64, 1, 2, 8, (4,))]


@functools.cache
def checker(shape: tuple) -> tuple[nnx.State, Callable]:
    """A layer's state for one shape, and a compiled (state, input, probe) -> (layer output,
    brute-force output, rows read by the layer, by brute force, value-table rows with a
    nonzero gradient of sum(output * probe))."""
    width, size, topk, heads, key_dim, _ = shape
    graphdef, state = nnx.split(
        ProductKeyMemory(width, size, topk, heads, key_dim, jnp.float32, nnx.Rngs(0))
    )

    def check(state, x, probe):
        memory = nnx.merge(graphdef, state)
        expected, rows = brute_force(memory, x)

        def loss(state):
            return jnp.sum(nnx.merge(graphdef, state)(x) * probe)

        grad = jax.grad(loss)(state)["value_table"][...]
        return memory(x), expected, memory.lookup(x)[1], rows, jnp.any(grad != 0, axis=1)

    return state, jax.jit(check)


def check_random(shape: tuple, seed: int) -> list[np.ndarray]:
    """checker(shape) on parameters, input and probe drawn from a normal distribution."""
    state, check = checker(shape)
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), state)
    x, probe = rng.normal(size=(2, *shape[-1], shape[0])).astype(np.float32)
    return [np.asarray(a) for a in check(state, x, probe)]


def brute_force(memory: ProductKeyMemory, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Score all K keys (s1[i] + s2[j] for key i * n + j), take the top-k of each head,
    softmax, and sum the weighted rows over heads; also the rows read."""
    q = memory.query_norm(memory.query(x).reshape(*x.shape[:-1], memory.heads, -1))
    q1, q2 = jnp.split(q, 2, axis=-1)
    keys = memory.sub_keys[...]
    s1 = jnp.einsum("...hd,hnd->...hn", q1, keys[:, 0])
    s2 = jnp.einsum("...hd,hnd->...hn", q2, keys[:, 1])
    every = (s1[..., :, None] + s2[..., None, :]).reshape(*s1.shape[:-1], -1)
    scores, rows = jax.lax.top_k(every, memory.topk)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("...hk,...hkd->...d", weights, memory.value_table[...][rows]), rows


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(SHAPES), st.integers(0, 2**31 - 1))
def test_lookup_equals_brute_force_top_k(shape, seed):
    out, expected, rows, expected_rows, _ = check_random(shape, seed)
    np.testing.assert_array_equal(np.sort(rows, -1), np.sort(expected_rows, -1))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(SHAPES), st.integers(0, 2**31 - 1))
def test_gradients_reach_only_the_rows_read(shape, seed):
    *_, rows, touched = check_random(shape, seed)
    np.testing.assert_array_equal(np.flatnonzero(touched), np.unique(rows))


CFG = ModelConfig(vocab_size=20, max_len=8, memory_layer=0, memory_size=256, memory_topk=8)


def test_decode_step_matches_full_forward():
    """Memory in the first block, so its output also feeds the second block's KV cache."""
    graphdef, params = init_model(CFG, seed=3)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (3, CFG.max_len), 0, CFG.vocab_size)
    full = jax.jit(apply, static_argnums=0)(graphdef, params, tokens)

    @jax.jit
    def step(tokens, pos, cache):
        return nnx.merge(graphdef, params).decode_step(tokens, pos, cache)

    cache = nnx.merge(graphdef, params).empty_cache(3)
    for t in range(CFG.max_len):
        logits, cache = step(tokens[:, t], jnp.full((3,), t), cache)
        np.testing.assert_allclose(logits, full[:, t], rtol=1e-4, atol=1e-4)


def test_bfloat16_ensemble_under_vmap():
    cfg = dataclasses.replace(CFG, dtype="bfloat16")
    graphdef, _ = init_model(cfg, seed=0)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(init_model(cfg, s)[1] for s in (0, 1)))
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 4, cfg.max_len), 0, cfg.vocab_size)

    def loss(params, tokens):
        return jnp.mean(apply(graphdef, params, tokens) ** 2)

    losses, grads = jax.jit(jax.vmap(jax.value_and_grad(loss)))(stacked, tokens)
    assert np.all(np.isfinite(losses)) and losses[0] != losses[1]
    single = jax.jit(jax.value_and_grad(loss))  # one compile serves both models
    for k, seed in enumerate((0, 1)):  # each model of the ensemble is that model alone
        alone, alone_grads = single(init_model(cfg, seed)[1], tokens[k])
        np.testing.assert_allclose(np.float32(losses[k]), np.float32(alone), rtol=1e-2)
        alone_table = alone_grads["blocks"][0]["memory"]["value_table"][...]
        np.testing.assert_array_equal(
            np.any(grads["blocks"][0]["memory"]["value_table"][...][k] != 0, axis=-1),
            np.any(alone_table != 0, axis=-1),
        )  # the same rows read
    table = grads["blocks"][0]["memory"]["value_table"][...]
    assert table.dtype == jnp.bfloat16 and table.shape == (2, cfg.memory_size, cfg.width)
    rows_read = np.count_nonzero(np.any(table != 0, axis=-1), axis=1)
    reads = tokens[0].size * cfg.memory_heads * cfg.memory_topk  # per model
    assert np.all(rows_read > 0) and np.all(rows_read <= reads)


def test_param_counts():
    d, v, t, layers = 32, CFG.vocab_size, CFG.max_len, 2
    plain = ModelConfig(vocab_size=v, max_len=t, layers=layers, width=d)
    counts = count_params(init_model(plain, 0)[1])
    block = 2 * 2 * d + 4 * d * d + 2 * 4 * d * d  # two LayerNorms, attention, MLP
    non_embedding = layers * block + 2 * d  # + the final LayerNorm
    assert counts == {"total": non_embedding + (v + t) * d, "non_embedding": non_embedding}
    cfg = dataclasses.replace(CFG, width=d)
    got = count_params(init_model(cfg, 0)[1], cfg)
    side, key_half = math.isqrt(cfg.memory_size), cfg.memory_key_dim // 2
    sub_keys = cfg.memory_heads * 2 * side * key_half
    memory = cfg.memory_size * d + sub_keys
    query = d * cfg.memory_heads * cfg.memory_key_dim + 2 * cfg.memory_key_dim
    dense = counts["total"] - 2 * 4 * d * d + query
    assert got == {
        "total": dense + memory,
        "non_embedding": dense + memory - (v + t) * d,
        "memory": memory,
        "dense": dense,
        "active_per_token": dense + sub_keys + cfg.memory_heads * cfg.memory_topk * d,
    }
    with pytest.raises(ValueError, match="ModelConfig"):
        count_params(init_model(cfg, 0)[1])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"memory_size": 200}, "perfect square"),
        ({"memory_layer": 2}, "memory_layer must be in"),
        ({"memory_topk": 17}, "memory_topk"),
        ({"memory_key_dim": 7}, "memory_key_dim"),
        ({"memory_layer": None}, "without a memory_layer"),
        ({"memory_mode": "mix"}, "memory_mode"),
    ],
)
def test_config_rejects_bad_memory(fields, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(CFG, **fields)


def test_side_memory_run_records_memory_counts():
    cfg = RunConfig(
        mode="side-memory", n_facts=64, layers=1, width=16, steps=25, memory_size=64, seed=1
    )
    record = run(cfg, progress=False)
    params, metrics = record["params"], record["metrics"]
    assert params["memory"] == 64 * 16 + 4 * 2 * 8 * 16
    assert params["dense"] + params["memory"] == params["total"]
    assert metrics["bits_per_memory_param"] == metrics["bits_memorized"] / params["memory"]
    assert entry_from_record(record)["model"]["params"] == params


PLAIN = ModelConfig(vocab_size=20, max_len=8)


def side_memory(layer: int) -> tuple[nnx.GraphDef, nnx.State, nnx.GraphDef, nnx.State]:
    """A plain model and the same model with a memory added to block `layer`."""
    graphdef, params = init_model(PLAIN, seed=5)
    cfg = dataclasses.replace(CFG, memory_layer=layer, memory_mode="add", memory_size=64)
    return graphdef, params, init_model(cfg, seed=0)[0], add_side_memory(cfg, params, seed=0)


@pytest.mark.parametrize("layer", [0, 1])
def test_added_memory_keeps_the_base_function(layer):
    graphdef, params, side_graphdef, side = side_memory(layer)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, PLAIN.max_len), 0, PLAIN.vocab_size)
    np.testing.assert_array_equal(
        apply(side_graphdef, side, tokens), apply(graphdef, params, tokens)
    )
    assert not np.any(side["blocks"][layer]["memory"]["value_table"][...])


def is_memory(path) -> bool:
    return "memory" in {getattr(k, "key", None) for k in path}


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_memory_only_training_moves_only_the_memory(weight_decay):
    *_, graphdef, side = side_memory(1)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (8, PLAIN.max_len), 0, PLAIN.vocab_size)
    cfg = TrainConfig(steps=5, memory_only=True, memory_lr_scale=10.0, weight_decay=weight_decay)
    optimizer = make_optimizer(cfg)

    def loss(p):
        logits = apply(graphdef, p, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    @jax.jit
    def step(p, state):
        updates, state = optimizer.update(jax.grad(loss)(p), state, p)
        return optax.apply_updates(p, updates), state

    trained, state = side, optimizer.init(side)
    for _ in range(cfg.steps):
        trained, state = step(trained, state)
    for (path, before), after in zip(
        jax.tree_util.tree_leaves_with_path(side), jax.tree.leaves(trained), strict=True
    ):
        if is_memory(path):
            assert np.any(before != after), jax.tree_util.keystr(path)
        else:
            np.testing.assert_array_equal(before, after, err_msg=jax.tree_util.keystr(path))
