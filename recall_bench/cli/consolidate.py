"""`recall-bench consolidate`: a tool-using model's own store-mediated answers trained into its
weights offline ("sleep"), against training the true facts directly."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recall_bench.cli.args import (
    command_of,
    int_list,
    non_negative_int,
    number_list,
    output_folder,
    positive_float,
    positive_int,
    seed_list,
)
from recall_bench.experiments.consolidate import METHODS, ConsolidateConfig
from recall_bench.experiments.consolidate_report import format_table, run_consolidate


def add_consolidate_parser(subparsers) -> None:
    d = ConsolidateConfig()
    p = subparsers.add_parser(
        "consolidate",
        help="consolidation: a tool-using model's own answers trained into its weights offline",
        description="Train a base model that answers old facts from its weights and new ones "
        "through a store; then give it N new facts in its store, let it answer them through "
        "the store, and train those answers (or the true facts) into its weights with no store, "
        "with rehearsal of old facts, tool traces and general data. Measures, at each "
        "evaluation step: new facts recalled without the store, old facts kept, recall through "
        "the store, general ability kept.",
    )
    p.add_argument("--facts", type=int_list, default=d.fact_counts, help="new fact counts")
    p.add_argument(
        "--methods",
        type=lambda s: tuple(s.split(",")),
        default=d.methods,
        help=f"comma-separated subset of {','.join(METHODS)}",
    )
    p.add_argument("--old-facts", type=positive_int, default=d.old_facts)
    p.add_argument("--tool-entities", type=positive_int, default=d.tool_entities)
    p.add_argument("--layers", type=positive_int, default=d.layers)
    p.add_argument("--width", type=positive_int, default=d.width)
    p.add_argument("--heads", type=positive_int, default=d.heads)
    p.add_argument("--base-steps", type=positive_int, default=d.base_steps)
    p.add_argument("--base-lr", type=positive_float, default=d.base_lr)
    p.add_argument("--steps", type=non_negative_int, default=d.steps, help="offline budget")
    p.add_argument(
        "--eval-steps",
        type=number_list(int, 0, "0,50,100"),
        help="offline steps at which every model is measured (default: 0, 50, 100, 200, ... "
        "doubling, and --steps)",
    )
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--lr", type=positive_float, default=d.lr, help="offline learning rate")
    p.add_argument("--rows", type=positive_int, default=d.rows, help="training rows per model")
    p.add_argument(
        "--shares",
        type=number_list(float, 0, "0.5,0.15,0.2,0.15"),
        default=(d.new_share, d.old_share, d.tool_share, d.general_share),
        help="offline mixture shares new,old,tool,general (sum 1; general 0: no general data)",
    )
    p.add_argument("--seeds", type=seed_list, default=d.seeds)
    p.add_argument("--out", type=Path, default=Path("recall_bench_out/consolidation"))
    p.add_argument("--json", action="store_true", help="print the summary JSON only")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_consolidate)


def cmd_consolidate(args: argparse.Namespace) -> int:
    if len(args.shares) != 4:
        raise ValueError(f"--shares wants 4 numbers new,old,tool,general, got {len(args.shares)}")
    new, old, tool, gen = args.shares
    cfg = ConsolidateConfig(
        fact_counts=args.facts,
        methods=args.methods,
        old_facts=args.old_facts,
        tool_entities=args.tool_entities,
        layers=args.layers,
        width=args.width,
        heads=args.heads,
        base_steps=args.base_steps,
        base_lr=args.base_lr,
        steps=args.steps,
        eval_steps=args.eval_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        rows=args.rows,
        new_share=new,
        old_share=old,
        tool_share=tool,
        general_share=gen,
        seeds=args.seeds,
    )
    progress = not (args.quiet or args.json)
    summary = run_consolidate(cfg, output_folder(args.out), progress, command_of(args))
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0
