"""Store scale end to end on a tiny model: one training, stores of growing size, a record per
size that says what it cost, and a finished run that is returned, never redone."""

import json

import pytest

from recall_bench.experiments.config import RunConfig
from recall_bench.experiments.store_scale import run_store_scale


def test_store_scale_records_cost_and_refuses_to_redo(tmp_path):
    cfg = RunConfig(mode="in-tool", n_facts=256, layers=1, width=16, heads=2, steps=100)
    args = (tmp_path, (600, 1200), 40, "sqlite", cfg)
    summary = run_store_scale(*args, progress=False, command="recall-bench store-scale")
    assert [r["store_facts"] for r in summary["rows"]] == [600, 1200]
    assert summary["command"] == "recall-bench store-scale"  # kept to rerun it
    for size in (600, 1200):
        record = json.loads((tmp_path / f"store-{size}" / "record.json").read_text())
        assert record["config"]["evaluation"]["store_facts"] == size
        assert record["store"]["facts"] == size and record["store"]["kind"] == "sqlite"
        cost = record["cost"]
        assert cost["store_disk_bytes"] > 0 and cost["tokens_generated"] > 0
        assert record["config_hash"]  # built once, with the evaluation in its config
    with pytest.raises(ValueError, match="--resume"):
        run_store_scale(*args, progress=False)
    assert run_store_scale(*args, progress=False, resume=True) == json.loads(
        (tmp_path / "summary.json").read_text()
    )
    other = (tmp_path, (600,), 40, "sqlite", cfg)
    with pytest.raises(ValueError, match=r"another configuration \(sizes"):
        run_store_scale(*other, progress=False, resume=True)
