"""The weight editors' settings from the command line, and bases saved once and edited
again (`edit --save-bases DIR`, then `--from DIR`) exactly as freshly trained ones."""

import dataclasses

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recall_bench import general
from recall_bench.cli import main
from recall_bench.cli.edit import weight_config
from recall_bench.cli.main import build_parser
from recall_bench.edit_weights import WeightEditConfig
from recall_bench.experiments import edits as protocol
from recall_bench.experiments.config import RunConfig

FLAGS = {
    "memit_weight": "--memit-weight",
    "value_steps": "--value-steps",
    "value_lr": "--value-lr",
    "value_decay": "--value-decay",
    "ridge": "--ridge",
}
positive = st.floats(1e-6, 1e6, allow_nan=False)
settings = st.fixed_dictionaries(
    {},
    optional={
        "memit_weight": positive,
        "value_steps": st.integers(1, 10_000),
        "value_lr": positive,
        "value_decay": st.one_of(st.just(0.0), positive),
        "ridge": positive,
    },
)


PARSER = build_parser()


def parsed(argv: list[str]) -> WeightEditConfig:
    return weight_config(PARSER.parse_args(["edit", *argv]), WeightEditConfig())


@given(settings)
def test_weight_flags_set_their_fields_and_leave_the_rest_default(given_settings):
    argv = [a for name, v in given_settings.items() for a in (FLAGS[name], repr(v))]
    cfg = parsed(argv)
    expected = dataclasses.replace(WeightEditConfig(), **given_settings)
    assert cfg == expected
    for name in set(FLAGS) - set(given_settings):
        assert getattr(cfg, name) == getattr(WeightEditConfig(), name)


def test_block_flags_reach_the_weight_config():
    cfg = parsed(["--rome-layer", "0", "--memit-layers", "1", "--memit-weight", "300"])
    assert (cfg.rome_layer, cfg.memit_layers, cfg.memit_weight) == (0, (1,), 300.0)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--memit-weight", "0", "must be a positive finite number"),
        ("--value-lr", "nan", "must be a positive finite number"),
        ("--ridge", "-1e-3", "must be a positive finite number"),
        ("--value-decay", "-0.1", "must be a finite number >= 0"),
        ("--value-steps", "0", "must be >= 1"),
        ("--value-steps", "2.5", "is not an integer"),
    ],
)
def test_bad_weight_flags_exit_2_naming_the_flag(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", f"{flag}={value}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and flag in err and message in err


def tiny_edits() -> protocol.EditsConfig:
    base = RunConfig(
        n_facts=32, attribute_sizes=(16, 16), value_length=2, value_alphabet=16,
        layers=1, width=16, heads=2, steps=40, warmup_steps=5, batch_size=32,
    )  # fmt: skip
    suite = general.SuiteConfig(skills=("copy",), train_per_skill=16, test_per_skill=8)
    weights = WeightEditConfig(value_steps=5, memit_weight=10.0)
    return protocol.EditsConfig(
        base=base, ks=(2,), methods=("memit",), seeds=(0, 1), weights=weights, suite=suite
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(the config, two freshly trained bases, the folder they were saved to)."""
    cfg, folder = tiny_edits(), tmp_path_factory.mktemp("bases")
    fresh = protocol.train_bases(cfg, "in-weight", progress=False)
    protocol.save_bases(fresh, folder)
    return cfg, fresh, folder


def test_saved_bases_read_back_bitwise(trained):
    _, fresh, folder = trained
    saved = protocol.bases_from(folder)
    assert list(saved) == ["in-weight"] and [b.cfg.seed for b in saved["in-weight"]] == [0, 1]
    for a, b in zip(fresh, saved["in-weight"], strict=True):
        assert a.cfg == b.cfg and np.array_equal(a.right, b.right)
        assert b.suite is not None and b.suite.config == a.suite.config
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
            assert np.array_equal(np.asarray(x), np.asarray(y))
        assert b.info == {**a.info, "saved_base": str(folder / f"in-weight-seed{a.cfg.seed}")}


def test_edits_from_saved_bases_equal_edits_from_freshly_trained_ones(trained):
    cfg, fresh, folder = trained
    saved = protocol.bases_from(folder)["in-weight"]
    records = [protocol.run_edits(cfg, None, False, {"in-weight": b}) for b in (fresh, saved)]
    assert [(r["method"], r["seed"]) for r in records[0]] == [("memit", 0), ("memit", 1)]
    for a, b in zip(*records, strict=True):
        assert (a["method"], a["seed"], a["config"]) == (b["method"], b["seed"], b["config"])
        assert a["metrics"] == b["metrics"] and a["general_ability"] == b["general_ability"]
        assert a["cost"]["params_changed"] == b["cost"]["params_changed"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--save-bases", "b"], "--save-bases saves the bases this command trains: drop --from"),
        (["--general"], "--from takes the base models' shape, seeds and general suite"),
        (["--seeds", "0"], "--from takes the base models' shape, seeds and general suite"),
        (["--methods", "store-memory"], "need a saved in-tool base in --from"),
    ],
)
def test_from_saved_bases_refuses_what_they_fix(trained, argv, message, capsys, tmp_path):
    argv = ["edit", "--from", str(trained[2]), *argv, "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_save_bases_refuses_a_folder_that_holds_bases(trained, capsys, tmp_path):
    argv = ["edit", "--save-bases", str(trained[2]), "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "already holds bases: choose another" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
