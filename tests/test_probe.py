"""Localization probes (recall_bench/probe.py): ablation, gradient profile, removal."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recall_bench import cli, formats, records
from recall_bench.experiments.config import RunConfig
from recall_bench.experiments.run import run
from recall_bench.model import apply, count_params, init_model
from recall_bench.probe import (
    Ablatable,
    ablatable,
    ablations,
    fact_gradient_norms,
    format_tables,
    gate,
    group,
    projection_means,
    served,
    with_gates,
)
from recall_bench.probe_memory import read_mass, without_rows
from recall_bench.probe_removal import (
    is_matrix,
    learned_drop,
    loss_gradient,
    mask_objective,
    mean_loss,
    path_names,
    removal_scores,
    removed,
    scaled,
    top_mask,
)
from recall_bench.records import read_json
from recall_bench.saved import load_run
from recall_bench.worlds import make_fact_world

RESULTS = Path(__file__).resolve().parent.parent / "results"
CFG = RunConfig(mode="in-weight", n_facts=64, layers=2, width=16, heads=2, steps=25)
MEMORY = dict(memory_size=64, memory_topk=4, memory_heads=2, memory_key_dim=8)
SIDE = dataclasses.replace(CFG, mode="side-memory", **MEMORY)


def model_and_tokens(cfg=CFG):
    graphdef, params = init_model(cfg.model_config(), 3)
    seqs = formats.render(make_fact_world(cfg.spec), cfg.format)
    return graphdef, params, seqs


@pytest.mark.parametrize("cfg", [CFG, SIDE], ids=["dense", "side-memory"])
def test_ablating_nothing_changes_nothing_bitwise(cfg):
    graphdef, params, seqs = model_and_tokens(cfg)
    g2, state = ablatable(graphdef, params)
    tokens = jnp.asarray(seqs.tokens[:, :-1])
    base = np.asarray(apply(graphdef, params, tokens))
    np.testing.assert_array_equal(np.asarray(apply(g2, state, tokens)), base)
    np.testing.assert_array_equal(np.asarray(apply(g2, with_gates(state, {}), tokens)), base)


def test_zeroing_a_head_equals_zeroing_its_rows_of_attn_out():
    graphdef, params, seqs = model_and_tokens()
    g2, state = ablatable(graphdef, params)
    tokens = jnp.asarray(seqs.tokens[:, :-1])
    ablated = with_gates(state, gate(CFG, "head", 1, 0, np.zeros(CFG.width)))
    assert not np.allclose(apply(g2, ablated, tokens), apply(graphdef, params, tokens))
    model = nnx.merge(graphdef, params)  # shares params' variables: edits them in place
    kernel = model.blocks[1].attn_out.kernel
    kernel[...] = kernel[...].at[: CFG.width // CFG.heads].set(0.0)
    by_hand = nnx.split(model)[1]
    np.testing.assert_allclose(
        np.asarray(apply(g2, ablated, tokens)),
        np.asarray(apply(graphdef, by_hand, tokens)),
        atol=1e-6,
    )


def test_mean_ablated_projection_outputs_its_mean_for_any_input():
    kernel = nnx.Param(jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32))
    layer = Ablatable(kernel)
    mean = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    layer.keep[...], layer.fill[...] = jnp.zeros(4), jnp.asarray(mean)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 4)), jnp.float32)
    want = np.broadcast_to(mean @ np.asarray(kernel[...]), (5, 3))
    np.testing.assert_allclose(np.asarray(layer(x)), want, rtol=1e-6)


def test_removing_0_and_100_percent():
    graphdef, params, seqs = model_and_tokens()
    scores = removal_scores(graphdef, params, seqs)
    order = np.argsort(-scores["gradient_x_weight"], kind="stable")
    assert not top_mask(order, 0).any() and top_mask(order, 100).all()
    assert top_mask(order, 10).sum() == round(0.1 * order.size)
    none, every = removed(params, top_mask(order, 0)), removed(params, top_mask(order, 100))
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    sizes = sum(w.size for p, w in flat if is_matrix(path_names(p)))
    assert order.size == sizes == 4 * 16 * 16 * 2 + 2 * 16 * 64 * 2  # qkv+attn_out, mlp
    leaves = zip(flat, jax.tree.leaves(none), jax.tree.leaves(every), strict=True)
    for (path, w), w0, w100 in leaves:
        np.testing.assert_array_equal(np.asarray(w0), np.asarray(w))
        if is_matrix(path_names(path)):
            assert not np.asarray(w100).any()
        else:
            np.testing.assert_array_equal(np.asarray(w100), np.asarray(w))


def test_probe_cli_writes_a_record(tmp_path, capsys):
    cfg = dataclasses.replace(CFG, layers=1)
    run(cfg, tmp_path, progress=False, save_model=True)
    assert cli.main(["probe", str(tmp_path), "--sample", "32"]) == 0
    record = json.loads((tmp_path / "probe.json").read_text())
    assert record["kind"] == "probe" and record["sample"]["facts"] == 32
    assert len(record["ablation"]) == 2 * (CFG.heads + 2)
    base = {k: record["sample"][k] for k in ("recall", "bits_memorized")}
    for row in record["removal"]:
        if row["percent"] == 0:
            assert {k: row[k] for k in base} == base
    assert {r["group"] for r in record["gradients"]} >= {"L0 attention", "L0 mlp", "embeddings"}
    assert "L0 head 1" in capsys.readouterr().out
    assert cli.main(["probe", str(tmp_path), "--sample", "32"]) == 2
    plot = ["--resume", "--plot", str(tmp_path / "probe.png")]
    assert cli.main(["probe", str(tmp_path), "--sample", "32", *plot]) == 0
    assert (tmp_path / "probe.png").stat().st_size > 0


def test_fact_gradient_norms_are_each_facts_own():
    graphdef, params, seqs = model_and_tokens()
    norms = fact_gradient_norms(
        params, graphdef, seqs.tokens[:3], seqs.loss_mask[:3], seqs.value_mask[:3]
    )
    alone = formats.Sequences(
        seqs.tokens[1:2], seqs.loss_mask[1:2], seqs.value_mask[1:2], seqs.prompt_length
    )
    sums = {}
    for path, g in jax.tree_util.tree_flatten_with_path(loss_gradient(params, graphdef, alone))[0]:
        key = group(path_names(path))
        sums[key] = sums.get(key, 0.0) + float(np.sum(np.square(np.asarray(g, np.float64))))
    assert set(norms) == {
        "L0 attention",
        "L0 mlp",
        "L1 attention",
        "L1 mlp",
        "final norm",
        "embeddings",
    }
    for key, value in norms.items():
        assert float(value[1]) == pytest.approx(sums[key] ** 0.5, rel=1e-5)


def test_in_tool_probe_record_is_read_under_the_in_tool_names():
    """The committed in-tool probe record predates the names: reading renames every block."""
    path = RESULTS / "localization/in-tool-4096/probe.json"
    old, new = read_json(path), records.read_record(path)
    assert new["sample"]["bits_delivered"] == old["sample"]["bits_memorized"]
    assert new["source"]["metrics"]["bits_delivered"] == old["source"]["metrics"]["bits_memorized"]
    for block in ("ablation", "removal"):
        assert [r["bits_delivered"] for r in new[block]] == [
            r["bits_memorized"] for r in old[block]
        ]
    assert "bits_memorized" not in json.dumps(new) and records.upgrade_record(new) == new
    assert "bits delivered 24,504" in format_tables(new)


def test_side_memory_ablation_is_its_output_and_its_rows_are_those_read():
    """Zero ablation of the memory = a zeroed value table; zeroing just the rows the tokens
    read does the same (bitwise), and zeroing the unread ones changes nothing."""
    graphdef, params, seqs = model_and_tokens(SIDE)
    assert ("memory", 0, None) in ablations(SIDE) and ("mlp", 0, None) not in ablations(SIDE)
    tokens = seqs.tokens[:8]
    mass = read_mass(graphdef, params, tokens, 0)
    positions = tokens[:, :-1].size
    assert mass.sum() == pytest.approx(MEMORY["memory_heads"] * positions, rel=1e-5)
    read = np.flatnonzero(mass > 0)
    assert 0 < read.size < MEMORY["memory_size"]
    x = jnp.asarray(tokens[:, :-1])
    forward = jax.jit(lambda p: apply(graphdef, p, x))
    out = lambda p: np.asarray(forward(p))  # noqa: E731
    every = out(without_rows(params, 0, np.arange(MEMORY["memory_size"])))
    np.testing.assert_array_equal(out(without_rows(params, 0, read)), every)
    unread = np.setdiff1d(np.arange(MEMORY["memory_size"]), read)
    np.testing.assert_array_equal(out(without_rows(params, 0, unread)), out(params))
    g2, state = ablatable(graphdef, params)
    counts = count_params(params, SIDE.model_config())  # the memory's parameters where they were
    assert count_params(state, SIDE.model_config())["memory"] == counts["memory"]
    zero = with_gates(state, gate(SIDE, "memory", 0, None, np.zeros(SIDE.width)))
    np.testing.assert_allclose(np.asarray(apply(g2, zero, x)), every, atol=1e-5)
    mean = projection_means(graphdef, params, tokens)[0, "memory"]
    assert mean.shape == (SIDE.width,) and np.abs(mean).sum() > 0
    names = {n for n in (path_names(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0])}
    assert group(("blocks", 0, "ln_mlp", "scale"), frozenset({0})) == "L0 memory"
    assert {group(n, frozenset({0})) for n in names} >= {"L0 memory", "L1 mlp"}


def test_learned_mask_drops_what_erases_the_facts():
    """On a committed trained model (in-weight, 1,024 facts, all recalled), the learned
    deletion mask lowers its objective, and its top 1% of entries, zeroed, raise the facts'
    loss far more than a random 1% do."""
    cfg, world, graphdef, params = load_run(RESULTS / "quantization/in-weight-1024")
    seqs = cfg.method.render(world, np.arange(32))
    logits = learned_drop(graphdef, params, seqs)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    shapes = [w.shape for p, w in flat if is_matrix(path_names(p))]
    sizes = [int(np.prod(s)) for s in shapes]
    assert logits.size == sum(sizes) and np.isfinite(logits).all()
    parts = np.split(logits, np.cumsum(sizes)[:-1])
    end = [jnp.asarray(z.reshape(s)) for z, s in zip(parts, shapes, strict=True)]
    start = [jnp.full(s, -4.0) for s in shapes]
    args = (params, graphdef, seqs.tokens, seqs.loss_mask, seqs.value_mask)
    assert float(mask_objective(end, *args)) < float(mask_objective(start, *args))
    top = top_mask(np.argsort(-logits, kind="stable"), 1)
    rand = top_mask(np.random.default_rng(0).permutation(logits.size), 1)
    loss = lambda p: float(mean_loss(p, *args[1:]))  # noqa: E731
    assert loss(removed(params, top)) > 10 * loss(removed(params, rand)) > 10 * loss(params)
    ones = scaled(params, [jnp.ones(s) for s in shapes])
    for a, b in zip(jax.tree.leaves(ones), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_only_a_protocol_pool_run_is_served_another_world():
    pool = RunConfig(mode="in-tool", n_facts=64, tool_train_entities=50, layers=1, width=16)
    assert served(pool, 4096).n_facts == 4096 and served(pool, None) is pool
    assert served(pool, 4096).model_config() == pool.model_config()
    own = dataclasses.replace(pool, tool_train_entities=0)
    assert served(own, 64) is own
    with pytest.raises(ValueError, match="--tool-train-entities"):
        served(own, 4096)
