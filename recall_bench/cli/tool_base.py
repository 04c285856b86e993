"""`recall-bench degrade --protocol tool-base`: a base that already uses tools receives new
facts through its store or through its weights (experiments/tool_base.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from recall_bench import general
from recall_bench.cli.args import (
    command_of,
    memory_options,
    non_negative_int,
    number_list,
    output_folder,
    positive_int,
    refuse_ignored,
)
from recall_bench.experiments.tool_base import ToolBaseConfig
from recall_bench.experiments.tool_base_report import format_table, run_tool_base
from recall_bench.records import clean_json


def add_tool_base_arguments(p: argparse.ArgumentParser) -> None:
    """The options only the tool-base protocol has (the shared ones are degrade's)."""
    d = ToolBaseConfig()
    group = p.add_argument_group("tool-base protocol")
    group.add_argument(
        "--lrs",
        type=number_list(float, None, "1e-4,3e-4,1e-3"),
        help=f"constant fine-tuning learning rates (default {d.lrs})",
    )
    group.add_argument(
        "--in-tool-steps",
        type=non_negative_int,
        help="budget of an in-tool fine-tune on the new facts after the store write, at each "
        f"--in-tool-lrs, first-pass stopped (default {d.in_tool_steps}: none)",
    )
    group.add_argument(
        "--in-tool-lrs",
        type=number_list(float, None, "3e-4,1e-3"),
        help=f"constant learning rates of the in-tool fine-tune (default {d.in_tool_lrs})",
    )
    group.add_argument(
        "--old-facts",
        type=positive_int,
        help=f"facts the base learns in-weight, its old knowledge (default {d.base.n_facts})",
    )


def cmd_tool_base(args: argparse.Namespace) -> int:
    """Unset options take the tool-base defaults."""
    if args.modes is not None:
        raise ValueError("--modes would be ignored: the tool-base protocol runs every method")
    refuse_ignored(memory_options(args), "the tool-base protocol has no side memory")
    output_folder(args.out)
    d = ToolBaseConfig()
    base = {
        "layers": args.layers,
        "width": args.width,
        "heads": args.heads,
        "batch_size": args.batch_size,
        "steps": args.base_steps,
        "lr": args.base_lr,
        "n_facts": args.old_facts,
        "tool_train_entities": args.tool_train_entities,
    }
    own = {
        "fact_counts": args.facts,
        "lrs": args.lrs,
        "steps": args.steps,
        "target_recall": args.target_recall,
        "replay_fraction": args.replay_fraction,
        "seeds": args.seeds,
        "in_tool_steps": args.in_tool_steps,
        "in_tool_lrs": args.in_tool_lrs,
    }
    cfg = ToolBaseConfig(
        base=dataclasses.replace(d.base, **{k: v for k, v in base.items() if v is not None}),
        suite=general.SuiteConfig(text_file=args.text_file or d.suite.text_file),
        **{k: v for k, v in own.items() if v is not None},
    )
    out = args.out or Path("recall_bench_out/degradation_v2/tool_base")
    progress = not (args.quiet or args.json)
    summary = run_tool_base(cfg, out, progress, args.resume, command_of(args))
    print(json.dumps(clean_json(summary), indent=2) if args.json else format_table(summary))
    return 0
