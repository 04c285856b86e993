"""The recall-bench command: the JSON record on stdout, and one clear line for bad input."""

import argparse
import importlib
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recall_bench.cli import format_record, int_list, main

# One tiny in-weight run; each test adds its own budget and flags.
TINY_RUN = [
    "run",
    "--mode",
    "in-weight",
    "--facts",
    "64",
    "--layers",
    "1",
    "--width",
    "16",
    "--heads",
    "2",
]


def test_json_prints_the_record_and_nothing_else(tmp_path, capsys):
    code = main([*TINY_RUN, "--steps", "50", "--json", "--out", str(tmp_path)])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    for key in ("mode", "n_facts", "bits_per_fact"):
        assert key in record
    assert set(record["params"]) >= {"total", "non_embedding"}
    assert set(record["metrics"]) >= {
        "recall",
        "token_accuracy",
        "bits_memorized",
        "bits_per_param",
    }
    assert set(record["train"]) >= {"steps", "wall_s", "converged"}
    assert {"jax", "platform", "device_kind", "git_commit"} <= set(record["env"])
    assert json.loads((tmp_path / "record.json").read_text())["run_id"] == record["run_id"]
    # the summary says how far from saturation a run stopped, once its history reaches back
    record["train"].update(late_bits_gain=0.087, late_window=0.3)
    assert "+8.7% monitored bits over the last 30% of steps" in format_record(record)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mode", "in-weight"], "both --mode and --facts"),
        (["--mode", "in-weight", "--facts", "10", "--width", "30", "--heads", "4"], "divisible"),
        (["--mode", "in-weight", "--facts", "9", "--attributes", "4096,16"], "multiple"),
        (["--mode", "in-weight", "--facts", "10", "--attributes", "9999"], "attribute_sizes"),
        (["--mode", "in-weight", "--facts", str(64**4 + 1)], "key space"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path):
    assert main(["run", *argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "x" / "record.json").exists()


@pytest.mark.parametrize(
    "flag",
    [
        ["--facts", "0"],
        ["--facts", "x"],
        ["--lr", "nan"],
        ["--attributes", "1,,2"],
        ["--mode", "sideways"],
    ],
)
def test_bad_flags_exit_2(flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *flag])
    assert exit_info.value.code == 2


@given(st.text(max_size=20))
def test_int_list_parses_or_explains(text):
    try:
        values = int_list(text)
    except argparse.ArgumentTypeError as err:
        assert str(err)
        return
    assert values and all(v >= 1 for v in values)
    assert values == tuple(int(x) for x in text.split(","))


def test_a_diverging_run_stops_with_one_clear_line(tmp_path, capsys):
    argv = [*TINY_RUN, "--steps", "400", "--lr", "1e6", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: loss became nan") and "--lr" in err and "\n" not in err
    assert not (tmp_path / "record.json").exists()


def test_random_tokens_run_from_the_cli(tmp_path, capsys):
    """Morris et al.'s data reached from `run`: the record carries the sequences' entropy,
    the held-out loss and the noise floor measured on held-out sequences."""
    argv = ["run", "--mode", "random-tokens", "--facts", "64", "--vocab", "32", "--length", "8"]
    argv += ["--width", "16", "--heads", "2", "--steps", "50", "--json", "--out", str(tmp_path)]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["mode"] == "random-tokens" and record["n_facts"] == 64
    assert record["bits_per_fact"] == pytest.approx(7 * 5.0)
    assert record["world"]["entropy_bits"] == pytest.approx(64 * 35.0)
    m = record["metrics"]
    assert m["uniform_loss"] == pytest.approx(np.log(32))
    assert 0 <= m["bits_memorized_corrected"] <= m["bits_memorized"]
    assert record["config"]["vocab"] == 32 and record["model"]["layers"] == 1


def test_output_into_a_closed_pipe_ends_quietly(monkeypatch):
    """`recall-bench ... | head` exits 0 without a traceback once the reader stops."""
    cli_main = importlib.import_module("recall_bench.cli.main")

    def stopped_reader(args):
        raise BrokenPipeError

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(func=stopped_reader)

    monkeypatch.setattr(cli_main, "build_parser", Parser)
    redirected = []
    monkeypatch.setattr(cli_main.os, "dup2", lambda *a: redirected.append(a))  # keep stdout
    assert cli_main.main([]) == 0 and len(redirected) == 1
