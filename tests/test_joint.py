"""The joint (shared-capacity) protocol: the mixture and its Zipf-like fact sampling, a tiny
sweep end to end (fact bits and general measures in every record), and training that runs its
whole budget even when the facts are all recalled early."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

import recall_bench.cli.degrade as cli_degrade
from recall_bench import general, natural_text, streams
from recall_bench.experiments import joint, joint_report
from recall_bench.experiments.config import RunConfig
from recall_bench.model import init_model
from recall_bench.records import read_json

TINY = joint.JointConfig(
    fact_counts=(8,),
    facts=RunConfig(layers=1, width=16, steps=200, batch_size=32, lr=1e-2, eval_every=100),
    tool_train_entities=64,
    rows=1024,
    seeds=(0, 1),
    suite=general.SuiteConfig(
        train_per_skill=64, test_per_skill=16, text_file="stdlib:this.py", text_train_windows=64
    ),
)


def test_zipf_rows():
    rows = joint.zipf_rows(100, 1000, 1.0, seed=3)
    counts = np.bincount(rows, minlength=100)
    assert len(rows) == 1000 and counts.min() >= 1
    np.testing.assert_array_equal(rows, joint.zipf_rows(100, 1000, 1.0, seed=3))
    order = streams.generator(3, streams.ZIPF_ORDER).permutation(100)
    assert (np.diff(counts[order]) <= 0).all()  # weights fall with rank
    assert counts[order[0]] > 100  # rank 0 holds ~1/H_100 of the 900 extra rows
    flat = np.bincount(joint.zipf_rows(100, 1000, 0.0, seed=3))
    assert (flat == 10).all()  # exponent 0: uniform
    with pytest.raises(ValueError, match="raise --rows"):
        joint.zipf_rows(100, 99, 1.0, seed=0)


def test_mixture_holds_the_general_fraction():
    suite = general.make_suite(
        TINY.suite, general.Vocab.of(TINY.run_config("in-weight", 2, 0).spec)
    )
    task = joint.cell_task(TINY, "in-weight", 8, 0, suite)
    world = joint.make_fact_world(TINY.run_config("in-weight", 8, 0).spec)
    markers = [*general.MARKERS.values(), natural_text.TEXT]
    is_general = np.isin(task.train.tokens[:, 1], markers)
    assert len(task.train.tokens) == TINY.rows and world.spec.n_facts == 8
    assert is_general.mean() == pytest.approx(TINY.general_fraction)
    assert task.train.tokens.shape[1] == TINY.model_config().max_len
    assert task.monitor_bits.sum() == pytest.approx(8 * world.spec.bits_per_fact)  # facts only


def test_in_tool_cell_carries_the_tools_copy_accuracy_and_the_copy_skills(monkeypatch):
    """copy_accuracy (in-tool: answers that copy the store's value) and skill_copy_accuracy (the
    copy skill's held-out exact match) are two measures, both in an in-tool cell's metrics;
    until record/3 the skill's was written over the tool's."""
    suite = general.make_suite(
        TINY.suite, general.Vocab.of(TINY.run_config("in-weight", 2, 0).spec)
    )
    graphdef, params = init_model(TINY.model_config(), 0)
    tool = {"recall": 0.5, "call_valid": 1.0, "copy_accuracy": 0.3}  # the tool's evaluation
    monkeypatch.setattr(joint, "evaluate", lambda *args: (dict(tool), None))
    monkeypatch.setattr(joint, "divergence", lambda *args: {})  # not what is tested: skip it
    ref = {"graphdef": graphdef, "params": params, "scores": None}
    m = joint.cell_metrics(TINY, ("in-tool", 8, 0), (graphdef, params), suite, ref)
    skill = general.score(graphdef, params, suite)["skill_copy_accuracy"]
    assert m["copy_accuracy"] == 0.3 and m["skill_copy_accuracy"] == skill
    assert skill != 0.3  # k / 16 held-out prompts: never 0.3, so neither was written over


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> tuple[Path, dict]:
    """The TINY joint sweep, run once: its folder and summary (the default benchmark's general
    part is this same sweep)."""
    folder = tmp_path_factory.mktemp("joint")
    return folder, joint_report.run_joint(TINY, folder, progress=False)


def test_tiny_joint_sweep(tiny_sweep, tmp_path, monkeypatch):
    sweep_dir, summary = tiny_sweep
    kinds = {(r["mode"], r["n_facts"]) for r in summary["rows"]}
    assert kinds == {("general-only", 0), ("in-weight", 8), ("in-tool", 8), ("facts-only", 8)}
    for kind, n, seed in [("in-weight", 8, 0), ("in-tool", 8, 1), ("facts-only", 8, 0)]:
        record = read_json(joint.cell_path(sweep_dir, kind, n, seed) / "record.json")
        m, t = record["metrics"], record["train"]
        assert record["protocol"] == "joint" and record["mode"] == kind
        bits = "bits_delivered" if kind == "in-tool" else "bits_memorized"  # store's help
        assert 0.0 <= m["recall"] <= 1.0 and m[bits] >= 0.0
        for key in ("general_accuracy_kept", "text_bits_per_byte", "kl", "tv"):
            assert np.isfinite(m[key])
        assert "general_mc_accuracy" in m and "general_mc_kept" in m
        assert "skill_copy_accuracy" in m and ("copy_accuracy" in m) == (kind == "in-tool")
        # whole-budget training: recall never stops a cell
        assert t["stop_reason"] == "budget" and t["steps"] == TINY.facts.steps
        assert 0.0 <= m["greedy_tv"] <= 1.0 and m["greedy_tokens"] > 0
    facts_only = read_json(joint.cell_path(sweep_dir, "facts-only", 8, 0) / "record.json")
    recalls = [h["recall"] for h in facts_only["train"]["history"]]
    assert recalls[0] == 1.0 and len(recalls) == 2  # all recalled at the first check, trained on
    bits = [h["bits"] for h in facts_only["train"]["history"]]
    assert facts_only["train"]["fact_bits_late_gain"] == pytest.approx(1 - bits[0] / bits[1])
    (row,) = [r for r in summary["rows"] if r["mode"] == "facts-only"]
    assert summary["capacity_bits"] == row["bits_memorized"] and row["capacity_share"] == 1.0
    ref_row = summary["rows"][0]
    assert ref_row["mode"] == "general-only" and ref_row["general_mc_ratio"] == 1.0
    assert "skill_add_accuracy" in ref_row and "add_mc_accuracy" in ref_row
    ref = read_json(joint.cell_path(sweep_dir, "general-only", 0, 0) / "record.json")
    assert ref["metrics"]["general_accuracy_kept"] == 1.0 and ref["metrics"]["kl"] == 0.0
    assert ref["train"]["fact_bits_late_gain"] is None and ref_row["fact_bits_late_gain"] is None
    assert (sweep_dir / "general_kept.png").exists()
    assert summary["command"] is None  # run from Python, not from a command line
    assert "facts-only" in joint_report.format_table(summary)
    with pytest.raises(ValueError, match="--resume"):
        joint_report.run_joint(TINY, sweep_dir, progress=False)
    again = joint_report.run_joint(TINY, sweep_dir, progress=False, resume=True)  # all kept
    assert again["rows"] == summary["rows"]
    # the frontier reuses the sweep's references: only the new fraction's cells train, in-tool
    # (on the protocol pool, trained once) and in-weight (at the largest N)
    trained = []
    monkeypatch.setattr(
        joint_report, "train_cells", lambda c, cells, *_: trained.append((c, cells)) or []
    )
    frontier = joint_report.run_frontier(
        TINY, (0.25,), tmp_path / "f", sweep_dir, progress=False, command="recall-bench x"
    )
    (tool_cfg, tool_cells), (cfg, cells) = trained
    assert tool_cells == [("in-tool", 0, 0), ("in-tool", 0, 1)]
    assert cfg.general_fraction == tool_cfg.general_fraction == 0.25
    assert cells == [("in-weight", 8, 0), ("in-weight", 8, 1)]
    series = [(p["series"], p["general_fraction"]) for p in frontier["points"]]
    assert series == [("in-weight", 1.0), ("in-weight", 0.5), ("in-weight", 0.0),
                      ("in-tool", 1.0), ("in-tool", 0.5)]  # fmt: skip
    assert (tmp_path / "f" / "frontier.png").exists() and frontier["command"] == "recall-bench x"
    sub = read_json(tmp_path / "f" / "general-fraction-0.25" / "summary.json")
    assert sub["command"] == "recall-bench x"  # the frontier's command regenerates its sweeps
    with pytest.raises(ValueError, match="no general-only cells"):  # a folder of no sweep
        joint_report.run_joint(TINY, tmp_path / "g", False, False, tmp_path / "f")


def test_references_serve_every_general_fraction():
    """General-only and facts-only cells train on no mixture: one serves every fraction."""
    other = dataclasses.replace(TINY, general_fraction=0.25, fact_counts=(8, 16))
    for kind, same in (("general-only", True), ("facts-only", True), ("in-weight", False)):
        assert (joint.cell_key(TINY, kind) == joint.cell_key(other, kind)) is same
    assert joint.cell_key(TINY, "general-only") != joint.cell_key(
        dataclasses.replace(TINY, seeds=(0,)), "general-only"
    )


def test_frontier_points_run_from_the_reference_to_facts_only():
    def row(mode, n, bits=None):
        r = {"mode": mode, "n_facts": n, "general_mc_kept": 1.0 - (bits or 0) / 100}
        return (
            r
            if bits is None
            else {**r, "bits_memorized": bits, "bits_memorized_range": [bits - 1, bits + 1]}
        )

    base = {
        "config": {"general_fraction": 0.5},
        "capacity_bits": 80.0,
        "rows": [row("general-only", 0), row("in-weight", 8, 10), row("in-weight", 64, 40),
                 row("facts-only", 64, 60), row("in-tool", 64, 2)],
    }  # fmt: skip
    sweeps = {
        0.9: [row("general-only", 0), row("in-weight", 64, 20), row("in-tool", 64, 1)],
        0.1: [row("in-weight", 64, 70)],
    }
    points = joint_report.frontier_points(base, sweeps, 64, "in-weight")
    assert [p["general_fraction"] for p in points] == [1.0, 0.9, 0.5, 0.1, 0.0]
    assert [p["bits_memorized"] for p in points] == [0.0, 20, 40, 70, 60]  # N=8's row left out
    assert points[3]["capacity_share"] == 70 / 80 and points[3]["capacity_share_range"] == [
        69 / 80,
        71 / 80,
    ]
    assert points[0]["bits_memorized_range"] == [0.0, 0.0] and points[0]["general_mc_kept"] == 1.0
    tool = joint_report.frontier_points(base, sweeps, 64, "in-tool")  # no facts-only end
    assert [(p["general_fraction"], p["bits_memorized"]) for p in tool] == [
        (1.0, 0.0),
        (0.9, 1),
        (0.5, 2),
    ]
    assert {p["series"] for p in tool} == {"in-tool"}


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--modes", "in-weight,side-memory"], "joint modes"),
        (["--general-fraction", "1.5"], "general fraction"),
        (["--facts", "8", "--rows", "8"], "raise --rows"),
        (["--seeds", "0,0"], "seeds"),
        (["--general-fraction", "0.9,0.25"], "--reference"),
        (["--general-fraction", "0.9,1.25", "--reference", "x"], "general fraction"),
    ],
)
def test_joint_cli_rejects_bad_input(argv, match):
    parser = argparse.ArgumentParser()
    cli_degrade.add_degrade_parser(parser.add_subparsers())
    args = parser.parse_args(["degrade", "--protocol", "joint", *argv])
    with pytest.raises(ValueError, match=match):
        args.func(args)


def test_default_benchmark_shows_recall_and_general_ability(tiny_sweep, tmp_path):
    """The default run, at tiny sizes: recall cells, then general ability kept against N for
    both modes (the joint protocol), in its summary, table and plot. Its general part is the
    TINY sweep, whose finished cells a resumed run keeps (trained once, for both tests)."""
    from recall_bench.experiments import default

    sweep_dir, _ = tiny_sweep
    shutil.copytree(sweep_dir, tmp_path / "general")  # its cells, not its summary and plot
    (tmp_path / "general" / "summary.json").unlink()
    (tmp_path / "general" / "general_kept.png").unlink()
    base = RunConfig(layers=1, width=16, steps=50, batch_size=32, eval_every=50)
    todo = default.cells(base, (16,))[:1]
    summary = default.run_default(tmp_path, False, resume=True, todo=todo, joint=TINY)
    assert [(r["mode"], r["n_facts"]) for r in summary["rows"]] == [("in-weight", 16)]
    general = summary["general"]
    kinds = {(r["mode"], r["n_facts"]) for r in general["rows"]}
    assert kinds == {("general-only", 0), ("in-weight", 8), ("in-tool", 8), ("facts-only", 8)}
    for r in general["rows"]:
        assert "general_mc_kept" in r and 0.0 <= r["greedy_tv"] <= 1.0
    assert general["capacity_bits"] > 0.0 and general["steps"] == TINY.facts.steps
    table = default.format_table(summary)
    assert (
        "general ability kept, shared capacity" in table and "in-tool" in table.split("general")[-1]
    )
    assert Path(summary["plot"]).exists() and (tmp_path / "general" / "summary.json").exists()
