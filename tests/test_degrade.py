"""The degradation experiment: the base model's scores reproduce from its checkpoint, a
checkpoint of another config is refused, replay mixes hold the asked-for proportion, and a
side-memory cell runs from the base model."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import recall_bench.cli.degrade as cli_degrade
from recall_bench import divergences, general
from recall_bench.experiments import degrade, engine, recording
from recall_bench.experiments.run import evaluate
from recall_bench.model import init_model
from recall_bench.records import environment, write_json_atomic
from recall_bench.tool import OK, build_store, world_facts
from recall_bench.train import TrainResult, train_models
from recall_bench.worlds import make_fact_world

TINY = degrade.DegradeConfig(
    fact_counts=(64,),
    facts=dataclasses.replace(degrade.FACTS, layers=1, width=16, heads=2, steps=25, batch_size=32),
    base_steps=25,
    replay_min=100,
    suite=general.SuiteConfig(train_per_skill=64, test_per_skill=16),
)


def tiny_suite(cfg: degrade.DegradeConfig = TINY) -> general.Suite:
    return general.make_suite(cfg.suite, general.Vocab.of(cfg.run_config("in-weight", 2).spec))


def test_base_scores_reproduce_from_checkpoint(tmp_path, base_model):
    suite, base = base_model  # degrade.train_base(TINY, tiny_suite())
    recording.save_base(tmp_path, base)
    loaded = degrade.load_base(tmp_path, TINY, suite)
    jax.tree.map(np.testing.assert_array_equal, loaded["params"], base["params"])
    assert general.score(loaded["graphdef"], loaded["params"], suite) == base["info"]["scores"]
    assert loaded["info"] == base["info"]
    scores = base["info"]["scores"]  # as a base saved before the graded score existed holds it
    old = {k: v for k, v in scores.items() if not k.endswith("_mc_accuracy")}
    write_json_atomic(tmp_path / "base.json", {**base["info"], "scores": old})
    assert old != scores and degrade.load_base(tmp_path, TINY, suite)["info"] == base["info"]
    div = divergences.divergence(
        base["graphdef"], base["params"], loaded["graphdef"], loaded["params"], suite
    )
    assert div["kl"] == pytest.approx(0.0, abs=1e-6) and div["tv"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="another configuration"):
        degrade.load_base(tmp_path, dataclasses.replace(TINY, base_lr=3e-3), suite)


@pytest.mark.parametrize(("fraction", "n_facts"), [(0.25, 64), (0.5, 256)])
def test_replay_mix_proportion(fraction, n_facts):
    cfg = dataclasses.replace(TINY, replay_fraction=fraction)
    suite = tiny_suite(cfg)
    world = make_fact_world(cfg.run_config("in-weight+replay", n_facts).spec)
    task = degrade.injection_task(cfg, "in-weight+replay", world, suite)
    general_rows = np.isin(task.train.tokens[:, 1], list(general.MARKERS.values()))
    assert general_rows.mean() == pytest.approx(fraction, abs=1e-3)
    assert general_rows.sum() >= cfg.replay_min
    plain = degrade.injection_task(cfg, "in-weight", world, suite)
    np.testing.assert_array_equal(task.monitor.tokens, plain.monitor.tokens)  # facts only
    assert len(plain.train.tokens) == n_facts


def test_model_covers_suite_and_facts():
    cfg = dataclasses.replace(TINY, suite=general.SuiteConfig(length=12))
    assert cfg.model_config().max_len == cfg.suite.width == 28


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--modes", "in-weight,telepathy"], "modes"),
        (["--replay-fraction", "1.5"], "replay fraction"),
        (["--target-recall", "2"], "target recall"),
        (["--modes", "side-memory", "--memory-layer", "2"], "memory_layer"),
        (["--text-file", "/nowhere/text.md"], "'/nowhere/text.md' cannot be read"),
    ],
)
def test_cli_rejects_bad_input(argv, match):
    parser = argparse.ArgumentParser()
    cli_degrade.add_degrade_parser(parser.add_subparsers())
    args = parser.parse_args(["degrade", *argv])
    with pytest.raises(ValueError, match=match):
        args.func(args)


@pytest.fixture(scope="module")
def base_model() -> tuple[general.Suite, dict]:
    """The tiny suite and a base model trained on it (25 steps), trained once for the tests."""
    suite = tiny_suite()
    return suite, degrade.train_base(TINY, suite, progress=False)


def run_spied(monkeypatch, cfg, mode, n_facts, base, suite) -> tuple[dict, nnx.GraphDef, dict]:
    """run_cell, also handing back the model it trained (caught from train_models)."""
    results = []

    def spy(*args, **kwargs):
        results.append(train_models(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(engine, "train_models", spy)
    record = degrade.run_cell(cfg, mode, n_facts, base, suite, progress=False)
    (result,) = results
    return record, result.graphdef, result.model(0)


def leaves(state) -> dict:
    return {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_leaves_with_path(state)
    }


@pytest.mark.parametrize("mode", ["in-weight", "in-tool"])
def test_cell_scores_the_trained_model_not_the_base(monkeypatch, base_model, mode):
    """The degradation measure moves when the model is trained: every general score and
    divergence in the record is the trained model's, bitwise, and KL and TV are > 0."""
    suite, base = base_model
    before = leaves(base["params"])
    record, graphdef, params = run_spied(monkeypatch, TINY, mode, 64, base, suite)
    m = record["metrics"]
    trained = general.score(graphdef, params, suite)
    assert {k: m[k] for k in trained} == trained
    assert trained != base["info"]["scores"]  # the losses moved
    div = divergences.divergence(base["graphdef"], base["params"], graphdef, params, suite)
    assert {k: m[k] for k in div} == div
    assert m["kl"] > 1e-4 and m["tv"] > 1e-3
    base_scores = base["info"]["scores"]
    base_accuracy = base_scores["general_accuracy"]  # a base that knows nothing: kept is None
    kept = trained["general_accuracy"] / base_accuracy if base_accuracy else None
    assert m["general_accuracy_kept"] == kept
    chance = 1 / (TINY.suite.distractors + 1)
    graded = (trained["general_mc_accuracy"], base_scores["general_mc_accuracy"], chance)
    assert m["general_mc_kept"] == general.above_chance(*graded)
    run_cfg = TINY.run_config(mode, 64)
    store = build_store(make_fact_world(run_cfg.spec)) if mode == "in-tool" else None
    decoded, _ = evaluate(run_cfg, make_fact_world(run_cfg.spec), graphdef, params, store)
    bits = "bits_delivered" if mode == "in-tool" else "bits_memorized"  # the store's help
    assert m["recall"] == decoded["recall"] and m[bits] == decoded[bits]
    after = leaves(base["params"])  # the base model itself is left as it was
    assert before.keys() == after.keys()
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)


def test_side_memory_cell_summary_row(monkeypatch, base_model):
    """A side-memory cell keeps every base weight bitwise, trains its memory, and still moves
    the output distribution (the memory is read at every position)."""
    suite, base = base_model
    small = dataclasses.replace(TINY.facts, memory_size=64)
    cfg = dataclasses.replace(TINY, modes=("side-memory",), facts=small)
    record, graphdef, params = run_spied(monkeypatch, cfg, "side-memory", 64, base, suite)
    row = degrade.summary_row(record)
    m = record["metrics"]
    assert row["mode"] == "side-memory" and row["n_facts"] == 64
    for key in ("recall", "general_accuracy", "general_accuracy_kept", "kl", "tv", "steps"):
        np.testing.assert_equal(row[key], (record["train"] if key == "steps" else m)[key], key)
    base_leaves, side_leaves = leaves(base["params"]), leaves(params)
    assert set(base_leaves) < set(side_leaves)
    for path, value in base_leaves.items():  # every base weight bitwise unchanged
        np.testing.assert_array_equal(side_leaves[path], value, err_msg=path)
    memory = [p for p in side_leaves if p not in base_leaves]
    assert any("value_table" in p and side_leaves[p].any() for p in memory)  # it trained
    div = divergences.divergence(base["graphdef"], base["params"], graphdef, params, suite)
    assert {k: m[k] for k in div} == div and m["kl"] > 1e-6 and m["tv"] > 1e-5
    assert record["model"]["memory_mode"] == "add"
    assert record["params"]["memory"] == 64 * 16 + 4 * 2 * 8 * 16
    assert record["train"]["stop_reason"] == "budget" and record["train"]["steps"] == 25
    summary = {"base": base["info"], "params": base["info"]["params"], "rows": [row]}
    table = degrade.format_table({**summary, "plot": "p.png", "wall_s": 1.0})
    assert table.splitlines()[3].split()[:3] == ["side-memory", "64", f"{row['recall']:.3f}"]


def text_config(path, text: bytes, **fields) -> degrade.DegradeConfig:
    path.write_bytes(text)
    suite = dataclasses.replace(TINY.suite, text_file=str(path), text_train_windows=64)
    return dataclasses.replace(TINY, suite=suite, **fields)


def test_base_key_follows_the_text_content(tmp_path):
    path = tmp_path / "text.md"
    one = text_config(path, b"the first text. " * 20)
    two = text_config(path, b"the other text. " * 20)
    assert one.suite.text_sha256 != two.suite.text_sha256
    assert one.base_key() != two.base_key()  # same path, other content: no reuse
    assert one.base_key()["suite"]["text_bytes"] == 320
    assert "text_sha256" not in TINY.base_key()["suite"]  # keys of bases without a text unchanged


def test_text_degrade_run(tmp_path):
    text = ("Une ligne de texte, é — 字. " * 20).encode()
    cfg = text_config(tmp_path / "text.md", text, modes=("in-weight", "in-weight+replay"))
    summary = degrade.run_degrade(cfg, tmp_path / "out", progress=False)
    base = summary["base"]["scores"]
    assert np.isfinite(base["text_bits_per_byte"]) and base["text_bits_per_byte"] > 0.0
    assert "skill_text_accuracy" not in base  # the text is not in general_accuracy
    skills = cfg.suite.skills
    assert base["general_accuracy"] == pytest.approx(
        np.mean([base[f"skill_{s}_accuracy"] for s in skills])
    )
    for row in summary["rows"]:
        assert row["text_bits_per_byte"] > 0.0 and row["text_kl"] > 1e-6 and row["text_tv"] > 1e-5
        assert row["kl"] > 1e-6 and row["tv"] > 1e-5  # training moved the model
        assert row["kl"] == pytest.approx(np.mean([row[f"{s}_kl"] for s in skills]))  # no text
        change = row["text_bits_per_byte"] - base["text_bits_per_byte"]
        assert row["text_bits_per_byte_change"] == pytest.approx(change)
    assert summary["command"] is None  # run from Python, not from a command line
    assert "text bpb" in degrade.format_table(summary)


def test_learn_tool_is_the_default_protocol_with_its_defaults(monkeypatch):
    seen = {}
    monkeypatch.setattr(
        cli_degrade, "run_degrade", lambda cfg, out, *_: seen.update(cfg=cfg, out=out)
    )
    monkeypatch.setattr(cli_degrade, "format_table", lambda summary: "")
    parser = argparse.ArgumentParser()
    cli_degrade.add_degrade_parser(parser.add_subparsers())
    args = parser.parse_args(["degrade"])
    assert args.protocol == "learn-tool" and args.func(args) == 0
    assert seen["cfg"] == degrade.DegradeConfig()  # unset options keep learn-tool's defaults
    assert str(seen["out"]) == "recall_bench_out/degradation"


@pytest.mark.parametrize("mode", ["in-weight", "in-tool", "side-memory", "in-tool+replay"])
def test_cell_record_is_built_from_what_training_returned(monkeypatch, mode):
    """run_cell with training replaced by a known change of the base model (fast, for
    mutation testing): it trains from the base (plus an empty memory in side-memory) on the
    cell's task, and every metric of its record is that changed model's, the share of
    general accuracy kept is against the base's, and the base is left as it was."""
    cfg = dataclasses.replace(TINY, facts=dataclasses.replace(TINY.facts, memory_size=64))
    suite = tiny_suite(cfg)
    graphdef, params = init_model(cfg.model_config(), 0)
    scores = {**general.score(graphdef, params, suite), "general_accuracy": 0.5}
    base = {"graphdef": graphdef, "params": params, "info": {"scores": scores}}
    before = leaves(params)
    calls = []

    def fake_train(model_cfg, train_cfg, tasks, seeds, progress, init_params):
        calls.append((model_cfg, train_cfg, tasks, seeds, init_params))
        moved = jax.tree.map(lambda x: x * 1.5 + 0.01, init_params[0])
        history = [{"step": 25, "loss": 1.0, "recall": 0.0, "bits": 0.0, "monitor_loss": 1.0}]
        stacked = jax.tree.map(lambda x: x[None], moved)
        return TrainResult(
            init_model(model_cfg, 0)[0],
            stacked,
            [25],
            ["budget"],
            [history],
            1.0,
            0.5,
            environment(),
            [],
        )

    stores = []

    def spy_evaluate(run_cfg, world, graphdef, params, store=None, entities=None):
        """What store the cell decodes with: in-tool, one holding exactly the world's facts."""
        if store is None:
            stores.append(None)
        else:
            keys, attributes, values = world_facts(world)
            found = store.lookup(keys, attributes)
            right = (found.status == OK).all() and (found.values == values).all()
            stores.append((len(store), bool(right)))
        return evaluate(run_cfg, world, graphdef, params, store, entities)

    monkeypatch.setattr(engine, "train_models", fake_train)
    monkeypatch.setattr(engine, "evaluate", spy_evaluate)
    record = degrade.run_cell(cfg, mode, 64, base, suite, progress=False)
    assert stores == ([(64, True)] if mode.startswith("in-tool") else [None])
    ((model_cfg, train_cfg, (task,), seeds, (init,)),) = calls
    assert model_cfg == cfg.cell_model_config(mode) and train_cfg == cfg.injection_config(mode)
    assert seeds == [cfg.seed]
    world = make_fact_world(cfg.run_config(mode, 64).spec)
    want_task = degrade.injection_task(cfg, mode, world, suite)
    np.testing.assert_array_equal(task.train.tokens, want_task.train.tokens)
    start = leaves(init)
    for path, value in before.items():  # training starts from the base model
        np.testing.assert_array_equal(start[path], value, err_msg=path)
    assert (set(start) > set(before)) == (mode == "side-memory")
    trained = jax.tree.map(lambda x: x * 1.5 + 0.01, init)
    cell_graphdef = init_model(model_cfg, 0)[0]
    m = record["metrics"]
    now = general.score(cell_graphdef, trained, suite)
    assert {k: m[k] for k in now} == now
    div = divergences.divergence(graphdef, params, cell_graphdef, trained, suite)
    assert {k: m[k] for k in div} == div and m["kl"] > 1e-3
    assert m["general_accuracy_kept"] == now["general_accuracy"] / 0.5
    run_cfg = cfg.run_config(mode, 64)
    store = build_store(world) if mode == "in-tool" else None
    want, _ = evaluate(run_cfg, world, cell_graphdef, trained, store)
    keys = ("recall", "bits_memorized", "bits_delivered", "token_accuracy", "recall_unseen")
    for key in (*keys, "call_valid", "copy_accuracy"):  # the tool's, not the copy skill's
        assert m.get(key) == want.get(key), key
    assert record["mode"] == mode and record["n_facts"] == 64
    assert record["train"]["steps"] == 25 and record["train"]["stop_reason"] == "budget"
    assert record["degrade"]["base"] == base["info"]
    assert record["model"] == dataclasses.asdict(model_cfg)
    after = leaves(params)
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)


@pytest.mark.parametrize("folder", ["degradation_text", "degradation_side_memory"])
def test_records_made_before_the_configs_were_nested_keep_their_identity(folder):
    """A committed record's flat degradation config reads as the nested one (sweep_config),
    and that config's cells get the very run config the record holds (so its config_hash)."""
    from recall_bench.records import clean_json, read_json

    root = Path(__file__).parent.parent / "results" / folder
    for path in sorted(root.glob("*/record.json")):
        old = read_json(path)
        flat, then = old["degrade"]["config"], degrade.sweep_config(old)
        assert "width" not in then and then["facts"]["width"] == flat["width"]
        assert then["facts"]["seed"] == flat["seed"] and then["facts"]["lr"] == flat["lr"]
        facts = {k: v for k, v in flat.items() if k in then["facts"]}
        cfg = degrade.DegradeConfig(
            fact_counts=flat["fact_counts"],
            modes=flat["modes"],
            facts=dataclasses.replace(degrade.FACTS, **facts),
        )
        assert clean_json(dataclasses.asdict(cfg))["facts"] == then["facts"]
        now = clean_json(dataclasses.asdict(cfg.run_config(old["mode"], old["n_facts"])))
        assert {k: now[k] for k in old["config"]} == old["config"], path
