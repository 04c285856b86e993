"""The record types (recall_bench/record_types.py) name every key the records carry: the
committed run records, upgraded, fit them, and the metric names are records.BETTER's."""

from __future__ import annotations

from pathlib import Path

import pytest

from recall_bench import record_types as types
from recall_bench import records

RESULTS = Path(__file__).resolve().parent.parent / "results"


def keys(typed: type) -> tuple[frozenset[str], frozenset[str]]:
    """(required, all) keys of a TypedDict."""
    return typed.__required_keys__, typed.__required_keys__ | typed.__optional_keys__


def fits(block: dict, typed: type, extra: bool = False) -> None:
    required, known = keys(typed)
    assert required <= set(block), f"{typed.__name__} lacks {sorted(required - set(block))}"
    if not extra:
        assert set(block) <= known, f"{typed.__name__} has {sorted(set(block) - known)}"


def test_every_metric_with_a_direction_is_named() -> None:
    named = keys(types.Metrics)[1]
    assert set(records.BETTER) <= named
    assert named - set(records.BETTER) == {
        "rule_accuracy",
        "held_out_facts",
        "protocol_key_overlap",
        "uniform_loss",
    }


def test_this_process_environment_fits_env() -> None:
    fits(records.environment(), types.Env)


@pytest.fixture(scope="module")
def committed() -> list[dict]:
    found = sorted(RESULTS.rglob("record.json"))
    assert len(found) > 300
    return [records.read_record(p) for p in found]


def test_committed_records_fit_the_types(committed: list[dict]) -> None:
    for record in committed:
        fits(record, types.Record)
        fits(record["params"], types.Params)
        fits(record["env"], types.Env)
        fits(record["train"], types.Train)
        if "world" in record:
            fits(record["world"], types.World)
        if "store" in record:
            fits(record["store"], types.Store)
        # degradation cells add per-skill scores
        cells = any(k in record for k in ("degrade", "joint", "tool_base"))
        fits(record["metrics"], types.Metrics, extra=cells)
    modes = {r["mode"] for r in committed}
    assert {"in-weight", "in-tool", "side-memory", "random-tokens"} <= modes


def test_skill_accuracies_take_their_own_names_on_upgrade() -> None:
    """record/3: the copy skill's exact match is skill_copy_accuracy, beside the in-tool
    copy_accuracy. In a degrade in-tool record of before, copy_accuracy was the skill's (the
    tool's was written over it: lost); in a tool-base store write it was the tool's, and the
    skill's is its base's; a record that never scored the suite keeps the tool's."""
    path = RESULTS / "degradation" / "in-tool-1024" / "record.json"
    raw, new = records.read_json(path), records.read_record(path)
    assert raw["schema"] == "recall_bench.record/1" and new["schema"] == records.RECORD_SCHEMA
    assert new["metrics"]["skill_copy_accuracy"] == raw["metrics"]["copy_accuracy"]
    assert "copy_accuracy" not in new["metrics"] and "copy_accuracy" not in new["better"]
    base, new_base = raw["degrade"]["base"]["scores"], new["degrade"]["base"]["scores"]
    for skill in ("copy", "reverse", "sort", "add", "brackets"):
        assert new["metrics"][f"skill_{skill}_accuracy"] == raw["metrics"][f"{skill}_accuracy"]
        assert new_base[f"skill_{skill}_accuracy"] == base[f"{skill}_accuracy"]
        assert f"{skill}_accuracy" not in new["metrics"] and f"{skill}_loss" in new["metrics"]
    # a tool-base store-write record as committed before its regeneration (schema 2)
    path = Path(__file__).resolve().parent / "fixtures" / "record_v2_tool_base_store_write.json"
    raw, new = records.read_json(path), records.read_record(path)
    assert raw["schema"] == "recall_bench.record/2" and raw["train"]["steps"] == 0
    assert new["metrics"]["copy_accuracy"] == raw["metrics"]["copy_accuracy"]  # the tool's
    base = raw["tool_base"]["base"]["scores"]
    assert new["metrics"]["skill_copy_accuracy"] == base["copy_accuracy"]
    assert new["metrics"]["skill_copy_accuracy"] != new["metrics"]["copy_accuracy"]
    assert records.upgrade_record(new) == new
    path = RESULTS / "three_modes" / "in-tool-n1024-L2-d40-float32-s0" / "record.json"
    raw, new = records.read_json(path), records.read_record(path)
    assert new["metrics"]["copy_accuracy"] == raw["metrics"]["copy_accuracy"]
    assert "skill_copy_accuracy" not in new["metrics"]


def test_a_base_saved_before_record_3_lends_todays_names() -> None:
    """A record/3 carrying the scores of a base saved before /3 (its old skill names) reads
    with today's names, and so does a loaded base's scores; upgrading twice changes nothing."""
    old = {"general_accuracy": 0.5, "copy_accuracy": 0.9, "sort_accuracy": 0.2, "copy_loss": 1.0}
    record = {"schema": records.RECORD_SCHEMA, "mode": "in-tool", "metrics": {"recall": 1.0},
              "tool_base": {"base": {"scores": old}}}  # fmt: skip
    new = records.upgrade_record(record)
    assert new["tool_base"]["base"]["scores"] == {
        "general_accuracy": 0.5, "skill_copy_accuracy": 0.9, "skill_sort_accuracy": 0.2,
        "copy_loss": 1.0,
    }  # fmt: skip
    assert new["metrics"] == record["metrics"] and records.upgrade_record(new) == new
    assert records.skill_scores({"copy_accuracy": 0.9}) == {"copy_accuracy": 0.9}  # no suite
