"""`recall-bench run`: one run, a random-token run, or (with no --mode/--facts) the default
benchmark."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recall_bench.cli.args import (
    add_memory_arguments,
    command_of,
    int_list,
    memory_options,
    non_negative_float,
    output_folder,
    positive_float,
    positive_int,
    refuse_ignored,
)
from recall_bench.records import IN_TOOL_NAMES
from recall_bench.tables import format_table

# run options that shape one run: the config field each one sets
RUN_FIELDS = {
    "facts": "n_facts",
    "layers": "layers",
    "width": "width",
    "heads": "heads",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "seed": "seed",
    "dtype": "dtype",
    "warmup_steps": "warmup_steps",
    "schedule": "schedule",
    "weight_decay": "weight_decay",
    "eval_every": "eval_every",
    "monitor_facts": "monitor_facts",
    "grad_transpose": "grad_transpose",
}
FACT_FIELDS = {
    "attributes": "attribute_sizes",
    "rule_alpha": "rule_alpha",
    "store": "store",
    "tool_train_entities": "tool_train_entities",
}
TOKEN_FIELDS = {"vocab": "vocab", "length": "length"}
TOKENS = "random-tokens"


def add_run_parser(subparsers) -> None:
    from recall_bench.experiments.config import RunConfig
    from recall_bench.experiments.tokens import TokenRunConfig
    from recall_bench.methods import MODES
    from recall_bench.model import GRAD_TRANSPOSES

    d, t = RunConfig(), TokenRunConfig()
    p = subparsers.add_parser(
        "run",
        help="train and evaluate one model (with no --mode/--facts: the default benchmark)",
        description="Without --mode and --facts, runs the default benchmark: one small model "
        "in both modes over fact counts from below to past its in-weight capacity.",
    )
    p.add_argument("--mode", choices=[*MODES, TOKENS])
    p.add_argument(
        "--facts",
        type=positive_int,
        help="number of facts (entities x attributes); random-tokens: of sequences",
    )
    p.add_argument("--layers", type=positive_int, help=f"default {d.layers} ({TOKENS}: 1)")
    p.add_argument("--width", type=positive_int, help=f"default {d.width}")
    p.add_argument("--heads", type=positive_int, help=f"default {d.heads}")
    p.add_argument("--steps", type=positive_int, help=f"step budget (default {d.steps})")
    p.add_argument("--batch-size", type=positive_int, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=positive_float, help=f"peak learning rate (default {d.lr:g})")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "bfloat16-mixed"],
        help="float32 (default); bfloat16: parameters, optimizer state and compute; "
        "bfloat16-mixed: bfloat16 compute over float32 master weights and optimizer state",
    )
    p.add_argument("--warmup-steps", type=int, help=f"default {d.warmup_steps}")
    p.add_argument(
        "--schedule", choices=["cosine", "constant"], help="after warmup (default cosine)"
    )
    p.add_argument("--weight-decay", type=non_negative_float, help="AdamW (default 0)")
    p.add_argument(
        "--eval-every",
        type=positive_int,
        help=f"steps between progress checks, a multiple of 25 (default {d.eval_every})",
    )
    p.add_argument(
        "--monitor-facts",
        type=positive_int,
        help=f"facts checked at each progress check (default {d.monitor_facts})",
    )
    p.add_argument(
        "--grad-transpose",
        choices=list(GRAD_TRANSPOSES),
        help="weight gradients from the transposed input (default) or from the narrower of "
        "input and output gradient: faster on a CPU at width <= 128, not bitwise the same",
    )
    add_fact_arguments(p, d)
    add_memory_arguments(p, d, "replaces")
    p.add_argument("--vocab", type=positive_int, help=f"{TOKENS}: symbols (default {t.vocab})")
    p.add_argument(
        "--length", type=positive_int, help=f"{TOKENS}: tokens per sequence (default {t.length})"
    )
    p.add_argument("--out", type=Path, help="output folder (default: ./recall_bench_out/...)")
    p.add_argument("--json", action="store_true", help="print the JSON record only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped run from its --out folder (a finished one: return its record)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=non_negative_float,
        default=30.0,
        metavar="SECONDS",
        help="save a checkpoint at most this often (default 30; 0: at every progress check)",
    )
    p.add_argument(
        "--save-model",
        action="store_true",
        help="keep the final parameters in --out/model (for `recall-bench quantize` and `probe`)",
    )
    p.set_defaults(func=cmd_run)


def add_fact_arguments(p, d) -> None:
    """The options that shape a fact world and its store (defaults from the RunConfig d)."""
    from recall_bench.methods import METHODS

    stored = ", ".join(name for name, m in METHODS.items() if m.uses_store)
    held_out = ", ".join(name for name, m in METHODS.items() if m.holds_out)
    p.add_argument(
        "--attributes",
        type=int_list,
        help="value-space size of each attribute, comma-separated (default 4096: 12 bits)",
    )
    p.add_argument(
        "--rule-alpha",
        type=float,
        metavar="ALPHA",
        help="structured world: each value follows a rule on the key except with probability "
        "ALPHA in [0, 1] (default: fully random values)",
    )
    p.add_argument(
        "--store",
        choices=["memory", "sqlite"],
        help=f"{stored}: the store (default {d.store})",
    )
    p.add_argument(
        "--tool-train-entities",
        type=positive_int,
        metavar="K",
        help=f"{held_out}: learn the protocol on K entities of a pool disjoint from the world "
        "(its own seed), and evaluate every fact of the world as unseen (default: train on "
        "the world's first entities)",
    )


def given_fields(args: argparse.Namespace, fields: dict) -> dict:
    """The options of `fields` given on the command line, as config fields."""
    return {f: getattr(args, k) for k, f in fields.items() if getattr(args, k) is not None}


def run_config(args: argparse.Namespace):
    """The config of a single run's options; unset ones take the dataclass defaults, and
    options its mode would ignore are refused."""
    from recall_bench import methods
    from recall_bench.experiments.config import RunConfig
    from recall_bench.experiments.tokens import TokenRunConfig

    given, facts = given_fields(args, RUN_FIELDS), given_fields(args, FACT_FIELDS)
    tokens, memory = given_fields(args, TOKEN_FIELDS), memory_options(args)
    if args.mode == TOKENS:
        refuse_ignored(memory, f"they shape a side memory and --mode is {args.mode}")
        refuse_ignored(facts, f"they shape fact worlds and --mode is {TOKENS}")
        return TokenRunConfig(**given, **tokens)
    method = methods.get(args.mode)
    if not method.side_memory:
        refuse_ignored(memory, f"they shape a side memory and --mode is {args.mode}")
    refuse_ignored(tokens, f"they shape random-token data and --mode is {args.mode}")
    if not method.uses_store:
        store = {k: v for k, v in facts.items() if k == "store"}
        refuse_ignored(store, f"--mode {args.mode} uses no store")
    return RunConfig(mode=args.mode, **given, **facts, **memory)


def cmd_run(args: argparse.Namespace) -> int:
    from recall_bench.experiments import default
    from recall_bench.experiments.run import run

    progress = not (args.quiet or args.json)
    output_folder(args.out)
    if args.mode is None and args.facts is None:
        options = [RUN_FIELDS, FACT_FIELDS, TOKEN_FIELDS]
        refuse_ignored(
            {k: v for fields in options for k, v in given_fields(args, fields).items()}
            | memory_options(args)
            | ({"save_model": True} if args.save_model else {}),
            "the default benchmark fixes its own model and budget; give --mode and --facts "
            "for a single run",
        )
        out = args.out or Path("recall_bench_out/default")
        summary = default.run_default(out, progress, args.resume, command=command_of(args))
        print(json.dumps(summary, indent=2) if args.json else default.format_table(summary))
        return 0
    if args.mode is None or args.facts is None:
        raise ValueError("give both --mode and --facts for a single run (or neither)")
    cfg = run_config(args)
    rule = "" if getattr(cfg, "rule_alpha", None) is None else f"-a{cfg.rule_alpha:g}"
    out = args.out or Path("recall_bench_out") / (
        f"{cfg.mode}{rule}-n{cfg.n_facts}-L{cfg.layers}-d{cfg.width}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if cfg.mode == TOKENS:
        refuse_ignored({"save_model": True} if args.save_model else {}, "fact runs only")
    record = run(cfg, out, progress, args.resume, args.checkpoint_every, args.save_model)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(format_record(record))
        print(f"record: {out / 'record.json'}")
    return 0


def format_record(record: dict) -> str:
    """A short human summary of one run record."""
    m, t, p = record["metrics"], record["train"], record["params"]
    rows = [
        ("mode", record["mode"]),
        ("facts", f"{record['n_facts']} x {record['bits_per_fact']:.2f} bits"),
        ("params", f"{p['total']:,} total, {p['non_embedding']:,} non-embedding"),
    ]
    if "memory" in p:
        rows.append(
            (
                "memory",
                f"{p['memory']:,} memory, {p['dense']:,} dense, "
                f"{p['active_per_token']:,} active per token",
            )
        )
    rows.append(
        (
            "steps",
            f"{t['steps']} ({t['stop_reason']}, {t['exposures_per_fact']:.0f} exposures/fact)",
        )
    )
    if t.get("late_bits_gain") is not None:
        rows.append(
            (
                "late gain",
                f"{t['late_bits_gain']:+.1%} monitored bits over the last "
                f"{t['late_window']:.0%} of steps",
            )
        )
    rows += [
        ("train time", f"{t['wall_s']:.1f} s (+{t['compile_s']:.1f} s compile)"),
        ("recall", f"{m['recall']:.4f}"),
    ]
    for key in (
        "recall_trained",
        "recall_unseen",
        "call_valid",
        "call_key_accuracy",
        "copy_accuracy",
        "recall_rule",
        "recall_exceptions",
        "rule_accuracy",
        "held_out_rule_accuracy",
        "held_out_accuracy",
        "bits_per_memory_param",
        "bits_per_active_param",
    ):
        if m.get(key) is not None:
            rows.append((key.replace("_", " "), f"{m[key]:.4f}"))
    held = "bits_memorized" in m  # in-tool's bits are delivered with the store's help
    bits, per_param, non_embedding, exceptions = IN_TOOL_NAMES if held else IN_TOOL_NAMES.values()
    rows += [
        ("token accuracy", f"{m['token_accuracy']:.4f}"),
        (bits.replace("_", " "), f"{m[bits]:,.0f} of {record['world']['entropy_bits']:,.0f}"),
        (
            "bits/param" if held else "delivered/param",
            f"{m[per_param]:.3f} ({m[non_embedding]:.3f} non-emb.)",
        ),
    ]
    if "bits_memorized_corrected" in m:
        rows.append(
            (
                "noise floor",
                f"{m['noise_floor_bits_per_fact']:.3f} bits/fact on unseen facts; above it "
                f"{m['bits_memorized_corrected']:,.0f} bits, {m['bits_per_param_corrected']:.3f} "
                "bits/param",
            )
        )
    if exceptions in m:
        rows.append(("bits on exceptions", f"{m[exceptions]:,.0f}"))
    fields = [{"field": k, "value": v} for k, v in rows]
    return format_table(fields, [("", "field"), ("", "value")], header=False)
