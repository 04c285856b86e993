"""A run never writes a record that lies and never destroys a finished one; every failure a
user can cause is one line; progress suits where it is written."""

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import recall_bench.cli.degrade as cli_degrade
import recall_bench.cli.sweep as cli_sweep
import recall_bench.experiments.default as default
import recall_bench.experiments.degrade as degrade
import recall_bench.experiments.engine as engine
import recall_bench.experiments.run as run_module
import recall_bench.experiments.store_scale as store_scale
import recall_bench.progress as progress_module
from recall_bench.cli import build_parser, main
from recall_bench.experiments.run import RunConfig, make_task
from recall_bench.records import clean_json
from recall_bench.stopping import progress_fields
from recall_bench.train import TrainConfig, train_models
from recall_bench.worlds import make_fact_world

TINY = ["run", "--mode", "in-weight", "--facts", "64", "--layers", "1", "--width", "16"]
TINY += ["--heads", "2", "--steps", "50", "--quiet"]


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_resume_under_another_config_is_refused_naming_the_fields(tmp_path, capsys):
    """Defect 1: a checkpoint of lr 1e-2, width 16 is not continued under --lr or --width."""
    cfg = RunConfig(mode="in-weight", n_facts=64, layers=1, width=16, heads=2, steps=50)
    task = make_task(cfg, make_fact_world(cfg.spec))
    train_models(
        cfg.model_config(), cfg.train_config(), [task], [0], progress=False,
        checkpoint_dir=tmp_path / "checkpoints", checkpoint_every_s=0,
    )  # fmt: skip
    assert (tmp_path / "checkpoints").is_dir()
    changes = {"--lr": "train.lr: 0.01 -> 0.003", "--width": "model.width: 16 -> 32"}
    for flag, field in changes.items():
        value = field.split()[-1]
        assert main([*TINY, flag, value, "--out", str(tmp_path), "--resume"]) == 2
        one_line_error(capsys, "another configuration", field)
    assert not (tmp_path / "record.json").exists()


def test_a_finished_record_is_never_overwritten(tmp_path, capsys, monkeypatch):
    """Defect 2: another config is refused with or without --resume; the same config with
    --resume returns the record without training."""
    assert main([*TINY, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    before = (tmp_path / "record.json").read_bytes()
    for extra in ([], ["--resume"]):
        assert main([*TINY, "--lr", "3e-3", "--out", str(tmp_path), *extra]) == 2
        one_line_error(capsys, "finished record of another configuration", "lr: 0.01 -> 0.003")
    assert main([*TINY, "--out", str(tmp_path)]) == 2  # same config, no --resume
    one_line_error(capsys, "--resume")

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(run_module, "train_group", no_training)
    assert main([*TINY, "--out", str(tmp_path), "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(before)
    assert (tmp_path / "record.json").read_bytes() == before


def test_resume_without_a_checkpoint_says_it_starts_fresh(tmp_path, capsys):
    """Defect 3, second half: --resume on a folder that never ran says so."""
    assert main([*TINY, "--out", str(tmp_path / "new"), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"no checkpoint in {tmp_path / 'new' / 'checkpoints'}; starting fresh" in err


def subcommands() -> list[list[str]]:
    """Every subcommand and sub-subcommand, as argv prefixes."""
    out = []

    def walk(parser, prefix):
        out.append(prefix)
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return out


@pytest.mark.parametrize("prefix", subcommands(), ids=lambda p: " ".join(p) or "top")
def test_every_help_exits_cleanly(prefix, capsys):
    """Defect 4 (a bare % in degrade's help crashed it) for every subcommand."""
    with pytest.raises(SystemExit) as exit_info:
        main([*prefix, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_single_run_options_without_mode_are_an_error(capsys, monkeypatch):
    """Defect 5: options the default benchmark would ignore are refused, not dropped."""
    monkeypatch.setattr(default, "run_default", lambda *a: pytest.fail("default benchmark ran"))
    assert main(["run", "--steps", "100", "--width", "8"]) == 2
    one_line_error(capsys, "--steps", "--width", "--mode and --facts")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--store", "sqlite"], ("--store", "no store")),
        (["--memory-size", "64"], ("--memory-size", "side memory")),
    ],
)
def test_options_a_mode_ignores_are_an_error(argv, needles, tmp_path, capsys):
    assert main([*TINY, *argv, "--out", str(tmp_path)]) == 2
    one_line_error(capsys, *needles)


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    assert main([*TINY, "--out", str(path)]) == 2
    one_line_error(capsys, str(path), "is a file")


def test_a_truncated_record_is_named(tmp_path, capsys):
    (tmp_path / "record.json").write_text('{"config": {')
    assert main([*TINY, "--out", str(tmp_path), "--resume"]) == 2
    one_line_error(capsys, str(tmp_path / "record.json"), "not valid JSON")


def test_negative_checkpoint_interval_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY, "--checkpoint-every", "-5"])
    assert exit_info.value.code == 2
    assert "--checkpoint-every" in capsys.readouterr().err


def test_store_scale_checks_sizes_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engine, "train_models", lambda *a, **k: pytest.fail("trained"))
    assert main(["store-scale", "--sizes", "20000,5000", "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "store size 5000", "above 10000")


def test_degrade_refuses_a_cell_of_another_config_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "train_models", lambda *a, **k: pytest.fail("trained"))
    facts = dataclasses.replace(degrade.FACTS, layers=1, width=16)
    cfg = degrade.DegradeConfig(fact_counts=(64,), modes=("in-weight",), facts=facts)
    cell = tmp_path / "in-weight-64" / "record.json"
    cell.parent.mkdir()
    then = clean_json(dataclasses.asdict(cfg))
    then["facts"]["lr"] = 0.5
    flat = {k: v for k, v in then.items() if k != "facts"} | then["facts"]  # an older record's
    for config in (then, flat):
        cell.write_text(json.dumps({"degrade": {"config": config}}))
        with pytest.raises(
            ValueError, match=r"another configuration \(facts\.lr: 0\.5 -> 0\.001\)"
        ):
            degrade.run_degrade(cfg, tmp_path, progress=False, resume=True)


def test_progress_off_a_terminal_is_plain_lines(capsys, monkeypatch):
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 0.0)
    bar = progress_module.Progress(100, 0, "train")
    bar.update(50, {"loss": "1.000"})
    bar.update(50)
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == [
        "train: step 50/100 loss=1.000",
        "train: step 100/100 loss=1.000",
        "train: step 100/100 loss=1.000",
    ]


def test_late_gain_is_shown_only_once_the_plateau_rule_can_apply():
    cfg = TrainConfig(steps=10_000)
    task = make_task(RunConfig(n_facts=64, layers=1, width=16, heads=2), make_fact_world(
        RunConfig(n_facts=64).spec))  # fmt: skip
    history = [{"step": s, "loss": 1.0, "recall": 0.1, "bits": 10.0 + s} for s in (100, 200)]
    assert "late" not in progress_fields(history, cfg, task)  # step 200 < 7,000
    history += [{"step": 7000, "loss": 1.0, "recall": 0.1, "bits": 7010.0}]
    assert progress_fields(history, cfg, task)["late"] == "+97.0%"


class Ran(Exception):
    """Raised by the stubbed runners: the arguments were accepted."""


def stub(*args, **kwargs):
    raise Ran


WORDS = ["run", "degrade", "store-scale", "sweep", "--protocol", "joint", "--mode", "in-weight",
         "in-tool",
         "side-memory", "--facts", "--modes", "--sizes", "--steps", "--width", "--heads",
         "--lr", "--seed", "--store", "sqlite", "--memory-size", "--memory-layer", "--out",
         "--resume", "--json", "--quiet", "--checkpoint-every", "--attributes", "--rule-alpha",
         "--dtype", "bfloat16", "--text-file", "0", "1", "-1", "64", "2.5", "nan", "x", "4096,16",
         "1,,2", "--", "-h"]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=8))
def test_random_arguments_exit_cleanly(argv):
    """Any argument list ends in a clean exit (0 or 2) or reaches a runner; never a
    traceback."""
    with pytest.MonkeyPatch.context() as mp:
        for module, name in ((run_module, "run"), (default, "run_default"),
                             (store_scale, "run_store_scale"), (cli_degrade, "run_degrade"),
                             (cli_degrade, "run_joint"), (cli_sweep, "run_sweep")):  # fmt: skip
            mp.setattr(module, name, stub)
        try:
            code = main(argv)
        except SystemExit as exit_info:
            code = exit_info.code
        except Ran:
            return
    assert code in (0, 2)
