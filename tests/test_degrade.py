"""The degradation experiment: the base model's scores reproduce from its checkpoint, a
checkpoint of another config is refused, replay mixes hold the asked-for proportion, and a
side-memory cell runs from the base model."""

from __future__ import annotations

import argparse
import dataclasses

import jax
import numpy as np
import pytest

import recall_bench.cli.degrade as cli_degrade
from recall_bench import general
from recall_bench.experiments import degrade
from recall_bench.worlds import make_fact_world

TINY = degrade.DegradeConfig(
    fact_counts=(64,),
    layers=1,
    width=16,
    heads=2,
    base_steps=25,
    steps=25,
    batch_size=32,
    replay_min=100,
    suite=general.SuiteConfig(train_per_skill=64, test_per_skill=16),
)


def tiny_suite(cfg: degrade.DegradeConfig = TINY) -> general.Suite:
    return general.make_suite(cfg.suite, general.Vocab.of(cfg.run_config("in-weight", 2).spec))


def test_base_scores_reproduce_from_checkpoint(tmp_path):
    suite = tiny_suite()
    base = degrade.train_base(TINY, suite, progress=False)
    degrade.save_base(tmp_path, base)
    loaded = degrade.load_base(tmp_path, TINY)
    jax.tree.map(np.testing.assert_array_equal, loaded["params"], base["params"])
    assert general.score(loaded["graphdef"], loaded["params"], suite) == base["info"]["scores"]
    assert loaded["info"] == base["info"]
    div = general.divergence(
        base["graphdef"], base["params"], loaded["graphdef"], loaded["params"], suite
    )
    assert div["kl"] == pytest.approx(0.0, abs=1e-6) and div["tv"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="another configuration"):
        degrade.load_base(tmp_path, dataclasses.replace(TINY, base_lr=3e-3))


@pytest.mark.parametrize(("fraction", "n_facts"), [(0.25, 64), (0.5, 256)])
def test_replay_mix_proportion(fraction, n_facts):
    cfg = dataclasses.replace(TINY, replay_fraction=fraction)
    suite = tiny_suite(cfg)
    world = make_fact_world(cfg.run_config("in-weight+replay", n_facts).spec)
    task = degrade.injection_task(cfg, "in-weight+replay", world, suite)
    general_rows = np.isin(task.train.tokens[:, 1], list(general.MARKERS.values()))
    assert general_rows.mean() == pytest.approx(fraction, abs=1e-3)
    assert general_rows.sum() >= cfg.replay_min
    plain = degrade.injection_task(cfg, "in-weight", world, suite)
    np.testing.assert_array_equal(task.monitor.tokens, plain.monitor.tokens)  # facts only
    assert len(plain.train.tokens) == n_facts


def test_model_covers_suite_and_facts():
    cfg = dataclasses.replace(TINY, suite=general.SuiteConfig(length=12))
    assert cfg.model_config().max_len == cfg.suite.width == 28


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--modes", "in-weight,telepathy"], "modes"),
        (["--replay-fraction", "1.5"], "replay fraction"),
        (["--target-recall", "2"], "target recall"),
        (["--modes", "side-memory", "--memory-layer", "2"], "memory_layer"),
        (["--text-file", "/nowhere/text.md"], "'/nowhere/text.md' cannot be read"),
    ],
)
def test_cli_rejects_bad_input(argv, match):
    parser = argparse.ArgumentParser()
    cli_degrade.add_degrade_parser(parser.add_subparsers())
    args = parser.parse_args(["degrade", *argv])
    with pytest.raises(ValueError, match=match):
        args.func(args)


def test_side_memory_cell_summary_row(tmp_path):
    cfg = dataclasses.replace(TINY, modes=("side-memory",), memory_size=64)
    summary = degrade.run_degrade(cfg, tmp_path, progress=False)
    (row,) = summary["rows"]
    assert row["mode"] == "side-memory" and row["n_facts"] == 64
    assert 0.0 <= row["recall"] <= 1.0 and 0.0 <= row["general_accuracy"] <= 1.0
    assert row["kl"] >= 0.0 and 0.0 <= row["tv"] <= 1.0
    record = degrade.read_json(tmp_path / "side-memory-64" / "record.json")
    assert record["model"]["memory_mode"] == "add"
    assert record["params"]["memory"] == 64 * 16 + 4 * 2 * 8 * 16
    assert "--memory-size 64" in summary["command"]
    assert "side-memory" in degrade.format_table(summary)


def text_config(path, text: bytes, **fields) -> degrade.DegradeConfig:
    path.write_bytes(text)
    suite = dataclasses.replace(TINY.suite, text_file=str(path), text_train_windows=64)
    return dataclasses.replace(TINY, suite=suite, **fields)


def test_base_key_follows_the_text_content(tmp_path):
    path = tmp_path / "text.md"
    one = text_config(path, b"the first text. " * 20)
    two = text_config(path, b"the other text. " * 20)
    assert one.suite.text_sha256 != two.suite.text_sha256
    assert one.base_key() != two.base_key()  # same path, other content: no reuse
    assert one.base_key()["suite"]["text_bytes"] == 320
    assert "text_sha256" not in TINY.base_key()["suite"]  # keys of bases without a text unchanged


def test_text_degrade_run(tmp_path):
    text = ("Une ligne de texte, é — 字. " * 20).encode()
    cfg = text_config(tmp_path / "text.md", text, modes=("in-weight", "in-weight+replay"))
    summary = degrade.run_degrade(cfg, tmp_path / "out", progress=False)
    base = summary["base"]["scores"]
    assert np.isfinite(base["text_bits_per_byte"]) and base["text_bits_per_byte"] > 0.0
    assert "text_accuracy" not in base  # the text is not in general_accuracy
    skills = cfg.suite.skills
    assert base["general_accuracy"] == pytest.approx(
        np.mean([base[f"{s}_accuracy"] for s in skills])
    )
    for row in summary["rows"]:
        assert row["text_bits_per_byte"] > 0.0 and row["text_kl"] >= 0.0
        assert row["kl"] == pytest.approx(np.mean([row[f"{s}_kl"] for s in skills]))  # no text
        change = row["text_bits_per_byte"] - base["text_bits_per_byte"]
        assert row["text_bits_per_byte_change"] == pytest.approx(change)
    assert f"--text-file {tmp_path / 'text.md'} " in summary["command"]
    assert "text bpb" in degrade.format_table(summary)


def test_learn_tool_is_the_default_protocol_with_its_defaults(monkeypatch):
    seen = {}
    monkeypatch.setattr(
        cli_degrade, "run_degrade", lambda cfg, out, *_: seen.update(cfg=cfg, out=out)
    )
    monkeypatch.setattr(cli_degrade, "format_table", lambda summary: "")
    parser = argparse.ArgumentParser()
    cli_degrade.add_degrade_parser(parser.add_subparsers())
    args = parser.parse_args(["degrade"])
    assert args.protocol == "learn-tool" and args.func(args) == 0
    assert seen["cfg"] == degrade.DegradeConfig()  # unset options keep learn-tool's defaults
    assert str(seen["out"]) == "recall_bench_out/degradation"
