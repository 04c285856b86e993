"""`recall-bench sweep`: a grid of cells from a TOML file, or a merge of shards' records."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recall_bench import devices
from recall_bench.cli.args import command_of
from recall_bench.experiments.sweep import format_summary, load_sweep, merge, run_sweep


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: write i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: needs 0 <= i < n")
    return i, n


def add_sweep_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of cells from a TOML file (or merge shards' records)",
        description="recall-bench sweep CONFIG.toml [--out DIR] [--shard i/n] [--resume] | "
        "recall-bench sweep merge DIR... -o SUMMARY.json. Cells differing only in seed train "
        "as one ensemble; a cell whose record holds the same config is never rerun.",
    )
    p.add_argument("target", nargs="+", metavar="CONFIG.toml | merge DIR...")
    p.add_argument("--out", type=Path, help="output folder (default: the file's `out`)")
    p.add_argument(
        "--shard", type=parse_shard, default=(0, 1), help="run ensembles j with j mod n = i"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key in every grid, VALUE in TOML (steps=100, seed=[0,1])",
    )
    p.add_argument(
        "--resume", action="store_true", help="keep finished cells, continue killed ones"
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="one of several processes (jax.distributed, from JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES, JAX_PROCESS_ID or the cluster): each ensemble is split over all "
        "their devices; process 0 writes",
    )
    p.add_argument("--json", action="store_true", help="print the summary JSON only")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("-o", "--output", type=Path, help="merge: the summary file to write")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.target[0] == "merge":
        if len(args.target) < 2 or args.output is None:
            raise ValueError("sweep merge needs folders and -o SUMMARY.json")
        summary = merge(args.target[1:], args.output, command_of(args))
    else:
        if len(args.target) != 1:
            raise ValueError("give one sweep file (or: sweep merge DIR... -o SUMMARY.json)")
        if args.distributed:
            devices.initialize()
        sweep = load_sweep(args.target[0], args.overrides)
        out = args.out or sweep.out or Path("recall_bench_out/sweeps") / sweep.name
        progress = not (args.quiet or args.json)
        summary = run_sweep(sweep, out, args.shard, args.resume, progress, command_of(args))
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
