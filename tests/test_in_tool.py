"""In-tool end to end: calls really run against a store; recall on unseen entities."""

import dataclasses

import numpy as np
import pytest

from recall_bench import formats, records
from recall_bench.cli import format_record
from recall_bench.experiments import sweep
from recall_bench.experiments.default import format_table, summary_row
from recall_bench.experiments.run import RunConfig, evaluate, make_task, run
from recall_bench.model import init_model
from recall_bench.tool import ERROR_STATUS, OK, MemoryStore, build_store, world_facts
from recall_bench.train import train_models
from recall_bench.worlds import make_fact_world

TOOL = RunConfig(mode="in-tool", n_facts=10_000, layers=2, width=32, heads=4, steps=1000)


@pytest.fixture(scope="module")
def trained():
    world = make_fact_world(TOOL.spec)
    result = train_models(
        TOOL.model_config(), TOOL.train_config(), [make_task(TOOL, world)], [0], progress=False
    )
    return world, result.graphdef, result.model(0)


def test_in_tool_recalls_unseen_entities_where_in_weight_cannot(trained):
    world, graphdef, params = trained
    metrics, decoded = evaluate(TOOL, world, graphdef, params, build_store(world, "memory"))
    assert TOOL.unseen_entities() == 1000
    assert metrics["recall_unseen"] >= 0.99
    assert metrics["recall"] >= 0.99
    assert metrics["call_valid"] >= 0.99 and metrics["copy_accuracy"] >= 0.99
    assert decoded.call_made.all()
    in_weight = run(dataclasses.replace(TOOL, mode="in-weight", steps=300), progress=False)
    assert in_weight["metrics"]["recall"] < 0.2


def test_it_reads_the_store_not_its_memory(trained):
    """Given a store whose values were changed, the model answers with the store's values."""
    world, graphdef, params = trained
    keys, attributes, values = world_facts(world)
    changed = (values.astype(np.int64) + 1) % 64
    store = MemoryStore(keys, attributes, changed.astype(np.uint8))
    entities = np.arange(200)
    metrics, decoded = evaluate(TOOL, world, graphdef, params, store, entities)
    vocab = formats.Vocab.of(world.spec)
    assert metrics["recall"] < 0.05  # the world's original values are no longer given
    answered_store = (decoded.answer[:, :2] == changed[:200] + vocab.value_offset).all(axis=1)
    assert answered_store.mean() >= 0.98


def test_store_errors_are_recorded_and_other_rows_kept(trained):
    world, graphdef, params = trained
    inner = build_store(world, "memory")

    class Flaky:
        kind, key_length, value_length = "flaky", inner.key_length, inner.value_length

        def __len__(self):
            return len(inner)

        def lookup(self, keys, attributes):
            found = inner.lookup(keys, attributes)
            status = found.status.copy()
            status[::2] = ERROR_STATUS  # every other row fails
            return dataclasses.replace(found, status=status, errors=["disk on fire (half)"])

        def close(self):
            pass

    entities = np.arange(100)
    metrics, decoded = evaluate(TOOL, world, graphdef, params, Flaky(), entities)
    assert (decoded.store_status[::2] == ERROR_STATUS).all()
    assert (decoded.store_status[1::2] == OK).all()
    assert metrics["store_errors"] == pytest.approx(0.5)
    assert 0.45 <= metrics["recall"] <= 0.5  # only the rows the store answered are right


def test_untrained_model_makes_malformed_calls_without_crashing():
    world = make_fact_world(TOOL.spec.with_entities(300))
    graphdef, params = init_model(TOOL.model_config(), 0)
    cfg = dataclasses.replace(TOOL, n_facts=300)
    metrics, decoded = evaluate(cfg, world, graphdef, params, build_store(world, "memory"))
    assert metrics["recall"] <= 0.01
    assert 0.0 <= metrics["call_valid"] <= 1.0
    assert decoded.tokens.shape == (300, formats.max_length(world.spec))


def test_in_tool_bits_are_named_delivered_everywhere_they_are_read():
    """In-tool bits come with the store's help: never under in-weight's names, and every
    summary shows them apart from bits held in weights."""
    cfg = dataclasses.replace(TOOL, n_facts=256, layers=1, width=16, heads=2, steps=20)
    record = run(cfg, progress=False)
    m = record["metrics"]
    assert record["schema"] == records.RECORD_SCHEMA == "recall_bench.record/2"
    assert set(records.IN_TOOL_NAMES).isdisjoint(m) and "bits_memorized" not in record["better"]
    assert m["bits_delivered_per_param"] == m["bits_delivered"] / record["params"]["total"]
    assert "bits delivered" in format_record(record) and "delivered/param" in format_record(record)
    assert "bits delivered" in sweep.cell_summary(record)
    row = summary_row(record)
    assert row["bits_per_param"] is None and row["bits_delivered"] == m["bits_delivered"]
    table = format_table({"params": 1, "rows": [row], "plot": "p.png", "wall_s": 1.0})
    line = table.splitlines()[2].split()  # mode facts recall unseen bits/param delivered/param
    assert (
        line[0] == "in-tool"
        and line[4] == "-"
        and float(line[5]) == pytest.approx(row["bits_delivered_per_param"], abs=1e-3)
    )
