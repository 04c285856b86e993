"""In-weight end to end: a ~20k-parameter model learns 200 facts, and cannot hold 20,000."""

import dataclasses
import types

import numpy as np
import pytest

from recall_bench import formats
from recall_bench.experiments.run import RunConfig, make_task, run
from recall_bench.metrics import sequence_stats
from recall_bench.model import count_params, init_model
from recall_bench.stopping import late_gain, plateaued, progress_fields
from recall_bench.train import TrainConfig, train_models
from recall_bench.worlds import make_fact_world

SMALL = RunConfig(mode="in-weight", layers=1, width=32, heads=4, steps=1000, batch_size=256)


def test_parameter_count_does_not_depend_on_fact_count():
    counts = [
        count_params(init_model(dataclasses.replace(SMALL, n_facts=n).model_config(), 0)[1])
        for n in (100, 100_000)
    ]
    assert counts[0] == counts[1]
    assert 15_000 <= counts[0]["total"] <= 25_000


def test_learns_200_facts_well_before_its_budget():
    record = run(dataclasses.replace(SMALL, n_facts=200), progress=False)
    assert record["metrics"]["recall"] == 1.0
    assert record["train"]["stop_reason"] == "recall" and record["train"]["converged"]
    assert record["train"]["steps"] <= 500 < record["train"]["budget"]
    assert record["train"]["history"][-1]["recall"] == 1.0  # the monitor saw it too
    bits = record["metrics"]["bits_memorized"]
    assert 0.95 * 200 * 12 <= bits <= 200 * 12


def test_far_more_facts_than_it_can_hold():
    cfg = dataclasses.replace(SMALL, n_facts=20_000, steps=300)
    record = run(cfg, progress=False)
    m = record["metrics"]
    assert m["recall"] < 0.05
    assert (
        0 < m["bits_memorized"] < 4.0 * record["params"]["total"] < record["world"]["entropy_bits"]
    )
    assert not record["train"]["converged"] and record["train"]["stop_reason"] == "budget"
    assert record["train"]["late_bits_gain"] == late_gain(record["train"]["history"], 0.3)
    assert m["bits_per_param"] == pytest.approx(m["bits_memorized"] / record["params"]["total"])


def test_greedy_decoding_agrees_with_teacher_forced_exact_match():
    """Recall by real decoding equals 'every answer token is the argmax' per fact."""
    from recall_bench.experiments.run import evaluate

    cfg = dataclasses.replace(SMALL, n_facts=600, steps=150)
    world = make_fact_world(cfg.spec)
    result = train_models(
        cfg.model_config(),
        TrainConfig(steps=150, batch_size=256),
        [make_task(cfg, world)],
        [0],
        progress=False,
    )
    params = result.model(0)
    metrics, decoded = evaluate(cfg, world, result.graphdef, params)
    seqs = formats.render(world, "in-weight")
    stats = sequence_stats(result.graphdef, params, seqs.tokens, seqs.loss_mask, seqs.value_mask)
    assert 0.05 < metrics["recall"] < 0.95  # a mix of right and wrong facts
    expected = formats.answer_tokens(world, *formats.fact_index(world.spec))
    right = (decoded.answer_length == 2) & (decoded.answer[:, :2] == expected).all(axis=1)
    np.testing.assert_array_equal(right, stats["exact"])


def flat_history(bits: float, budget: int, every: int = 100) -> list[dict]:
    """A run whose monitored bits stop growing at step 500."""
    return [{"step": s, "bits": bits * min(s, 500) / 500} for s in range(every, budget + 1, every)]


def test_plateau_waits_for_the_decayed_learning_rate_and_the_minimum_bits():
    cfg = TrainConfig(steps=10_000, plateau_min_steps=1000, plateau_after=0.7)
    history = flat_history(1000.0, 10_000)
    # flat since step 500, but the learning rate is still high before 70% of the budget
    assert not plateaued([h for h in history if h["step"] <= 6900], cfg, 10_000.0)
    assert plateaued([h for h in history if h["step"] <= 7000], cfg, 10_000.0)
    # 1,000 bits of a 100,000-bit monitor set: still on the early no-knowledge plateau
    assert not plateaued(history, cfg, 100_000.0)
    # still growing (15% over the last 30% of steps): no plateau
    rising = [{"step": h["step"], "bits": 1000.0 + 0.1 * h["step"]} for h in history]
    assert not plateaued(rising, cfg, 10_000.0)
    with pytest.raises(ValueError, match="plateau_after"):
        TrainConfig(plateau_after=1.5)


def test_progress_bar_shows_bits_held_and_the_late_gain_once_there_is_one():
    task = types.SimpleNamespace(monitor_bits=np.full(20, 10.0))  # 200 monitored bits
    history = [
        {"step": 100, "bits": 40.0, "loss": 2.5, "recall": 0.0},
        {"step": 700, "bits": 80.0, "loss": 2.0, "recall": 0.25},
    ]
    fields = progress_fields(history[:1], TrainConfig(), task)
    assert fields == {"loss": "2.500", "recall": "0.000", "bits": "20.0%"}
    history.append({"step": 1000, "bits": 100.0, "loss": 1.9, "recall": 0.3})
    assert "late" not in progress_fields(history, TrainConfig(steps=3000), task)  # rule: 2,100
    fields = progress_fields(history, TrainConfig(steps=1000), task)
    assert fields["bits"] == "50.0%" and fields["late"] == "+20.0%"
    general = types.SimpleNamespace(monitor_bits=np.zeros(20))  # a suite with no entropy
    assert "bits" not in progress_fields(history, TrainConfig(), general)


def test_late_gain_is_the_share_of_bits_gained_since_the_window_began():
    history = [
        {"step": 100, "bits": 50.0},
        {"step": 700, "bits": 80.0},
        {"step": 1000, "bits": 100.0},
    ]
    # the last check at or before step 700 (= 1000 * (1 - 0.3)) held 80 of the 100 bits
    assert late_gain(history, 0.3) == pytest.approx(0.2)
    assert late_gain(history, 0.05) == pytest.approx(0.2)  # falls back to the check at 700
    assert late_gain(history[:1], 0.3) is None  # no check that far back yet
    assert late_gain([{"step": 100, "bits": 0.0}, {"step": 1000, "bits": 0.0}], 0.3) is None
    small = [{"step": 100, "bits": 0.25}, {"step": 1000, "bits": 0.5}]  # under one bit held
    assert late_gain(small, 0.3) == 0.5
    # a trajectory measuring no bits (consolidation's): no gain, and never a plateau
    unmeasured = [{"step": 100, "loss": 1.0}, {"step": 3000, "loss": 1.0}]
    assert late_gain(unmeasured, 0.3) is None
    assert not plateaued(unmeasured, TrainConfig(steps=3000, plateau_min_bits=0.0), 0.0)


@pytest.mark.parametrize(
    ("earlier", "plateau"), [(991.0, True), (990.0, False), (989.0, False), (900.0, False)]
)
def test_plateau_rule_at_its_tolerance(earlier, plateau):
    """1,000 bits held at step 2,000 and `earlier` at step 1,400 (70% of the way): a gain
    of 0.9% is a plateau; exactly 1%, 1.1% or 10% are not (the default tolerance is 1%)."""
    cfg = TrainConfig(steps=2000)
    history = [{"step": 700, "bits": 500.0}, {"step": 1400, "bits": earlier}]
    history.append({"step": 2000, "bits": 1000.0})
    assert late_gain(history, cfg.plateau_window) == pytest.approx((1000.0 - earlier) / 1000.0)
    assert plateaued(history, cfg, 10_000.0) is plateau


def test_plateau_rule_at_its_step_and_bits_thresholds():
    """Flat bits: declared from exactly max(plateau_min_steps, 70% of the budget) on, and
    from exactly 2% of the monitored entropy on."""
    flat = [{"step": s, "bits": 1000.0} for s in (100, 700, 1000, 1400, 1425, 2000)]
    cfg = TrainConfig(steps=2000)
    assert [plateaued(flat[:i], cfg, 10_000.0) for i in (4, 5)] == [True, True]  # 1400, 1425
    assert not plateaued(flat[:3], cfg, 10_000.0)  # step 1000 < 1400
    assert not plateaued([*flat[:3], {"step": 1399, "bits": 1000.0}], cfg, 10_000.0)
    short = TrainConfig(steps=1000)  # 70% of it is 700: plateau_min_steps (1000) decides
    assert plateaued(flat[:3], short, 10_000.0)
    assert not plateaued([*flat[:2], {"step": 999, "bits": 1000.0}], short, 10_000.0)
    assert plateaued(flat, cfg, 50_000.0)  # 1,000 bits = exactly 2% of 50,000
    assert not plateaued(flat, cfg, 50_001.0)
    assert not plateaued(flat[:1], TrainConfig(steps=100, plateau_min_steps=0), 10_000.0)
