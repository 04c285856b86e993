"""Consolidation: the offline data are the model's own store-mediated answers, zero steps change
nothing, every measure on a hand-made case, and the CLI's one-line errors."""

import dataclasses

import jax
import numpy as np
import pytest

from recall_bench import formats, streams
from recall_bench.cli.main import main
from recall_bench.consolidate import (
    answer_sequences,
    bits_moved,
    kept_share,
    mixture,
    own_answers,
)
from recall_bench.decode import Decoded
from recall_bench.experiments.consolidate import ConsolidateConfig, relative, run_consolidation
from recall_bench.experiments.run import RunConfig, make_task
from recall_bench.stopping import FirstPass
from recall_bench.tool import MemoryStore, world_facts
from recall_bench.train import Task, train_models
from recall_bench.worlds import make_fact_world

TOOL = RunConfig(
    mode="in-tool", n_facts=64, layers=1, width=16, heads=2, steps=150, batch_size=128,
    tool_train_entities=500, eval_every=150,
)  # fmt: skip


@pytest.fixture(scope="module")
def tool_model():
    """A tiny model that learned the tool protocol on a pool (recall 1.0 through a store)."""
    world = make_fact_world(TOOL.spec)
    task = make_task(TOOL, world)
    result = train_models(TOOL.model_config(), TOOL.train_config(), [task], [0], progress=False)
    return world, result.graphdef, result.model(0)


def test_consolidation_data_are_the_models_own_answers_through_the_store(tool_model):
    """A store holding wrong values gives consolidation data carrying those wrong values."""
    world, graphdef, params = tool_model
    keys, attributes, values = world_facts(world)
    wrong = (values.astype(np.int64) + 1) % world.spec.value_alphabet
    store = MemoryStore(keys, attributes, wrong.astype(np.uint8))
    data, kept, decoded = own_answers(graphdef, params, world, store)
    p, v, off = (
        data.prompt_length,
        world.spec.value_length,
        formats.Vocab.of(world.spec).value_offset,
    )
    assert kept.all() and decoded.call_made.all()
    np.testing.assert_array_equal(data.tokens[:, p : p + v], decoded.answer[:, :v])
    assert (data.tokens[:, p : p + v] == wrong + off).all(axis=1).mean() >= 0.95
    assert not (data.tokens[:, p : p + v] == values + off).all(axis=1).any()
    truth = formats.render_in_weight(world)
    np.testing.assert_array_equal(data.tokens[:, :p], truth.tokens[:, :p])  # the same prompts
    np.testing.assert_array_equal(data.loss_mask, truth.loss_mask)  # loss on `answer EOS`


def test_zero_offline_steps_leave_the_weights_unchanged_bitwise(tool_model):
    """The offline phase's training: train_models with evaluation steps and no target. At (0,)
    it measures the start and trains nothing, bit for bit; at (0, 25) it trains to step 25 on
    the consolidation batch stream and measures there."""
    world, _, params = tool_model
    data = mixture([(formats.render_in_weight(world), 1.0)], 256, 20, 0)
    task = Task(data, data, np.full(len(data.tokens), 12.0))
    cfg = ConsolidateConfig(steps=25, batch_size=8).train_config()
    seen = []

    def measure(stacked, step: int) -> list[dict]:
        seen.append(step)
        return [{"step_seen": step}]

    def train(at: tuple[int, ...]):
        return train_models(
            TOOL.model_config(), cfg, [task], [0], False, [params],
            first_pass=FirstPass(measure, None, at),
            batch_offset=streams.CONSOLIDATION_BATCH_OFFSET,
        )  # fmt: skip

    same = train((0,))
    assert seen == [0] and same.steps == [0] and same.stop_reason == ["budget"]
    for a, b in zip(jax.tree.leaves(same.model(0)), jax.tree.leaves(params), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    moved = train((0, 25))
    assert seen == [0, 0, 25] and moved.steps == [25]
    assert [h["step_seen"] for h in moved.history[0]] == [0, 25]
    assert moved.history[0][0]["loss"] is None and np.isfinite(moved.history[0][-1]["loss"])
    changed = [
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(moved.model(0)), jax.tree.leaves(params), strict=True)
    ]
    assert any(changed)
    with pytest.raises(ValueError, match="must be multiples of 25"):
        train((0, 10))


def test_offline_cells_train_from_the_base_and_measure_at_each_evaluation_step():
    """A tiny sweep end to end (the true facts: a 25-step base answers nothing well formed; no
    general data): the offline cell is measured at its evaluation steps, its first point is its
    own base (nothing moved), its metrics are its last point, and its record (the cell engine's,
    complete when built) holds the trajectory as its train block's history."""
    cfg = ConsolidateConfig(
        fact_counts=(8,), methods=("true-facts",), old_facts=8, tool_entities=40, width=8,
        heads=2, base_steps=25, steps=25, eval_steps=(0, 25), batch_size=16, rows=256,
        new_share=0.5, old_share=0.25, tool_share=0.25, general_share=0.0, seeds=(0,),
    )  # fmt: skip
    (record,) = run_consolidation(cfg, progress=False)
    start, last = record["train"]["history"]
    assert (start["step"], last["step"]) == (0, 25) and "general_accuracy" not in last
    assert start["loss"] is None and np.isfinite(last["loss"]) and start["bits_moved"] == 0
    assert record["train"]["steps"] == 25 and record["train"]["stop_reason"] == "budget"
    assert record["train"]["exposures_per_fact"] == 25 * 16 * 0.5 / 8  # of the new facts
    assert not record["train"]["converged"] and "trajectory" not in record
    assert record["mode"] == "consolidate-true-facts" and record["config"]["rows"] == 256
    assert record["metrics"] == {
        k: v for k, v in last.items() if k != "step" and v is not None and not np.isnan(v)
    }


def hand_decoded(answer: np.ndarray, length: np.ndarray) -> Decoded:
    n, t = answer.shape
    zeros = np.zeros(n, bool)
    return Decoded(
        tokens=np.zeros((n, t), np.int32), call_tokens=np.zeros((n, t), np.int32),
        call_made=zeros, call_valid=zeros, call_key=np.full((n, 4), -1),
        call_attribute=np.full(n, -1), store_status=np.full(n, -1), store_value=np.zeros((n, 2)),
        answer=answer, answer_length=length, store_errors=[], lookup_s=0.0,
    )  # fmt: skip


def test_answer_sequences_keep_well_formed_answers_right_or_wrong():
    world = make_fact_world(dataclasses.replace(TOOL.spec, n_entities=4))
    off = formats.Vocab.of(world.spec).value_offset
    truth = world.value_tokens()[:, 0] + off
    answer = np.zeros((4, 6), np.int32)
    answer[0, :2] = truth[0]  # right
    answer[1, :2] = [off + 5, off + 7]  # wrong but well formed: kept as written
    answer[2, :2] = [formats.CALL, off]  # a non-value token: nothing to consolidate
    answer[3, :3] = [off, off, off]  # three tokens: wrong length
    data, kept = answer_sequences(world, hand_decoded(answer, np.array([2, 2, 2, 3])))
    assert kept.tolist() == [True, True, False, False]
    p = data.prompt_length
    assert data.tokens[:, p : p + 2].tolist() == [truth[0].tolist(), [off + 5, off + 7]]
    assert (data.tokens[:, p + 2] == formats.EOS).all()


def test_measures_on_a_hand_made_case():
    assert kept_share(0.45, 0.9) == pytest.approx(0.5)
    assert np.isnan(kept_share(0.3, 0.0))
    assert bits_moved(1200.0, 200.0) == 1000.0
    base = {
        "bits_without_store": 10.0, "old_recall": 0.8, "tool_recall_fresh": 1.0,
        "general_accuracy": 0.5, "general_mc_accuracy": 0.75, "recall_without_store": 0.0,
    }  # fmt: skip
    now = {
        "bits_without_store": 110.0, "old_recall": 0.4, "tool_recall_fresh": 0.9,
        "general_accuracy": 0.25, "general_mc_accuracy": 0.5, "recall_without_store": 0.7,
    }  # fmt: skip
    out = relative(now, base, chance=0.25)
    assert out["bits_moved"] == 100.0 and out["recall_without_store"] == 0.7
    assert out["old_recall_kept"] == pytest.approx(0.5)
    assert out["tool_recall_fresh_kept"] == pytest.approx(0.9)
    assert out["general_accuracy_kept"] == pytest.approx(0.5)
    assert out["general_mc_kept"] == pytest.approx(0.5)  # (0.5 - 0.25) / (0.75 - 0.25)


def test_mixture_gives_each_part_its_share():
    world = make_fact_world(dataclasses.replace(TOOL.spec, n_entities=10))
    facts, traces = formats.render_in_weight(world), formats.render_in_tool(world)
    mix = mixture([(facts, 0.75), (traces, 0.25), (traces, 0.0)], 40, 20, 0)
    assert mix.tokens.shape == (40, 20)
    tool_rows = (mix.tokens == formats.CALL).any(axis=1)
    assert tool_rows.sum() == 10
    counts = np.unique(mix.tokens[~tool_rows][:, 1:5], axis=0, return_counts=True)[1]
    assert sorted(counts) == [3] * 10  # 30 fact rows: every fact three times


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shares", "0.5,0.5"], "--shares wants 4 numbers"),
        (["--shares", "0.5,0.5,0.5,0.5"], "must be >= 0, sum to 1"),
        (["--shares", "1,0,0,0"], "give the new facts a share in (0, 1)"),
        (["--methods", "dream"], "methods must be a non-empty subset"),
        (["--steps", "100", "--eval-steps", "0,50"], "must be >= 0 and end at --steps 100"),
        (["--steps", "100", "--eval-steps", "0,30,100"], "must be multiples of 25"),
    ],
)
def test_cli_bad_input_is_one_line(argv, message, capsys, tmp_path):
    assert main(["consolidate", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
