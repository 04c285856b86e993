"""The cell engine runs an experiment's cell as it says: its own rows, starting parameters,
trainer, measures and record fields, and the identity a finished record must match."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from recall_bench.experiments import engine
from recall_bench.experiments.config import BaseRunConfig, RunConfig, make_task
from recall_bench.model import init_model
from recall_bench.records import environment, read_json
from recall_bench.train import TrainResult
from recall_bench.worlds import make_fact_world

TINY = RunConfig(n_facts=16, layers=1, width=16, heads=2, steps=25, batch_size=16)


def zero_steps(model_cfg, train_cfg, tasks, seeds, progress, init_params) -> TrainResult:
    """A trainer of no steps: every model is its starting parameters (stacked in numpy: no
    compiling)."""
    history = [[{"step": 0, "loss": None, "recall": 0.0, "bits": 0.0}] for _ in seeds]
    k = len(seeds)
    graphdef = init_model(model_cfg, seeds[0])[0]
    return TrainResult(
        graphdef,
        jax.tree.map(lambda *xs: np.stack(xs), *init_params),
        [0] * k,
        ["budget"] * k,
        history,
        0.0,
        0.0,
        environment(),
        [],
    )


def test_a_cell_brings_its_rows_start_trainer_measures_and_fields(tmp_path, monkeypatch):
    evaluated = []

    def evaluate(cfg, world, graphdef, params, store=None, entities=None):
        evaluated.append(params)
        return {"recall": 0.25, "bits_memorized": 3.0}, None

    monkeypatch.setattr(engine, "evaluate", evaluate)
    monkeypatch.setattr(engine, "record_cost", lambda *args: {"flops": 1})
    start = init_model(TINY.model_config(), 7)[1]  # not the seed's own initialization
    tasks = []
    cell = engine.Cell(
        TINY,
        tmp_path / "cell",
        task=lambda world: tasks.append(make_task(TINY, world)) or tasks[-1],
        init=lambda: start,
        trainer=zero_steps,
        measures=(lambda result, k, metrics: {"twice_recall": 2 * metrics["recall"]},),
        fields=lambda result, k: {"mode": "in-weight+own", "protocol": "test"},
        identity=(lambda record: {"protocol": record["protocol"]}, {"protocol": "test"}),
        floor=False,
    )
    [record] = engine.run_cells([cell], progress=False)
    (params,) = evaluated  # the starting parameters, bitwise
    jax.tree.map(np.testing.assert_array_equal, params, start)
    m = record["metrics"]
    assert m == {"recall": 0.25, "bits_memorized": 3.0, "twice_recall": 0.5}  # no noise floor
    assert record["mode"] == "in-weight+own" and record["protocol"] == "test"
    assert record["train"]["steps"] == 0 and len(tasks) == 1
    assert record["train"]["trained_facts"] == len(tasks[0].train.tokens)
    assert read_json(tmp_path / "cell" / "record.json")["run_id"] == record["run_id"]
    again = engine.run_cells([cell], progress=False, resume=True)[0]  # not trained again
    assert again["run_id"] == record["run_id"] and len(tasks) == 1
    other = dataclasses.replace(cell, identity=(cell.identity[0], {"protocol": "other"}))
    with pytest.raises(ValueError, match="another configuration"):
        engine.run_cells([other], progress=False, resume=True)


def test_cells_of_other_configs_share_an_ensemble_and_a_model(tmp_path):
    """A run of no fact world (its own rows) and two fact cells of different sizes sharing a
    model train as one ensemble of two models; each gets its record, built by its measures and
    fields alone, the worldless one without a config or world."""
    calls = []

    def trainer(model_cfg, train_cfg, tasks, seeds, progress, init_params):
        calls.append(seeds)
        return zero_steps(model_cfg, train_cfg, tasks, seeds, progress, init_params)

    rows = make_task(TINY, make_fact_world(TINY.spec))
    how = dict(
        task=lambda world: rows,
        model=TINY.model_config(),
        train=TINY.train_config(),
        init=lambda: init_model(TINY.model_config(), 0)[1],
        trainer=trainer,
        measures=(lambda result, k, metrics: {"model": k, "so_far": len(metrics)},),
        fields=lambda result, k: {"train": {"late": k}},
        evaluate=False,
        ensemble="one",
    )
    general = engine.Cell(BaseRunConfig(mode="general-only", n_facts=0), tmp_path, **how)
    sized = [
        engine.Cell(dataclasses.replace(TINY, n_facts=n), tmp_path / str(n), shares="s", **how)
        for n in (16, 32)
    ]
    records = engine.run_cells([general, *sized], progress=False)
    assert calls == [[0, 0]]  # one ensemble, two models
    assert [r["metrics"] for r in records] == [{"model": k, "so_far": 0} for k in (0, 1, 1)]
    assert [r["n_facts"] for r in records] == [0, 16, 32]
    assert "config" not in records[0] and "world" not in records[0]
    assert [r["world"]["spec"]["n_entities"] for r in records[1:]] == [16, 32]
    assert [r["train"]["late"] for r in records] == [0, 1, 1] and records[2]["train"]["steps"] == 0


def test_a_base_cell_skips_the_method_evaluation_and_hands_back_its_model(monkeypatch):
    monkeypatch.setattr(engine, "evaluate", lambda *args: pytest.fail("evaluated"))
    monkeypatch.setattr(engine, "record_cost", lambda *args: pytest.fail("costed"))
    start = init_model(TINY.model_config(), 7)[1]
    cell = engine.Cell(
        TINY,
        init=lambda: start,
        trainer=zero_steps,
        measures=(lambda result, k, metrics: {"steps_seen": result.steps[k]},),
    )
    [(result, k, record)] = engine.trained_models([cell], progress=False)
    assert record["metrics"] == {"steps_seen": 0} and "cost" not in record
    graphdef, params = result.graphdef, result.model(k)
    jax.tree.map(np.testing.assert_array_equal, params, start)
    assert isinstance(graphdef, type(init_model(TINY.model_config(), 0)[0]))
