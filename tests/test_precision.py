"""Mixed precision as Morris et al. trained: bfloat16 compute over float32 master weights
and AdamW state, beside pure float32 and pure bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recall_bench.model import ModelConfig, apply, init_model
from recall_bench.train import TrainConfig, make_optimizer


def shape(dtype: str) -> ModelConfig:
    return ModelConfig(vocab_size=40, max_len=8, layers=1, width=16, heads=2, dtype=dtype)


@pytest.mark.parametrize(
    ("dtype", "stored"), [("float32", jnp.float32), ("bfloat16", jnp.bfloat16),
                          ("bfloat16-mixed", jnp.float32)]
)  # fmt: skip
def test_parameters_and_optimizer_state_are_stored_in_the_master_dtype(dtype, stored):
    _, params = init_model(shape(dtype), 0)
    state = make_optimizer(TrainConfig(steps=10)).init(params)
    floats = [x for x in jax.tree.leaves((params, state)) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == stored for x in floats)


def test_mixed_computes_in_bfloat16_over_the_same_float32_weights():
    graphdef32, params = init_model(shape("float32"), 0)
    graphdef_mixed, mixed = init_model(shape("bfloat16-mixed"), 0)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(mixed), strict=True):
        np.testing.assert_array_equal(a, b)  # the same initial master weights
    tokens = jnp.arange(16).reshape(2, 8) % 40
    full = apply(graphdef32, params, tokens)
    half = apply(graphdef_mixed, mixed, tokens)
    assert full.dtype == half.dtype == jnp.float32  # logits are float32 in every mode
    gap = float(jnp.max(jnp.abs(full - half)))
    assert 0 < gap < 0.1  # bfloat16 rounding, not another model
