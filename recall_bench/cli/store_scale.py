"""`recall-bench store-scale`: one in-tool model against stores of 10^4..10^6 facts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recall_bench.cli.args import command_of, int_list, output_folder, positive_int


def add_store_scale_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "store-scale",
        help="one in-tool model against stores of 10^4..10^6 facts (unseen entities)",
    )
    p.add_argument("--out", type=Path, default=Path("recall_bench_out/store_scale"))
    p.add_argument("--sizes", type=int_list, default=(10_000, 100_000, 1_000_000))
    p.add_argument("--sample", type=positive_int, default=2000, help="unseen entities per size")
    p.add_argument("--store", choices=["memory", "sqlite"], default="sqlite")
    p.add_argument("--json", action="store_true", help="print the summary JSON only")
    p.add_argument(
        "--resume", action="store_true", help="return the finished run in --out, or redo it"
    )
    p.set_defaults(func=cmd_store_scale)


def cmd_store_scale(args: argparse.Namespace) -> int:
    from recall_bench.experiments import store_scale

    summary = store_scale.run_store_scale(
        output_folder(args.out),
        args.sizes,
        args.sample,
        args.store,
        progress=not args.json,
        resume=args.resume,
        command=command_of(args),
    )
    print(json.dumps(summary, indent=2) if args.json else store_scale.format_table(summary))
    return 0
