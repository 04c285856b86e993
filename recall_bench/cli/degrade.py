"""`recall-bench degrade`: general ability under fact injection, by protocol: learn-tool
(fine-tune a base model on facts) or joint (one model trained on general data and facts)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from recall_bench import general
from recall_bench.cli.args import (
    add_memory_arguments,
    command_of,
    int_list,
    memory_options,
    number_list,
    output_folder,
    positive_float,
    positive_int,
    refuse_ignored,
    seed_list,
)
from recall_bench.cli.tool_base import add_tool_base_arguments, cmd_tool_base
from recall_bench.experiments.degrade import MODES, DegradeConfig, format_table, run_degrade
from recall_bench.experiments.joint import JointConfig
from recall_bench.experiments.joint_report import format_frontier, run_frontier, run_joint
from recall_bench.experiments.joint_report import format_table as format_joint
from recall_bench.experiments.tool_base import ToolBaseConfig
from recall_bench.records import clean_json


def add_degrade_parser(subparsers) -> None:
    d, j = DegradeConfig(), JointConfig()
    held = f"{d.suite.text_held_out:.0%}".replace("%", "%%")  # argparse formats help with %
    p = subparsers.add_parser(
        "degrade",
        help="general-ability degradation as facts are added in weights versus in a tool",
        description="Train a base model on a general suite, inject N facts in-weight, in-tool, "
        "with general replay, or into a product-key memory added to the frozen base model "
        "(side-memory), and measure the change in general accuracy and the KL/TV divergence "
        "from the base model.",
    )
    p.add_argument(
        "--protocol",
        choices=("learn-tool", "joint", "tool-base"),
        default="learn-tool",
        help="learn-tool: fine-tune a base model on facts (the options below); joint: train "
        "one model from scratch on general data and facts together (shared capacity; unset "
        "shared options take its own defaults); tool-base: a base trained with tool traces "
        "and old facts receives new facts by a store write or in-weight fine-tuning",
    )
    p.add_argument("--facts", type=int_list, help=f"fact counts (default {d.fact_counts})")
    p.add_argument(
        "--modes",
        type=lambda s: tuple(s.split(",")),
        help=f"comma-separated subset of {','.join(MODES)} (joint: in-weight,in-tool)",
    )
    p.add_argument(
        "--layers", type=positive_int, help=f"default {d.facts.layers} (joint {j.facts.layers})"
    )
    p.add_argument(
        "--width", type=positive_int, help=f"default {d.facts.width} (joint {j.facts.width})"
    )
    p.add_argument(
        "--heads", type=positive_int, help=f"default {d.facts.heads} (joint {j.facts.heads})"
    )
    p.add_argument("--base-steps", type=positive_int, help=f"default {d.base_steps}")
    p.add_argument(
        "--steps",
        type=positive_int,
        help=f"injection step budget (default {d.facts.steps}; joint {j.facts.steps})",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        help=f"default {d.facts.batch_size} (joint {j.facts.batch_size})",
    )
    p.add_argument("--base-lr", type=positive_float, help=f"default {d.base_lr}")
    p.add_argument(
        "--lr",
        type=positive_float,
        help=f"fact-injection lr (default {d.facts.lr}; joint {j.facts.lr})",
    )
    p.add_argument("--target-recall", type=positive_float, help=f"default {d.target_recall}")
    p.add_argument("--replay-fraction", type=positive_float, help=f"default {d.replay_fraction}")
    add_memory_arguments(p, d.facts, "adds to (< 0: counted from the last)")
    p.add_argument(
        "--text-file",
        help="a UTF-8 text file added to the general suite, scored in bits per byte on its "
        f"last {held} (`stdlib:REL`: a file of Python's standard library; "
        f"joint default {general.STDLIB_TEXT})",
    )
    p.add_argument(
        "--seed", type=int, default=d.facts.seed, help="learn-tool's seed (joint: --seeds)"
    )
    p.add_argument(
        "--out",
        type=Path,
        help="default recall_bench_out/degradation (joint: recall_bench_out/degradation_v2)",
    )
    p.add_argument("--json", action="store_true", help="print the summary JSON only")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--resume", action="store_true", help="keep the finished cells in --out")
    add_joint_arguments(p)
    add_tool_base_arguments(p)
    p.set_defaults(func=cmd_degrade)


def cmd_degrade(args: argparse.Namespace) -> int:
    if args.protocol == "joint":
        return cmd_joint(args)
    if args.protocol == "tool-base":
        return cmd_tool_base(args)
    d = DegradeConfig()
    if "side-memory" not in (args.modes or d.modes):
        refuse_ignored(memory_options(args), "they shape a side memory and --modes has none")
    output_folder(args.out)
    facts = {**given_run_fields(args), **memory_options(args)}
    cfg = DegradeConfig(
        fact_counts=args.facts or d.fact_counts,
        modes=args.modes or d.modes,
        facts=dataclasses.replace(d.facts, seed=args.seed, **facts),
        base_steps=args.base_steps or d.base_steps,
        base_lr=args.base_lr or d.base_lr,
        target_recall=args.target_recall or d.target_recall,
        replay_fraction=args.replay_fraction or d.replay_fraction,
        suite=general.SuiteConfig(text_file=args.text_file),
    )
    out = args.out or Path("recall_bench_out/degradation")
    summary = run_degrade(cfg, out, not (args.quiet or args.json), args.resume, command_of(args))
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0


def given_run_fields(args: argparse.Namespace) -> dict:
    """The fact-run options both protocols share that were given (unset: the protocol's own
    defaults)."""
    shared = ("layers", "width", "heads", "steps", "batch_size", "lr")
    return {k: getattr(args, k) for k in shared if getattr(args, k) is not None}


def add_joint_arguments(p: argparse.ArgumentParser) -> None:
    """The options only the joint protocol has (the shared ones are degrade's)."""
    d = JointConfig()
    joint = p.add_argument_group("joint protocol")
    joint.add_argument(
        "--capacity-facts",
        type=int_list,
        help="fact counts of the facts-only cells that measure capacity (default: the largest)",
    )
    joint.add_argument(
        "--general-fraction",
        type=number_list(float, None, "0.9,0.25"),
        default=(d.general_fraction,),
        help="share of a mixed cell's rows that are general data; several values (with "
        "--reference) trace the trade-off frontier at the largest --facts, per mode",
    )
    joint.add_argument(
        "--reference",
        type=Path,
        help="a finished joint sweep of the same model and training whose general-only "
        "references (and, for a frontier, facts-only capacity) are reused, not trained",
    )
    joint.add_argument(
        "--zipf",
        type=float,
        default=d.zipf,
        help="exponent of the in-weight cells' fact sampling (0: uniform)",
    )
    joint.add_argument("--rows", type=positive_int, default=d.rows, help="training rows per cell")
    joint.add_argument(
        "--tool-train-entities",
        type=positive_int,
        help="entities of the protocol pool the tool is learned on, once per seed (default: "
        f"joint {d.tool_train_entities}, tool-base {ToolBaseConfig().base.tool_train_entities})",
    )
    joint.add_argument(
        "--seeds",
        type=seed_list,
        default=d.seeds,
        help="seeds, trained together per fact count (e.g. 0,1,2)",
    )


def cmd_joint(args: argparse.Namespace) -> int:
    """`recall-bench degrade --protocol joint`: unset shared options take the joint defaults."""
    d = JointConfig()
    cfg = JointConfig(
        fact_counts=args.facts or d.fact_counts,
        modes=args.modes or d.modes,
        capacity_counts=args.capacity_facts,
        facts=dataclasses.replace(d.facts, **given_run_fields(args)),
        tool_train_entities=args.tool_train_entities or d.tool_train_entities,
        general_fraction=args.general_fraction[0],
        zipf=args.zipf,
        rows=args.rows,
        seeds=args.seeds,
        suite=general.SuiteConfig(text_file=args.text_file or d.suite.text_file),
    )
    out = args.out or Path("recall_bench_out/degradation_v2")
    progress = not (args.quiet or args.json)
    if len(args.general_fraction) > 1:
        if args.reference is None:
            raise ValueError(
                "several --general-fraction values trace the frontier against a finished "
                "sweep: pass --reference DIR (its references and facts-only capacity)"
            )
        for f in args.general_fraction:
            dataclasses.replace(cfg, general_fraction=f)  # validates each before any training
        fractions, ref = args.general_fraction, args.reference
        frontier = run_frontier(cfg, fractions, out, ref, progress, args.resume, command_of(args))
        print(
            json.dumps(clean_json(frontier), indent=2) if args.json else format_frontier(frontier)
        )
        return 0
    summary = run_joint(cfg, out, progress, args.resume, args.reference, command_of(args))
    print(json.dumps(clean_json(summary), indent=2) if args.json else format_joint(summary))
    return 0
