"""The `recall-bench` command."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from recall_bench.train import TrainingDiverged
from recall_bench.worlds import SpecError


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def bounded_float(test, what: str):
    """An argparse type: a finite float passing `test`, else an error saying it must be `what`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"{text} must be {what}")
        return value

    return parse


positive_float = bounded_float(lambda v: v > 0, "a positive finite number")
non_negative_float = bounded_float(lambda v: v >= 0, "a finite number >= 0")


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers (e.g. 4096,1000)"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= 1")
    return values


def add_memory_arguments(p, defaults, role: str) -> None:
    """The side-memory options (defaults from `defaults`, a config with memory_* fields):
    the memory in block --memory-layer `role` its MLP. Unset options stay None."""
    p.add_argument(
        "--memory-size",
        type=positive_int,
        help=f"side-memory: value rows, a perfect square (default {defaults.memory_size})",
    )
    p.add_argument(
        "--memory-topk",
        type=positive_int,
        help=f"side-memory: rows read (default {defaults.memory_topk})",
    )
    p.add_argument(
        "--memory-heads", type=positive_int, help=f"side-memory: heads ({defaults.memory_heads})"
    )
    p.add_argument(
        "--memory-key-dim",
        type=positive_int,
        help=f"side-memory: query size per head (default {defaults.memory_key_dim})",
    )
    p.add_argument(
        "--memory-layer",
        type=int,
        help=f"side-memory: block whose MLP the memory {role} (default {defaults.memory_layer})",
    )
    p.add_argument(
        "--memory-lr-scale",
        type=positive_float,
        help="side-memory: learning rate of the value table relative to --lr "
        f"(default {defaults.memory_lr_scale:g})",
    )


MEMORY_OPTIONS = ("layer", "size", "topk", "heads", "key_dim", "lr_scale")


def memory_options(args: argparse.Namespace) -> dict:
    """The side-memory options given on the command line, as config fields (memory_size=...)."""
    given = {f"memory_{name}": getattr(args, f"memory_{name}") for name in MEMORY_OPTIONS}
    return {k: v for k, v in given.items() if v is not None}


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def refuse_ignored(options: dict, why: str) -> None:
    """A ValueError naming options that were given but would be ignored, and why."""
    if options:
        names = ", ".join(sorted(flag(k) for k in options))
        raise ValueError(f"{names} would be ignored: {why}")


def output_folder(path: Path | None) -> Path | None:
    """--out checked: an existing file is refused (a folder is needed)."""
    if path is not None and path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file: give a folder (it is created if missing)")
    return path


# run options that shape one run: the RunConfig field each one sets
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
    "attributes": "attribute_sizes",
    "rule_alpha": "rule_alpha",
    "store": "store",
}


def add_run_parser(subparsers) -> None:
    from recall_bench.experiments.run import RunConfig

    d = RunConfig()
    p = subparsers.add_parser(
        "run",
        help="train and evaluate one model (with no --mode/--facts: the default benchmark)",
        description="Without --mode and --facts, runs the default benchmark: one small model "
        "in both modes over fact counts from below to past its in-weight capacity.",
    )
    p.add_argument("--mode", choices=["in-weight", "in-tool", "side-memory"])
    p.add_argument("--facts", type=positive_int, help="number of facts (entities x attributes)")
    p.add_argument("--layers", type=positive_int, help=f"default {d.layers}")
    p.add_argument("--width", type=positive_int, help=f"default {d.width}")
    p.add_argument("--heads", type=positive_int, help=f"default {d.heads}")
    p.add_argument("--steps", type=positive_int, help=f"step budget (default {d.steps})")
    p.add_argument("--batch-size", type=positive_int, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=positive_float, help=f"peak learning rate (default {d.lr:g})")
    p.add_argument("--seed", type=int, help=f"default {d.seed}")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help=f"default {d.dtype}")
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
        "--store", choices=["memory", "sqlite"], help=f"in-tool: the store (default {d.store})"
    )
    add_memory_arguments(p, d, "replaces")
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
        help="keep the final parameters in --out/model (for `recall-bench quantize`)",
    )
    p.set_defaults(func=cmd_run)


def run_config(args: argparse.Namespace):
    """The RunConfig of a single run's options; unset ones take the dataclass defaults, and
    options its mode would ignore are refused."""
    from recall_bench.experiments.run import RunConfig

    given = {RUN_FIELDS[k]: getattr(args, k) for k in RUN_FIELDS if getattr(args, k) is not None}
    memory = memory_options(args)
    if args.mode != "side-memory":
        refuse_ignored(memory, f"they shape a side memory and --mode is {args.mode}")
    if args.mode != "in-tool":
        refuse_ignored(
            {k: v for k, v in given.items() if k == "store"}, f"--mode {args.mode} uses no store"
        )
    return RunConfig(mode=args.mode, **given, **memory)


def cmd_run(args: argparse.Namespace) -> int:
    from recall_bench.experiments import default
    from recall_bench.experiments.run import run

    progress = not (args.quiet or args.json)
    output_folder(args.out)
    if args.mode is None and args.facts is None:
        given = {k: v for k in RUN_FIELDS if (v := getattr(args, k)) is not None}
        given.update({"save_model": True} if args.save_model else {})
        refuse_ignored(
            {**given, **memory_options(args)},
            "the default benchmark fixes its own model and budget; give --mode and --facts "
            "for a single run",
        )
        summary = default.run_default(
            args.out or Path("recall_bench_out/default"), progress, args.resume
        )
        print(json.dumps(summary, indent=2) if args.json else default.format_table(summary))
        return 0
    if args.mode is None or args.facts is None:
        raise ValueError("give both --mode and --facts for a single run (or neither)")
    cfg = run_config(args)
    rule = "" if cfg.rule_alpha is None else f"-a{cfg.rule_alpha:g}"
    out = args.out or Path("recall_bench_out") / (
        f"{cfg.mode}{rule}-n{cfg.n_facts}-L{cfg.layers}-d{cfg.width}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
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
    rows += [
        ("token accuracy", f"{m['token_accuracy']:.4f}"),
        ("bits memorized", f"{m['bits_memorized']:,.0f} of {record['world']['entropy_bits']:,.0f}"),
        (
            "bits/param",
            f"{m['bits_per_param']:.3f} ({m['bits_per_param_non_embedding']:.3f} non-emb.)",
        ),
    ]
    if "bits_memorized_exceptions" in m:
        rows.append(("bits on exceptions", f"{m['bits_memorized_exceptions']:,.0f}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


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
    )
    print(json.dumps(summary, indent=2) if args.json else store_scale.format_table(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recall-bench",
        description="How many facts can a model store in its weights, and what does it gain "
        "by calling a key-value tool instead?",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_parser(sub)
    add_store_scale_parser(sub)
    from recall_bench.leaderboard import add_leaderboard_parser

    add_leaderboard_parser(sub)
    from recall_bench.experiments.capacity import add_capacity_parser
    from recall_bench.experiments.degrade import add_degrade_parser
    from recall_bench.experiments.sweep import add_sweep_parser

    add_sweep_parser(sub)
    add_capacity_parser(sub)
    add_degrade_parser(sub)
    from recall_bench.quantize import add_quantize_parser

    add_quantize_parser(sub)
    from recall_bench.probe import add_probe_parser

    add_probe_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
