"""`recall-bench quantize`: post-training quantization of saved runs (recall_bench/quantize.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recall_bench import plots, quantize
from recall_bench.cli.args import int_list, output_folder


def add_quantize_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "quantize",
        help="quantize a saved run's weights to b bits and re-evaluate it",
        description="Post-training per-output-channel symmetric round-to-nearest quantization "
        "of every weight matrix (embeddings included; LayerNorm parameters kept) of a run "
        "saved with `recall-bench run ... --save-model`, re-evaluated by the run's own "
        "greedy decoding (in-tool: with the store in the loop). Writes quantization.json.",
    )
    p.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="--out folders of saved runs"
    )
    p.add_argument("--bits", type=int_list, default=(8, 4, 3, 2), help="widths (default 8,4,3,2)")
    p.add_argument(
        "--out", type=Path, help="folder for quantization.json (one RUN_DIR only; default RUN_DIR)"
    )
    p.add_argument(
        "--resume", action="store_true", help="return finished records instead of refusing"
    )
    p.add_argument("--plot", type=Path, metavar="FILE", help="bits/param and recall by width")
    p.add_argument("--json", action="store_true", help="print the records only")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    if args.out is not None and len(args.run_dirs) > 1:
        raise ValueError("--out takes one RUN_DIR; without it each record goes into its RUN_DIR")
    out = output_folder(args.out)
    records = [quantize.quantize_run(d, args.bits, out, args.resume) for d in args.run_dirs]
    if args.plot is not None:
        plots.quantization(records, args.plot)
    if args.json:
        print(json.dumps(records if len(records) > 1 else records[0], indent=2))
    else:
        print("\n\n".join(quantize.format_record(r) for r in records))
    return 0
