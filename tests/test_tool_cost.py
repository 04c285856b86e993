"""The learn-tool cost split: a one-time cost (the intercept of damage against N) apart from a
per-fact cost (its slope), on hand-made summary rows."""

from __future__ import annotations

import pytest

from recall_bench.experiments.tool_cost import cost_split, cost_splits, format_splits


def rows(mode: str, damage, counts=(256, 1024, 4096), steps=(300, 200, 200)) -> list[dict]:
    return [
        {"mode": mode, "n_facts": n, "general_accuracy_kept": 1.0 - damage(n), "steps": s}
        for n, s in zip(counts, steps, strict=True)
    ]


def test_split_recovers_intercept_and_slope():
    made = rows("in-tool", lambda n: 0.4 + 2e-5 * n) + rows("in-weight", lambda n: 0.9)
    split = cost_split(made, "in-tool")
    assert split["one_time"] == pytest.approx(0.4)
    assert split["per_1000_facts"] == pytest.approx(0.02)
    assert split["damage_at_smallest"] == pytest.approx(0.4 + 2e-5 * 256)
    assert split["fact_counts"] == [256, 1024, 4096] and split["steps_range"] == [200, 300]
    assert [s["mode"] for s in cost_splits(made)] == ["in-tool"]  # in-weight has no tool cost
    assert "one-time cost 0.400" in format_splits([split])


def test_flat_damage_is_all_one_time_and_one_count_is_no_fit():
    split = cost_split(rows("in-tool+replay", lambda n: 0.1), "in-tool+replay")
    assert split["one_time"] == pytest.approx(0.1)
    assert split["per_1000_facts"] == pytest.approx(0.0, abs=1e-12)
    assert cost_split(rows("in-tool", lambda n: 0.1, (256,), (100,)), "in-tool") is None
    assert cost_split([], "in-tool") is None


def test_rows_without_a_kept_ratio_are_left_out():
    """A base that scored 0 leaves its cells no kept ratio (None): the fit skips them."""
    made = rows("in-tool", lambda n: 0.2 + 1e-5 * n)
    made.append({"mode": "in-tool", "n_facts": 8192, "general_accuracy_kept": None, "steps": 50})
    split = cost_split(made, "in-tool")
    assert split["fact_counts"] == [256, 1024, 4096] and split["one_time"] == pytest.approx(0.2)
    none = [{**r, "general_accuracy_kept": None} for r in made]
    assert cost_split(none, "in-tool") is None
