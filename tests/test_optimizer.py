"""AdamW's constants are fields of TrainConfig with the values every committed run used, and
a checkpoint saved before they were fields is still recognised as the same run."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recall_bench.identity import refuse_other
from recall_bench.resume import with_defaults
from recall_bench.train import TrainConfig, make_optimizer

NEW_FIELDS = ("adam_b1", "adam_b2", "adam_eps", "end_lr_fraction")


def updates(optimizer: optax.GradientTransformation, steps: int = 6) -> list[np.ndarray]:
    """The updates of `steps` steps on a fixed quadratic, as arrays."""
    params = {"w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(2, 3)}

    def one(carry, i):
        params, state = carry
        step, state = optimizer.update({"w": params["w"] * (1.0 + i) + 0.5}, state, params)
        return (optax.apply_updates(params, step), state), step["w"]

    carry = (params, optimizer.init(params))
    return list(np.asarray(jax.lax.scan(one, carry, jnp.arange(steps, dtype=jnp.float32))[1]))


def test_defaults_are_the_constants_every_run_trained_with() -> None:
    cfg = TrainConfig(steps=10, steps_per_call=5, eval_every=5, warmup_steps=2)
    assert [getattr(cfg, k) for k in NEW_FIELDS] == [0.9, 0.98, 1e-8, 0.05]
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, 2, 10, end_value=cfg.lr * 0.05)
    before = optax.chain(  # make_optimizer as it was written before the fields existed
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=0.0)
    )
    for a, b in zip(updates(make_optimizer(cfg)), updates(before), strict=True):
        np.testing.assert_array_equal(a, b)
    other = dataclasses.replace(cfg, adam_b2=0.999)  # the field is what the optimizer reads
    assert not np.array_equal(updates(make_optimizer(other))[-1], updates(before)[-1])


@pytest.mark.parametrize(
    "field, value",
    [("adam_b1", 1.0), ("adam_b2", -0.1), ("adam_eps", 0.0), ("end_lr_fraction", 2.0)],
)
def test_bad_constants_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_a_checkpoint_from_before_the_fields_is_the_same_run() -> None:
    now = dataclasses.asdict(TrainConfig(steps=200))
    old = {k: v for k, v in now.items() if k not in NEW_FIELDS}
    refuse_other("ckpt", "a checkpoint", with_defaults({"train": old}), {"train": now})
    changed = dataclasses.asdict(TrainConfig(steps=200, adam_b2=0.999))
    with pytest.raises(ValueError, match=re.escape("train.adam_b2: 0.98 -> 0.999")):
        refuse_other("ckpt", "a checkpoint", with_defaults({"train": old}), {"train": changed})
