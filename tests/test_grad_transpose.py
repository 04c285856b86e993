"""The opt-in weight-gradient setting (ModelConfig.grad_transpose): "narrower" gives the
default's gradients and training to float rounding, changes which operand is transposed, is
settable from the CLI and a sweep file, refuses bad values, and leaves the default's identity
(config hash, leaderboard entry id) as it was before the setting existed."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recall_bench.cli import build_parser
from recall_bench.cli.run import run_config
from recall_bench.experiments import sweep
from recall_bench.experiments.config import RunConfig
from recall_bench.identity import refuse_other
from recall_bench.leaderboard.ids import entry_id
from recall_bench.model import GRAD_TRANSPOSES, ModelConfig, init_model
from recall_bench.records import config_hash
from recall_bench.train import TrainConfig, make_optimizer, masked_loss, train_step

TOKENS = jax.random.randint(jax.random.PRNGKey(1), (32, 9), 0, 40)
MASK = jnp.ones((32, 9), jnp.float32)
STEPS = 12


def shape(grad_transpose: str) -> ModelConfig:
    return ModelConfig(40, 9, layers=2, width=16, heads=2, grad_transpose=grad_transpose)


@functools.cache
def trained(grad_transpose: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The gradients at initialization and the losses of STEPS AdamW steps (one compile)."""
    graphdef, params = init_model(shape(grad_transpose), 0)
    optimizer = make_optimizer(TrainConfig(steps=STEPS, lr=1e-2, warmup_steps=2))

    def run(params):
        grads = jax.grad(masked_loss, argnums=1)(graphdef, params, TOKENS, MASK)

        def step(carry, _):
            params, opt_state, loss = train_step(graphdef, optimizer, *carry, (TOKENS, MASK))
            return (params, opt_state), loss

        _, losses = jax.lax.scan(step, (params, optimizer.init(params)), None, length=STEPS)
        return grads, losses

    grads, losses = jax.jit(run)(params)
    return [np.asarray(x) for x in jax.tree.leaves(grads)], np.asarray(losses)


def test_narrower_gradients_equal_the_defaults_to_float_rounding():
    default, narrower = trained("input")[0], trained("narrower")[0]
    assert len(default) == len(narrower)
    for a, b in zip(default, narrower, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-6 * np.abs(a).max())


def test_a_few_training_steps_track_the_default():
    default, narrower = trained("input")[1], trained("narrower")[1]
    assert default[-1] < default[0] - 0.1  # it trains
    np.testing.assert_allclose(narrower, default, rtol=1e-5)


def transposed_shapes(grad_transpose: str) -> list[tuple[int, ...]]:
    """Input shapes of the transposes in the gradient's jaxpr (optimization barriers kept)."""
    graphdef, params = init_model(shape(grad_transpose), 0)
    jaxpr = jax.make_jaxpr(jax.grad(masked_loss, argnums=1), static_argnums=0)(
        graphdef, params, TOKENS, MASK
    )
    found = []

    def walk(jp):
        for eqn in jp.eqns:
            if eqn.primitive.name == "transpose":
                found.append(tuple(eqn.invars[0].aval.shape))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return found


def test_narrower_transposes_the_output_gradient_of_a_widening_layer():
    """mlp_out's input is [tokens, 4d]: the default transposes it, "narrower" transposes
    its [tokens, d] output gradient instead (and the [d, 4d] product after)."""
    tokens, width = 32 * 8, 16
    default, narrower = transposed_shapes("input"), transposed_shapes("narrower")
    assert default.count((tokens, 4 * width)) == 2  # one per block
    assert (tokens, 4 * width) not in narrower
    for wide in ((tokens, width), (width, 4 * width)):
        assert narrower.count(wide) == default.count(wide) + 2


@given(st.text(max_size=12).filter(lambda s: s not in GRAD_TRANSPOSES))
def test_an_unknown_setting_is_refused_by_name(value):
    with pytest.raises(ValueError, match="grad_transpose must be one of"):
        shape(value)


def test_cli_flag_and_sweep_key_reach_the_model(tmp_path, capsys):
    parser = build_parser()
    argv = ["run", "--mode", "in-weight", "--facts", "64", "--grad-transpose", "narrower"]
    cfg = run_config(parser.parse_args(argv))
    assert cfg.grad_transpose == "narrower" == cfg.model_config().grad_transpose
    assert run_config(parser.parse_args(argv[:-2])).model_config().grad_transpose == "input"
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([*argv[:-1], "smaller"])
    assert exit_info.value.code == 2 and "--grad-transpose" in capsys.readouterr().err
    path = tmp_path / "s.toml"
    path.write_text("[[grid]]\nmode = 'in-weight'\ngrad_transpose = ['input', 'narrower']\n")
    cells = sweep.load_sweep(path).cells
    assert [c.model_config().grad_transpose for c in cells] == ["input", "narrower"]
    assert [sweep.cell_name(c) for c in cells] == [
        "in-weight-n256-L2-d32-float32-s0",
        "in-weight-gnarrower-n256-L2-d32-float32-s0",
    ]
    path.write_text("[[grid]]\nmode = 'in-weight'\ngrad_transpose = 'output'\n")
    with pytest.raises(ValueError, match="grad_transpose must be one of"):
        sweep.load_sweep(path)


def entry(cfg: RunConfig, drop: bool = False) -> dict:
    """A leaderboard entry's identity fields for cfg; drop: as a record made before the
    setting existed had them (no grad_transpose key in config or model)."""
    config, model = dataclasses.asdict(cfg), dataclasses.asdict(cfg.model_config())
    if drop:
        del config["grad_transpose"], model["grad_transpose"]
    return {"mode": cfg.mode, "world": {"hash": "w"}, "model": model, "config": config, "seed": 0}


def test_the_default_keeps_the_identity_of_records_made_before_the_setting():
    cfg = RunConfig(n_facts=64)
    old, now = entry(cfg, drop=True), entry(cfg)
    assert "grad_transpose" in now["config"] and "grad_transpose" in now["model"]
    assert entry_id(now) == entry_id(old)
    assert config_hash(now["config"]) == config_hash(old["config"])
    other = entry(dataclasses.replace(cfg, grad_transpose="narrower"))
    assert entry_id(other) != entry_id(now)
    assert config_hash(other["config"]) != config_hash(now["config"])


def test_a_checkpoint_or_record_from_before_the_setting_is_the_same_run():
    """Resuming a checkpoint (or a sweep's finished cell) saved without the field works at the
    default and is refused under the other setting, naming the field."""
    now = {"model": dataclasses.asdict(shape("input")), "facts": dataclasses.asdict(RunConfig())}
    old = {k: {f: v for f, v in d.items() if f != "grad_transpose"} for k, d in now.items()}
    refuse_other("ckpt", "a checkpoint", old, now)
    other = {**now, "model": dataclasses.asdict(shape("narrower"))}
    with pytest.raises(ValueError, match=r"model\.grad_transpose: '\(absent\)' -> 'narrower'"):
        refuse_other("ckpt", "a checkpoint", old, other)
