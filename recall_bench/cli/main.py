"""The `recall-bench` parser and entry point: bad input ends in one line and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys

from recall_bench.cli.args import invocation
from recall_bench.cli.capacity import add_capacity_parser
from recall_bench.cli.consolidate import add_consolidate_parser
from recall_bench.cli.degrade import add_degrade_parser
from recall_bench.cli.edit import add_edit_parser
from recall_bench.cli.probe import add_probe_parser
from recall_bench.cli.quantize import add_quantize_parser
from recall_bench.cli.run import add_run_parser
from recall_bench.cli.store_scale import add_store_scale_parser
from recall_bench.cli.sweep import add_sweep_parser
from recall_bench.leaderboard import add_leaderboard_parser
from recall_bench.train import TrainingDiverged
from recall_bench.worlds import SpecError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recall-bench",
        description="How many facts can a model store in its weights, and what does it gain "
        "by calling a key-value tool instead?",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        add_run_parser,
        add_store_scale_parser,
        add_leaderboard_parser,
        add_sweep_parser,
        add_capacity_parser,
        add_degrade_parser,
        add_quantize_parser,
        add_probe_parser,
        add_consolidate_parser,
        add_edit_parser,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand of argv (default: this process's arguments); its summary records
    the command line (invocation) that regenerates it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = invocation(argv)
    try:
        return args.func(args)
    except (ValueError, SpecError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except NotADirectoryError as err:
        print(f"error: {err.filename} is not a folder: choose another --out", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"interrupted {err}".rstrip(), file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (e.g. `| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
