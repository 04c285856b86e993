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
