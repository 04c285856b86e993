"""`recall-bench capacity`: capacity fits and params-for-recall from finished sweep folders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from recall_bench.cli.args import command_of
from recall_bench.experiments.capacity import (
    PUBLISHED_BITS_PER_FACT,
    PUBLISHED_PARAMS_FOR_RECALL,
    RECALL_TARGET,
    capacity_summary,
    format_capacity,
    format_params_for_recall,
    load_records,
    params_for_recall,
    write_plots,
)
from recall_bench.records import environment, write_json_atomic


def add_capacity_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "capacity",
        help="capacity fits and params-for-recall from finished sweep folders",
        description="Reads every record.json under the folders (e.g. a sweep, or its shards), "
        "computes each model's capacity (max bits memorized over fact counts), the bits/param "
        "fit with a bootstrap interval over seeds per world kind and dtype, and the smallest "
        f"model reaching {RECALL_TARGET:.0%} recall per fact count and mode.",
    )
    p.add_argument("folders", nargs="+", type=Path, metavar="SWEEP_DIR")
    p.add_argument("--plots", type=Path, metavar="DIR", help="write the figures into DIR")
    p.add_argument(
        "--params-for-recall",
        type=Path,
        metavar="FILE",
        help="write the params-for-recall table with its provenance to FILE",
    )
    p.add_argument(
        "--out", type=Path, metavar="FILE", help="write the summary JSON (with provenance) to FILE"
    )
    p.add_argument("--json", action="store_true", help="print the summary JSON only")
    p.set_defaults(func=cmd_capacity)


def cmd_capacity(args: argparse.Namespace) -> int:
    records = load_records(args.folders)
    if not records:
        raise ValueError(f"no record.json under {', '.join(map(str, args.folders))}")
    cap, rows = capacity_summary(records), params_for_recall(records)
    env = environment()
    provenance = {
        "command": command_of(args),
        "sources": [str(f) for f in args.folders],
        "git_commit": env["git_commit"],
        "git_dirty": env["git_dirty"],
    }
    summary: dict[str, Any] = {
        "records": len(records),
        "capacity": cap,
        "params_for_recall": rows,
        "provenance": provenance,
    }
    if args.plots is not None:
        summary["plots"] = write_plots(cap, rows, args.plots)
    if args.params_for_recall is not None:
        table = {
            "target_recall": RECALL_TARGET,
            "dtype": "float32",
            "rows": rows,
            "published_in_weight": {  # Houliston et al. 2025: params at N facts
                "params": PUBLISHED_PARAMS_FOR_RECALL,
                "bits_per_fact": PUBLISHED_BITS_PER_FACT,
            },
        }
        write_json_atomic(args.params_for_recall, {**table, "provenance": provenance})
    if args.out is not None:
        write_json_atomic(args.out, summary)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_capacity(cap))
        print(format_params_for_recall(rows))
    return 0
