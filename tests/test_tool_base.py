"""The tool-base protocol: a store write changes no weight and answers the new facts through
the store; fine-tuning stops at the first evaluation that passes the target; a trajectory
starts at the base, ||dtheta|| / ||theta|| = 0 and greedy TV 0; the store write's optional
in-tool fine-tune is recorded through the store."""

from __future__ import annotations

import argparse
import dataclasses

import jax
import numpy as np
import pytest

import recall_bench.cli.degrade as cli_degrade
import recall_bench.cli.tool_base as cli_tool_base
from recall_bench import formats, general
from recall_bench.experiments.config import RunConfig
from recall_bench.experiments.tool_base import STORE, TOOL_FT, ToolBaseConfig
from recall_bench.experiments.tool_base_run import method_cells, train_bases
from recall_bench.stopping import FirstPass
from recall_bench.train import Task, train_models
from recall_bench.worlds import make_fact_world

TINY = ToolBaseConfig(
    base=RunConfig(
        mode="in-tool",
        n_facts=8,  # old facts
        layers=1,
        width=16,
        heads=2,
        steps=200,
        batch_size=64,
        lr=1e-2,
        key_length=2,
        key_alphabet=16,
        value_length=1,
        value_alphabet=16,
        attribute_sizes=(16,),
        tool_train_entities=150,
        validation_entities=16,
    ),
    suite=general.SuiteConfig(
        length=3, digits=2, bracket_length=4, train_per_skill=64, test_per_skill=16
    ),
    base_rows=2048,
    fact_counts=(16,),
    seeds=(0,),
    lrs=(1e-2,),
    steps=75,
    probe_prompts=8,
)


@pytest.fixture(scope="module")
def trained():
    spec = TINY.cell_config(2, 0, None).spec
    suite = general.make_suite(TINY.suite, formats.Vocab.of(spec))
    return train_bases(TINY, suite, progress=False), suite


def leaves(params) -> list[np.ndarray]:
    return [np.array(x) for x in jax.tree.leaves(params)]


def test_store_write_changes_no_weight_and_answers_through_the_store(trained, tmp_path):
    bases, suite = trained
    before = leaves(bases[0]["params"])
    (record,) = method_cells(TINY, STORE, None, 16, bases, suite, tmp_path)
    for a, b in zip(before, leaves(bases[0]["params"]), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise
    m, tb = record["metrics"], record["tool_base"]
    assert m["dtheta_rel"] == 0.0 and tb["gradient_steps"] == 0 and tb["method"] == "store-write"
    assert m["recall_unseen"] == m["recall"]  # no new fact was ever trained on
    assert m["greedy_tv"] == 0.0 and m["greedy_kl"] == 0.0 and m["greedy_tokens"] > 0
    assert m["recall"] >= 0.75  # answered by calling the store and copying its value
    assert m["copy_accuracy"] >= 0.9 and m["call_valid"] >= 0.75
    history = record["train"]["history"]
    assert [h["step"] for h in history] == [0] and history[0]["recall"] == m["recall"]
    assert (tmp_path / "store-write-16-s0" / "record.json").exists()


def test_first_pass_stops_at_the_first_passing_evaluation(trained):
    """train_models with a FirstPass rule: hand-made recalls that pass 0.99 first at the third
    evaluation (step 50), then fall and pass again, stop there; recalls that never pass train
    to the budget (75 steps)."""
    bases, _ = trained
    base = bases[0]["params"]
    world = make_fact_world(TINY.cell_config(16, 0, 1e-2).spec)
    facts = general.pad_to(formats.render(world, "in-weight"), TINY.model_config().max_len)
    task = Task(facts, facts, world.fact_bits())
    train_cfg = TINY.cell_config(16, 0, 1e-2).train_config()
    results = {}
    for name, recalls in (("passes", [0.1, 0.5, 0.99, 0.2]), ("never", [0.0, 0.1, 0.2, 0.3])):
        seen = {}

        def measure(params, step: int, recalls=recalls, seen=seen) -> list[dict]:
            seen[step] = leaves(params)
            return [{"recall": recalls[step // 25], "bits": 0.0}]

        stop = FirstPass(measure, 0.99)
        model_cfg = TINY.model_config()
        result = train_models(model_cfg, train_cfg, [task], [0], False, [base], first_pass=stop)
        results[name] = (result, seen)
    passed, seen = results["passes"]
    assert passed.stop_reason == ["recall"] and passed.steps == [50]
    assert [h["step"] for h in passed.history[0]] == [0, 25, 50]
    assert passed.history[0][0]["loss"] is None and passed.history[0][-1]["recall"] == 0.99
    for final, then in zip(leaves(passed.model(0)), seen[50], strict=True):
        np.testing.assert_array_equal(final, then[0])  # the parameters of that evaluation
    never, _ = results["never"]
    assert never.stop_reason == ["budget"] and never.steps == [75]
    assert [h["step"] for h in never.history[0]] == [0, 25, 50, 75]


def test_trajectory_starts_at_the_base(trained, tmp_path):
    bases, suite = trained
    (record,) = method_cells(TINY, "in-weight", 1e-2, 16, bases, suite, tmp_path)
    history = record["train"]["history"]
    assert [h["step"] for h in history][:2] == [0, 25]
    assert history[0]["dtheta_rel"] == 0.0 and history[0]["recall"] == 0.0
    assert history[1]["dtheta_rel"] > 0.0
    assert history[0]["greedy_tv"] == 0.0 and history[1]["greedy_tv"] > 0.0
    for key in ("general_mc_accuracy", "text_bits_per_byte", "old_recall", "old_bits"):
        assert key in history[0] or (key == "text_bits_per_byte" and suite.text is None)
    m = record["metrics"]
    assert m["dtheta_rel"] == history[-1]["dtheta_rel"] and "old_bits_kept" in m
    assert m["greedy_tv"] == history[-1]["greedy_tv"] > 0.0  # at the stop, on the full set
    (replayed,) = method_cells(TINY, "in-weight+replay", 1e-2, 16, bases, suite, tmp_path)
    assert replayed["config_hash"] != record["config_hash"]  # two cells, two identities
    assert replayed["config"]["evaluation"]["method"] == "in-weight+replay"


def test_in_tool_fine_tune_is_recorded_through_the_store(trained, tmp_path):
    """The store write's in-tool fine-tune: trained on the new facts' first entities (the
    rest held out), first-pass stopped within its own budget, recall decoded with the store."""
    bases, suite = trained
    cfg = dataclasses.replace(TINY, in_tool_steps=25, in_tool_lrs=(1e-2,))
    assert cfg.methods()[-1] == (TOOL_FT, 1e-2) and TINY.methods()[-1][0] != TOOL_FT
    (record,) = method_cells(cfg, TOOL_FT, 1e-2, 16, bases, suite, tmp_path)
    m, tb, history = record["metrics"], record["tool_base"], record["train"]["history"]
    assert record["mode"] == "in-tool" and tb["method"] == TOOL_FT and tb["budget"] == 25
    assert tb["gradient_steps"] == history[-1]["step"] <= 25 and history[0]["step"] == 0
    assert m["recall_trained"] is not None and m["recall_unseen"] is not None  # 13 + 3 held out
    assert "call_valid" in m and "copy_accuracy" in m  # decoded with the store
    assert m["dtheta_rel"] == history[-1]["dtheta_rel"] and "old_bits_kept" in m
    assert "general_mc_kept" in m and "greedy_tv" in m
    assert (tmp_path / f"{TOOL_FT}-lr0.01-16-s0" / "record.json").exists()


def test_cli_builds_the_config_from_its_options(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli_tool_base, "run_tool_base", lambda cfg, out, *_: seen.update(cfg=cfg))
    monkeypatch.setattr(cli_tool_base, "format_table", lambda summary: "")
    parser = argparse.ArgumentParser()
    cli_degrade.add_degrade_parser(parser.add_subparsers())
    argv = ["degrade", "--protocol", "tool-base", "--lrs", "1e-4,1e-3", "--old-facts", "64"]
    args = parser.parse_args([*argv, "--base-steps", "100", "--facts", "8,64", "--seeds", "3"])
    assert args.func(args) == 0
    cfg = seen["cfg"]
    assert cfg.lrs == (1e-4, 1e-3) and cfg.fact_counts == (8, 64) and cfg.seeds == (3,)
    assert cfg.base.n_facts == 64 and cfg.base.steps == 100 and cfg.base.mode == "in-tool"
    assert cfg.target_recall == ToolBaseConfig().target_recall  # unset: the protocol's own
    assert cfg.in_tool_steps == 0  # unset: no in-tool fine-tune
    args = parser.parse_args([*argv, "--in-tool-steps", "50", "--in-tool-lrs", "1e-3"])
    args.func(args)
    assert seen["cfg"].in_tool_steps == 50 and seen["cfg"].in_tool_lrs == (1e-3,)
    with pytest.raises(ValueError, match="--modes would be ignored"):
        bad = parser.parse_args([*argv, "--modes", "in-weight"])
        bad.func(bad)
