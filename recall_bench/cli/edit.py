"""`recall-bench edit`: change k facts of a trained model by every method and measure
efficacy, generalization, specificity and cost (recall_bench/experiments/edits.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from recall_bench.cli.args import (
    int_list,
    non_negative_float,
    output_folder,
    positive_float,
    positive_int,
    seed_list,
)

BASE_FLAGS = (
    "facts", "layers", "width", "heads", "steps", "batch_size", "lr", "value_length",
    "value_alphabet",
)  # fmt: skip


WEIGHT_FLAGS = (
    "rome_layer", "memit_layers", "memit_weight", "value_steps", "value_lr", "value_decay",
    "ridge",
)  # fmt: skip


def add_edit_parser(subparsers) -> None:
    from recall_bench.experiments.edits import METHODS, EditsConfig

    d = EditsConfig()
    p = subparsers.add_parser(
        "edit",
        help="change k facts of a model: store vs fine-tuning, ROME, MEMIT",
        description="Change the values of k random facts of trained models by writing the "
        "store (in-tool) or the weights (fine-tuning with and without replay, ROME, MEMIT), "
        "and record efficacy, generalization (a second phrasing), specificity and cost per "
        "edit. Without --from, trains base models that know the facts in both phrasings "
        "(in-weight) or answer them through a store (in-tool), one per seed.",
    )
    p.add_argument(
        "--from",
        dest="runs",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="edit the bases saved by `edit --save-bases`, or runs saved with "
        "`recall-bench run ... --save-model` (one per mode)",
    )
    p.add_argument(
        "--save-bases",
        type=Path,
        metavar="DIR",
        help="save the bases this command trains to DIR, for later `edit --from DIR` (a search "
        "over the edit settings then trains them once)",
    )
    p.add_argument("--k", type=int_list, help=f"edit counts (default {_csv(d.ks)})")
    p.add_argument("--methods", help=f"comma-separated, of {', '.join(METHODS)} (default all)")
    p.add_argument("--seeds", type=seed_list, help=f"default {_csv(d.seeds)}")
    p.add_argument("--facts", type=positive_int, help=f"default {d.base.n_facts}")
    p.add_argument(
        "--value-length", type=positive_int, help=f"value tokens (default {d.base.value_length})"
    )
    p.add_argument(
        "--value-alphabet",
        type=positive_int,
        help=f"value symbols (default {d.base.value_alphabet})",
    )
    p.add_argument(
        "--general",
        action="store_true",
        help="bases also learn the general suite (half their rows, a fixed step budget) and "
        "every record measures the general ability kept; needs rows of 20 tokens "
        "(--value-length 2)",
    )
    for flag in ("layers", "width", "heads", "steps", "batch-size"):
        p.add_argument(f"--{flag}", type=positive_int, help="base model (see `run`)")
    p.add_argument("--lr", type=positive_float, help="base model's peak learning rate")
    p.add_argument("--tool-steps", type=positive_int, help=f"default {d.tool_steps}")
    p.add_argument(
        "--tool-train-entities",
        type=positive_int,
        help=f"in-tool base: protocol-pool entities (default {d.tool_train_entities})",
    )
    add_weight_flags(p, d.weights)
    p.add_argument("--finetune-steps", type=positive_int, help=f"default {d.finetune_steps}")
    p.add_argument("--finetune-lr", type=positive_float, help=f"default {d.finetune_lr:g}")
    p.add_argument("--out", type=Path, default=Path("recall_bench_out/edits"))
    p.add_argument("--json", action="store_true", help="print the summary rows as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_edit)


def add_weight_flags(p: argparse.ArgumentParser, w) -> None:
    """The flags of ROME's and MEMIT's solve (WEIGHT_FLAGS), defaults from `w`."""
    g = p.add_argument_group("ROME and MEMIT")
    g.add_argument("--rome-layer", type=int, help="block ROME edits (default: the last)")
    g.add_argument(
        "--memit-layers", type=seed_list, help="blocks MEMIT edits (default: every block)"
    )
    g.add_argument(
        "--memit-weight", type=positive_float, help=f"MEMIT's λ (default {w.memit_weight:g})"
    )
    g.add_argument(
        "--value-steps",
        type=positive_int,
        help=f"Adam steps solving each fact's target (default {w.value_steps})",
    )
    g.add_argument("--value-lr", type=positive_float, help=f"their lr (default {w.value_lr:g})")
    g.add_argument(
        "--value-decay",
        type=non_negative_float,
        help=f"L2 penalty on the target change (default {w.value_decay:g})",
    )
    g.add_argument(
        "--ridge",
        type=positive_float,
        help=f"added to the key moments' diagonal, relative to its mean (default {w.ridge:g})",
    )


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


def edits_config(args: argparse.Namespace, bases: dict):
    """The EditsConfig of the command line; with saved runs, their base config and seed."""
    from recall_bench.experiments.edits import METHODS, EditsConfig, method_mode

    given = {f: getattr(args, f) for f in BASE_FLAGS if getattr(args, f) is not None}
    fields = {"n_facts" if k == "facts" else k: v for k, v in given.items()}
    d = EditsConfig()
    methods = tuple(args.methods.split(",")) if args.methods else d.methods
    names = ("tool_steps", "tool_train_entities", "finetune_steps", "finetune_lr")
    extra = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    extra["weights"] = weight_config(args, d.weights)
    if bases:
        if fields or args.seeds or args.general:
            raise ValueError(
                "--from takes the base models' shape, seeds and general suite from what it "
                "names: drop --seeds, --general and the base model's flags"
            )
        if not args.methods:
            methods = tuple(m for m in METHODS if method_mode(m) in bases)
        missing = [m for m in methods if m in METHODS and method_mode(m) not in bases]
        if missing:
            raise ValueError(f"{missing} need a saved {method_mode(missing[0])} base in --from")
        first = next(iter(bases.values()))
        base, seeds = first[0].cfg, tuple(b.cfg.seed for b in first)
        if first[0].suite is not None:
            extra["suite"] = first[0].suite.config
    else:
        base = dataclasses.replace(d.base, **fields)
        seeds = args.seeds or d.seeds
        if args.general:
            from recall_bench.experiments.edits_general import suite_config

            extra["suite"] = suite_config()
    ks = args.k or tuple(k for k in d.ks if k < base.n_facts)
    return EditsConfig(base=base, ks=ks, methods=methods, seeds=tuple(seeds), **extra)


def weight_config(args: argparse.Namespace, default):
    """The WeightEditConfig of the command line: its flags given, the rest default."""
    given = {name: getattr(args, name) for name in WEIGHT_FLAGS}
    return dataclasses.replace(default, **{k: v for k, v in given.items() if v is not None})


def cmd_edit(args: argparse.Namespace) -> int:
    from recall_bench.experiments import edits, edits_report
    from recall_bench.records import write_json_atomic

    out = output_folder(args.out)
    if (out / "edits.json").exists():
        raise ValueError(f"{out} already holds edits.json: choose another --out or delete it")
    if args.save_bases is not None and args.runs:
        raise ValueError("--save-bases saves the bases this command trains: drop --from")
    if args.save_bases is not None and any(Path(args.save_bases).glob("*/base.json")):
        raise ValueError(f"--save-bases {args.save_bases} already holds bases: choose another")
    bases: dict = {}
    for folder in args.runs or ():
        for mode, found in edits.bases_from(folder).items():
            if mode in bases:
                raise ValueError(f"--from names two sets of {mode} bases: give one per mode")
            bases[mode] = found
    cfg = edits_config(args, bases)
    if args.save_bases is not None:
        for mode in sorted({edits.method_mode(m) for m in cfg.methods}):
            bases[mode] = edits.train_bases(cfg, mode, not (args.quiet or args.json))
            edits.save_bases(bases[mode], output_folder(args.save_bases))
    records = edits.run_edits(cfg, out, not (args.quiet or args.json), bases)
    rows = edits_report.summarize(records)
    write_json_atomic(out / "edits.json", {"config": dataclasses.asdict(cfg), "rows": rows})
    edits_report.plot(rows, out / "edits_vs_k.png")
    print(json.dumps(rows, indent=2) if args.json else edits_report.format_table(rows))
    return 0
