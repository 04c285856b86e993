"""Sweeps: TOML validation names the bad key, shards split the ensembles, a finished cell is
never run again, an ensemble's metrics equal those of its cells trained one by one, and the
capacity command prints the documented JSON."""

from __future__ import annotations

import argparse
import json
import shlex

import numpy as np
import pytest

from recall_bench.cli import build_parser, main
from recall_bench.cli.sweep import parse_shard
from recall_bench.experiments import sweep
from recall_bench.experiments.run import run

TINY = """
name = "tiny"
[defaults]
layers = 1
width = 8
steps = 25
batch_size = 32
[[grid]]
mode = "in-weight"
n_facts = 32
seed = [0, 1]
[[grid]]
mode = "random-tokens"
n_facts = 16
length = 8
vocab = 16
seed = 0
"""


def write(tmp_path, text):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[grid]]\nmode = 'in-weight'\nwidht = 8", "unknown key 'widht'"),
        ("[[grid]]\nmode = 'in-weight'\nvocab = 8", "'vocab' .*does not apply to mode 'in-weight'"),
        ("[[grid]]\nmode = 'in-weight'\nwidth = '8'", "width must be an integer"),
        ("[[grid]]\nmode = 'in-weight'\nlr = [true]", "lr must be a number"),
        ("[[grid]]\nmode = 'in-weight'\nseed = []", "seed is an empty list"),
        ("[[grid]]\nmode = 'in-weights'", "mode 'in-weights' is not one of"),
        ("[[grid]]\nwidth = 8", "missing key 'mode'"),
        ("[[grid]]\nmode = 'in-weight'\nwidth = 6\nheads = 4", "divisible by heads"),
        ("steps = 10\n[[grid]]\nmode = 'in-weight'", "unknown top-level key 'steps'"),
        ("[defaults]\nseed = [0, 1]\n[[grid]]\nmode = 'in-weight'", "seed must be a single"),
        ("[defaults]\nsteps = 1.5\n[[grid]]\nmode = 'in-weight'", "steps must be an integer"),
        ("name = 'x'", "at least one \\[\\[grid\\]\\]"),
        ("[[grid]\nmode = 'in-weight'", "not valid TOML"),
        ("[[grid]]\nmode = [['in-weight']]", r"mode \['in-weight'\] is not one of"),
        ("[defaults]\nmode = 'in-weight'\n[[grid]]\nwidth = 8", "mode belongs in each"),
    ],
)
def test_invalid_sweep_files_name_the_key(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        sweep.load_sweep(write(tmp_path, text))


def test_grid_expansion_overrides_groups_and_shards(tmp_path):
    text = "[[grid]]\nmode = ['in-weight', 'in-tool']\nwidth = [8, 16]\nseed = [0, 1, 2]\n"
    s = sweep.load_sweep(write(tmp_path, text))
    assert len(s.cells) == 12 and s.name == "sweep"
    ensembles = sweep.groups(s.cells)
    assert [len(g) for g in ensembles] == [3] * 4
    shards = [sweep.shard_groups(s.cells, (i, 3)) for i in range(3)]
    assert sorted(sweep.group_name(g[0]) for sh in shards for g in sh) == sorted(
        sweep.group_name(g[0]) for g in ensembles
    )
    assert shards[0] == sweep.shard_groups(s.cells, (0, 3))  # deterministic
    small = sweep.load_sweep(write(tmp_path, text), ["seed=[5]", "steps=7"])
    assert {(c.seed, c.steps) for c in small.cells} == {(5, 7)}
    with pytest.raises(ValueError, match="write KEY=VALUE"):
        sweep.load_sweep(write(tmp_path, text), ["steps"])
    with pytest.raises(ValueError, match="--set: unknown key 'stepz'"):
        sweep.load_sweep(write(tmp_path, text), ["stepz=7"])
    with pytest.raises(argparse.ArgumentTypeError, match="0 <= i < n"):
        parse_shard("3/3")


def test_side_memory_sizes_get_their_own_folders(tmp_path):
    text = "[[grid]]\nmode = 'side-memory'\nmemory_size = [256, 16384]\nwidth = 16\n"
    names = [sweep.cell_name(c) for c in sweep.load_sweep(write(tmp_path, text)).cells]
    assert names == [
        "side-memory-m256-n256-L2-d16-float32-s0",
        "side-memory-n256-L2-d16-float32-s0",
    ]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A tiny two-group sweep (a 2-seed in-weight ensemble, one random-token cell), run once."""
    folder = tmp_path_factory.mktemp("sweep")
    s = sweep.load_sweep(write(folder, TINY))
    summary = sweep.run_sweep(s, folder / "out", progress=False)
    return s, folder / "out", summary


def test_sweep_writes_records_and_summary(finished_sweep):
    s, out, summary = finished_sweep
    assert summary["n_cells"] == 3 and summary["ran"] == 3
    for cfg in s.cells:
        assert (out / sweep.cell_name(cfg) / "record.json").exists()
    assert json.loads((out / "summary.json").read_text())["n_cells"] == 3
    rows = {r["cell"]: r for r in summary["cells"]}
    assert set(rows) == {sweep.cell_name(c) for c in s.cells}
    for cfg in s.cells:  # each row is its record's numbers
        record = json.loads((out / sweep.cell_name(cfg) / "record.json").read_text())
        row = rows[sweep.cell_name(cfg)]
        assert row["seed"] == cfg.seed == record["seed"] and row["steps"] == 25
        for key in ("bits_memorized", "held_out_loss"):
            assert row.get(key) == record["metrics"].get(key), key
    token = rows[sweep.cell_name(s.cells[2])]
    assert token["mode"] == "random-tokens" and token["held_out_loss"] > 0
    worlds = {g["world"] for g in summary["capacity"]}
    assert worlds == {"facts", "random-tokens"}


def test_resume_never_reruns_a_finished_cell(finished_sweep, monkeypatch):
    s, out, _ = finished_sweep
    calls = []

    def fake_runner(cells, *args):
        calls.append([sweep.cell_name(c.cfg) for c in cells])
        for c in cells:  # put back the record this test removed
            (c.out_dir / "record.json").write_text(saved)
        return []

    monkeypatch.setattr(sweep, "run_ensemble", fake_runner)
    with pytest.raises(ValueError, match="pass --resume"):
        sweep.run_sweep(s, out, progress=False)
    assert sweep.run_sweep(s, out, resume=True, progress=False)["ran"] == 0
    assert calls == []
    gone = out / sweep.cell_name(s.cells[1]) / "record.json"
    saved = gone.read_text()
    gone.unlink()
    assert sweep.run_sweep(s, out, resume=True, progress=False)["ran"] == 1
    assert calls == [[sweep.cell_name(s.cells[1])]]


def test_ensemble_metrics_equal_cells_trained_alone(finished_sweep):
    s, out, _ = finished_sweep
    cfg = s.cells[1]  # the second model of the in-weight ensemble
    together = json.loads((out / sweep.cell_name(cfg) / "record.json").read_text())
    alone = run(cfg, progress=False)
    assert together["train"]["ensemble_size"] == 2 and alone["train"]["ensemble_size"] == 1
    assert together["train"]["steps"] == alone["train"]["steps"]
    for key in ("bits_memorized", "value_nll_bits", "token_accuracy", "recall"):
        np.testing.assert_allclose(
            together["metrics"][key], alone["metrics"][key], rtol=1e-4, atol=1e-4
        )


def test_capacity_and_merge_commands_print_documented_json(finished_sweep, tmp_path, capsys):
    _, out, _ = finished_sweep
    parser = build_parser()
    table = tmp_path / "pfr.json"
    assert main(["capacity", str(out), "--json", "--params-for-recall", str(table)]) == 0
    printed = json.loads(capsys.readouterr().out)
    group = next(g for g in printed["capacity"] if g["world"] == "facts")
    model = group["models"][0]
    assert model["params"]["total"] > model["params"]["non_embedding"] > 0
    bits = [  # the in-weight cells: one fact count, two seeds: capacity = their mean
        json.loads((out / sweep.cell_name(c) / "record.json").read_text())["metrics"][
            "bits_memorized"
        ]
        for c in sweep.load_sweep(write(tmp_path, TINY)).cells[:2]
    ]
    assert model["capacity_bits_by_seed"] == bits and model["capacity_bits"] == np.mean(bits) > 0
    assert model["bits_per_param"] == model["capacity_bits"] / model["params"]["total"]
    assert len(group["fit"]["interval"]) == 2 and "bits_per_param" in group["fit"]
    pfr = json.loads(table.read_text())
    assert {r["mode"] for r in pfr["rows"]} == {"in-weight"}
    command = ["recall-bench", "capacity", str(out), "--params-for-recall", str(table)]
    assert pfr["provenance"]["command"] == shlex.join(command)
    args = parser.parse_args(["sweep", "merge", str(out), "-o", str(tmp_path / "m.json")])
    assert args.func(args) == 0
    assert json.loads((tmp_path / "m.json").read_text())["n_cells"] == 3
