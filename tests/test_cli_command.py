"""The command a summary records is the one it was run with, less the flags that change only
how it runs (--resume) or prints (--quiet, --json): parsed back, it gives the same config."""

import shlex
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import recall_bench.cli.consolidate as cli_consolidate
import recall_bench.cli.degrade as cli_degrade
import recall_bench.cli.sweep as cli_sweep
import recall_bench.cli.tool_base as cli_tool_base
from recall_bench.cli.args import RUN_ONLY_FLAGS, invocation
from recall_bench.cli.main import build_parser, main
from recall_bench.experiments import default

PARSER = build_parser()  # parsing leaves it as it was
RUN_ONLY = ("--resume", "--res", "--quiet", "--q", "--json", "--js")  # with abbreviations
ints = st.lists(st.integers(1, 10**6), min_size=1, max_size=3).map(lambda v: ",".join(map(str, v)))
floats = st.floats(1e-6, 0.99).map(repr)
paths = st.text(st.sampled_from("ab -'\"é/"), min_size=1, max_size=12).filter(
    lambda p: not p.startswith("-")
)
OPTIONS = {  # subcommand: its options with a value, a strategy of values each
    "degrade": {
        "--protocol": st.sampled_from(("learn-tool", "joint", "tool-base")),
        "--facts": ints,
        "--layers": st.integers(1, 8).map(str),
        "--lr": floats,
        "--modes": st.sampled_from(("in-weight", "in-tool,side-memory")),
        "--seeds": st.sampled_from(("0", "0,1,2")),
        "--general-fraction": floats,
        "--memory-size": st.integers(1, 4096).map(str),
        "--text-file": paths,
        "--out": paths,
    },
    "consolidate": {"--facts": ints, "--shares": floats, "--lr": floats, "--out": paths},
    "run": {
        "--mode": st.sampled_from(("in-weight", "in-tool")),
        "--facts": st.integers(1, 10**6).map(str),
        "--out": paths,
    },
}


@st.composite
def command_lines(draw) -> list[str]:
    """A subcommand, some of its options in any order, and some run-only flags among them."""
    sub = draw(st.sampled_from(sorted(OPTIONS)))
    names = draw(st.lists(st.sampled_from(sorted(OPTIONS[sub])), unique=True))
    pairs = [[name, draw(OPTIONS[sub][name])] for name in names]
    flags = [f for f in RUN_ONLY if sub != "consolidate" or "--res" not in f]  # it never resumes
    pairs += [[flag] for flag in draw(st.lists(st.sampled_from(flags), unique=True))]
    return [sub, *(word for pair in draw(st.permutations(pairs)) for word in pair)]


def subparsers(parser) -> dict:
    """The subcommands' parsers, sub-subcommands (leaderboard's) included, by name."""
    found = {}
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        for name, sub in action.choices.items():
            found[name] = sub
            found.update(subparsers(sub))
    return found


def test_run_only_flags_take_no_value_and_no_other_option_abbreviates_them():
    """Dropping a run-only flag (or what argparse reads as its abbreviation) from a command
    line leaves every other option and value in place."""
    for name, sub in subparsers(build_parser()).items():
        for action in sub._actions:
            for option in action.option_strings:
                if option in RUN_ONLY_FLAGS:
                    assert action.nargs == 0, (name, option)
                else:
                    assert not any(f.startswith(option) for f in RUN_ONLY_FLAGS), (name, option)


@given(command_lines())
def test_recorded_command_parses_back_to_the_same_arguments(argv):
    command = invocation(argv)
    words = shlex.split(command)
    assert words[0] == "recall-bench" and not set(words) & set(RUN_ONLY)
    given_args, again = vars(PARSER.parse_args(argv)), vars(PARSER.parse_args(words[1:]))
    for dest in ("resume", "quiet", "json"):
        assert again.pop(dest, False) is False
        given_args.pop(dest, None)
    assert again == given_args
    assert invocation(words[1:]) == command  # recording it again changes nothing


def spied(monkeypatch, module, name: str) -> list:
    """Calls of module.name, replaced by one that records its arguments and returns {}."""
    calls = []
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append((a, k)) or {})
    return calls


SWEEP = str(Path(__file__).parent.parent / "configs" / "three_modes.toml")
OUT = ["--out", "o ut"]
CASES = {  # argv: where the CLI hands its work over (module, function)
    "learn-tool": (
        ["degrade", "--facts", "8,64", "--lr", "3e-3", *OUT],
        (cli_degrade, "run_degrade"),
    ),
    "joint": (
        ["degrade", "--protocol", "joint", "--seeds", "0,1", *OUT],
        (cli_degrade, "run_joint"),
    ),
    "frontier": (
        [
            "degrade",
            "--protocol",
            "joint",
            "--general-fraction",
            "0.9,0.5",
            "--reference",
            "r",
            *OUT,
        ],
        (cli_degrade, "run_frontier"),
    ),
    "tool-base": (
        ["degrade", "--protocol", "tool-base", "--lrs", "1e-4,1e-3", *OUT],
        (cli_tool_base, "run_tool_base"),
    ),
    "consolidate": (
        ["consolidate", "--facts", "16", "--seeds", "0,1", *OUT],
        (cli_consolidate, "run_consolidate"),
    ),
    "sweep": (["sweep", SWEEP, "--set", "steps=10", *OUT], (cli_sweep, "run_sweep")),
    "sweep merge": (["sweep", "merge", "a b", "-o", "m.json"], (cli_sweep, "merge")),
    "default": (["run", *OUT], (default, "run_default")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_summary_gets_the_command_it_ran_and_that_command_runs_it_again(
    monkeypatch, tmp_path, case
):
    """main hands the summary's writer the command line it was given less run-only flags;
    rerun, that command hands over the same config and out folder, and records itself."""
    argv, (module, name) = CASES[case]
    monkeypatch.chdir(tmp_path)
    calls = spied(monkeypatch, module, name)
    flags = ["--quiet", "--json"] if case == "consolidate" else ["--res", "--json"]
    assert main([argv[0], *flags, *argv[1:]]) == 0
    command = calls[-1][1].get("command", calls[-1][0][-1])
    assert command == shlex.join(["recall-bench", *argv])
    assert main([*shlex.split(command)[1:], "--json"]) == 0  # --json: the stub's summary is {}
    (first, first_kw), (again, again_kw) = calls
    what = [a for a in first if not isinstance(a, bool)]  # progress and resume apart
    assert [a for a in again if not isinstance(a, bool)] == what and again_kw == first_kw
