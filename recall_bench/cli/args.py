"""Argument types and option groups shared by the subcommands (a leaf: imports nothing of
the package)."""

from __future__ import annotations

import argparse
import math
import shlex
from pathlib import Path


def int_at_least(low: int):
    """An argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


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


def number_list(kind: type, low: float | None, example: str):
    """An argparse type: comma-separated numbers of `kind` (int or float), each >= low."""
    what = "integers" if kind is int else "numbers"

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a comma-separated list of {what} (e.g. {example})"
            ) from None
        if low is not None and min(values) < low:
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= {low}")
        return values

    return parse


int_list = number_list(int, 1, "4096,1000")  # counts and sizes
seed_list = number_list(int, 0, "0,1,2")  # seeds, block indices


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


RUN_ONLY_FLAGS = ("--resume", "--quiet", "--json")  # how a run goes or prints, not what it makes


def invocation(argv: list[str]) -> str:
    """The command line that regenerates what `argv` ran: `recall-bench` and argv as given,
    less RUN_ONLY_FLAGS (also as argparse abbreviations, e.g. --res)."""
    kept = [a for a in argv if not (len(a) > 2 and any(f.startswith(a) for f in RUN_ONLY_FLAGS))]
    return shlex.join(["recall-bench", *kept])


def command_of(args: argparse.Namespace) -> str | None:
    """The command line main() parsed `args` from; None where a caller parsed them itself."""
    return getattr(args, "command_line", None)
