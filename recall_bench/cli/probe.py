"""`recall-bench probe`: ablation, gradient profile and weight removal of a saved run
(recall_bench/probe.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recall_bench import plots, probe
from recall_bench.cli.args import output_folder, positive_int


def add_probe_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "probe",
        help="where a saved run keeps its facts: ablations, gradient profile, removal curves",
        description="Zero and mean ablation of each attention, head and MLP; gradient norms "
        "per layer on recalled vs not recalled facts; recall after zeroing the top-p%% of "
        "the blocks' weights by |gradient x weight|, |weight| or a learned deletion mask vs a "
        "random p%%; a side memory's most-read rows vs random rows. On a sample of the facts "
        "of a run saved with `recall-bench run ... --save-model`.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the --out folder of the run")
    p.add_argument("--sample", type=positive_int, default=2048, help="facts probed (default 2048)")
    p.add_argument(
        "--facts",
        type=positive_int,
        metavar="N",
        help="serve a world of N facts through the store (in-tool runs trained on a protocol "
        "pool, --tool-train-entities; default: the run's own world)",
    )
    p.add_argument("--out", type=Path, help="folder for probe.json (default RUN_DIR)")
    p.add_argument("--resume", action="store_true", help="return a finished record")
    p.add_argument("--plot", type=Path, metavar="FILE", help="ablation heat map, removal curves")
    p.add_argument("--json", action="store_true", help="print the record only")
    p.set_defaults(func=cmd_probe)


def cmd_probe(args: argparse.Namespace) -> int:
    out = output_folder(args.out)
    record = probe.probe_run(args.run_dir, args.sample, out, args.resume, args.facts)
    if args.plot is not None:
        plots.probe(record, args.plot)
    print(json.dumps(record, indent=2) if args.json else probe.format_tables(record))
    return 0
