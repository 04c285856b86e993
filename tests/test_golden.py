"""Golden-record regression: pinned metrics of tiny runs must not move silently, the checker
catches a moved number (and only that), and refreshing shows the diff and refuses on a dirty
tree. Refresh on purpose: `JAX_PLATFORMS=cpu python tools/refresh_golden.py`."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest

from recall_bench import regression
from recall_bench.records import read_json
from recall_bench.regression import GOLDEN, check, moved
from recall_bench.stopping import plateaued

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def records() -> dict[str, dict]:
    """Each golden configuration, run once now."""
    return {name: regression.run(cfg, progress=False) for name, (cfg, _) in GOLDEN.items()}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_record(name, records):
    problems = check(name, records[name])
    assert not problems, "\n".join(problems)


def test_in_weight_golden_sits_mid_range(records):
    """Neither a collapse to 0 nor a jump to 1 of recall can pass its tolerance."""
    record = records["in_weight_tiny"]
    assert 0.3 < record["metrics"]["recall"] < 0.7
    assert record["train"]["stop_reason"] == "budget" and record["train"]["steps"] == 500


def test_in_tool_golden_really_ends_on_the_plateau_rule(records):
    """A real run that the plateau rule stops (not the budget, not recall), in-tool through
    a SQLite store end to end."""
    record = records["in_tool_tiny"]
    cfg = GOLDEN["in_tool_tiny"][0]
    train = record["train"]
    assert train["stop_reason"] == "plateau" and train["converged"] and train["plateaued"]
    assert train["steps"] == 1000 and train["steps"] <= train["budget"]
    assert train["late_bits_gain"] < cfg.train_config().plateau_tol
    history = train["history"]
    monitored_bits = 12.0 * cfg.validation_entities
    assert not plateaued(history[:-1], cfg.train_config(), monitored_bits)  # not before
    assert plateaued(history, cfg.train_config(), monitored_bits)
    assert history[-1]["recall"] < 1.0  # it was not the recall target
    assert record["store"] == {"kind": "sqlite", "facts": 256}
    m = record["metrics"]
    assert m["store_errors"] == 0.0 and m["recall_unseen"] < m["recall_trained"] <= 1.0


def golden(name: str) -> dict:
    return read_json(regression.GOLDEN_DIR / f"{name}.json")


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_checker_passes_the_same_and_fails_a_perturbed_record(name):
    then = golden(name)
    tolerance = GOLDEN[name][1]
    assert "tolerance" not in then  # tolerances live in code, not in the file they check
    assert set(then["metrics"]) == set(tolerance) and set(then["train"]) == {"steps", "stop_reason"}
    assert moved(then, copy.deepcopy(then), tolerance) == []
    for metric, tol in tolerance.items():
        for step, caught in ((0.5, False), (-0.5, False), (1.5, True), (-1.5, True)):
            now = copy.deepcopy(then)
            now["metrics"][metric] += step * tol
            lines = moved(then, now, tolerance)
            assert bool(lines) == caught, (metric, step)
            assert not lines or lines[0].startswith(metric)
        for bad in (math.nan, None):
            now = copy.deepcopy(then)
            now["metrics"][metric] = bad
            assert len(moved(then, now, tolerance)) == 1
    for key, other in (("steps", then["train"]["steps"] + 25), ("stop_reason", "recall")):
        now = copy.deepcopy(then)
        now["train"][key] = other
        (line,) = moved(then, now, tolerance)
        assert line.startswith(key) and line.endswith("exact")


def test_check_reads_no_tolerance_from_the_file(tmp_path, monkeypatch):
    """A golden file that claims huge tolerances still fails a moved record."""
    name = "in_weight_tiny"
    then = golden(name)
    tampered = {**then, "tolerance": dict.fromkeys(then["metrics"], 1e9)}
    (tmp_path / f"{name}.json").write_text(json.dumps(tampered))
    monkeypatch.setattr(regression, "GOLDEN_DIR", tmp_path)
    record = {**then, "metrics": {**then["metrics"], "recall": then["metrics"]["recall"] + 0.05}}
    monkeypatch.setattr(regression, "golden_record", lambda _name, _record=None: record)
    lines = check(name, record)
    assert lines[0].startswith(f"{name}: moved beyond tolerance") and len(lines) == 2
    assert lines[1].startswith("recall ")
    monkeypatch.setattr(regression, "golden_record", lambda _name, _record=None: then)
    assert check(name, then) == []


def refresh_tool():
    spec = importlib.util.spec_from_file_location(
        "refresh_golden", ROOT / "tools/refresh_golden.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_refresh_shows_the_diff_and_refuses_a_dirty_tree(tmp_path, monkeypatch, capsys):
    tool = refresh_tool()
    name = "in_weight_tiny"
    then = golden(name)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(then))
    new = copy.deepcopy(then)
    new["metrics"]["recall"] = 0.5
    monkeypatch.setattr(tool, "GOLDEN_DIR", tmp_path)
    monkeypatch.setattr(tool, "golden_record", lambda _name: new)
    monkeypatch.setattr(tool, "dirty", lambda: True)
    assert tool.main([name]) == 2
    assert "uncommitted changes" in capsys.readouterr().err
    assert read_json(path) == then  # nothing written
    assert tool.main(["no_such_golden"]) == 2
    assert tool.main([name, "--force"]) == 0
    out = capsys.readouterr().out
    old_recall = regression.show(then["metrics"]["recall"])
    assert f"{old_recall} -> 0.5" in out and "(changed)" in out
    assert out.count("(changed)") == 1 and f"wrote {path}" in out
    assert read_json(path) == new
    monkeypatch.setattr(tool, "dirty", lambda: False)
    assert tool.main([name]) == 0
