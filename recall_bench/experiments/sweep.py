"""Sweeps: a grid of runs from a TOML file, trained as seed ensembles, resumable, shardable.

    name = "capacity"                 # optional; default the file's stem
    out = "results/capacity/sweep"    # optional; default recall_bench_out/sweeps/<name>
    [defaults]                        # optional: config fields for every cell
    steps = 2000
    [[grid]]                          # one or more; the sweep is the union of their cells
    mode = ["in-weight", "in-tool"]   # a registered method (recall_bench/methods) or random-tokens
    width = [8, 16, 32]               # a list is an axis: the grid is their product
    n_facts = [256, 1024]             # random-tokens: the number of sequences
    seed = [0, 1, 2]
    layers = 1                        # a scalar is a fixed field of this grid

Keys are the fields of RunConfig (fact modes) or TokenRunConfig (random-tokens). Each cell
writes <out>/<cell>/record.json; the cell engine (engine.py) trains cells differing only in
seed as one ensemble and never runs again a cell whose record holds the same config.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import jax

from recall_bench.devices import agreed, barrier, ensemble_size, free_memory, is_lead, model_bytes
from recall_bench.experiments import capacity
from recall_bench.experiments.config import RunConfig
from recall_bench.experiments.default import summary_row
from recall_bench.experiments.engine import Cell, group_key, pending, run_ensemble
from recall_bench.experiments.recording import grouped
from recall_bench.experiments.tokens import TOKENS, TokenRunConfig
from recall_bench.methods import MODES
from recall_bench.model import count_params, init_model
from recall_bench.record_types import Record
from recall_bench.records import environment, read_record, write_json_atomic
from recall_bench.tables import format_table
from recall_bench.train import padded_rows
from recall_bench.worlds import SpecError

CONFIGS = {**dict.fromkeys(MODES, RunConfig), TOKENS: TokenRunConfig}
TOP_KEYS = ("name", "out", "defaults", "grid")
TYPES = {  # field annotation -> (check, words for the error message)
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "float | None": (lambda v: TYPES["float"][0](v), "a number"),  # TOML has no None
    "str": (lambda v: isinstance(v, str), "a string"),
    "tuple[int, ...]": (
        lambda v: isinstance(v, list) and all(TYPES["int"][0](x) for x in v),
        "a list of integers",
    ),
}

Config = RunConfig | TokenRunConfig
STRUCTURED_METRICS = (  # metrics of runs on structured worlds (rule_alpha set)
    "recall_rule",
    "recall_exceptions",
    "bits_memorized_exceptions",
    "held_out_rule_accuracy",
    "held_out_accuracy",
)


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    out: Path | None
    cells: tuple[Config, ...]  # unique, in grid order


def field_types(cls: type) -> dict[str, str]:
    return {f.name: f.type for f in dataclasses.fields(cls)}


def known_keys() -> list[str]:
    return sorted({k for cls in CONFIGS.values() for k in field_types(cls)})


def is_axis(key: str, value: Any, cls: type) -> bool:
    """A list is an axis, except for a list-valued field, whose axis is a list of lists."""
    if field_types(cls)[key].startswith("tuple"):
        return isinstance(value, list) and bool(value) and isinstance(value[0], list)
    return isinstance(value, list)


def check_value(key: str, value: Any, cls: type, where: str) -> Any:
    """The value as the config field wants it; a ValueError naming the key if its type is
    wrong."""
    check, words = TYPES[field_types(cls)[key]]
    if not check(value):
        raise ValueError(f"{where}: {key} must be {words}, got {value!r}")
    return tuple(value) if isinstance(value, list) else value


def expand_grid(grid: dict, defaults: dict, overrides: dict, where: str) -> list[Config]:
    """Every cell of one [[grid]] table, validated: defaults fill missing keys, overrides
    replace the keys they apply to."""
    modes = grid.get("mode")
    if modes is None:
        raise ValueError(f"{where}: missing key 'mode' (one of {sorted(CONFIGS)}, or a list)")
    modes = modes if isinstance(modes, list) else [modes]
    cells = []
    for mode in modes:
        if not isinstance(mode, str) or mode not in CONFIGS:
            raise ValueError(f"{where}: mode {mode!r} is not one of {sorted(CONFIGS)}")
        cls = CONFIGS[mode]
        axes: dict[str, list] = {}
        own = {k: v for k, v in overrides.items() if k in field_types(cls)}
        for key, value in {**grid, **own}.items():
            if key == "mode":
                continue
            if key not in field_types(cls):
                hint = (
                    f"it does not apply to mode {mode!r}"
                    if key in known_keys()
                    else f"known keys: {', '.join(known_keys())}"
                )
                raise ValueError(f"{where}: unknown key {key!r} ({hint})")
            values = value if is_axis(key, value, cls) else [value]
            if not values:
                raise ValueError(f"{where}: {key} is an empty list")
            axes[key] = [check_value(key, v, cls, where) for v in values]
        base = {
            k: check_value(k, v, cls, "[defaults]")
            for k, v in defaults.items()
            if k in field_types(cls)
        }
        for combo in itertools.product(*axes.values()):
            fields = {**base, **dict(zip(axes, combo, strict=True)), "mode": mode}
            try:
                cells.append(cls(**fields))
                cells[-1].model_config()  # checks the model shape now, not mid-sweep
            except (ValueError, SpecError) as err:
                raise ValueError(f"{where}: cell {fields}: {err}") from None
    return cells


def parse_sweep(data: dict, name: str, overrides: dict | None = None) -> Sweep:
    """A sweep from parsed TOML; overrides (key -> value or axis list) replace that key in
    every cell it applies to."""
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ValueError(f"unknown top-level key {unknown[0]!r}: use {', '.join(TOP_KEYS)}")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ValueError("[defaults] must be a table of config fields")
    for key, value in defaults.items():
        owners = [cls for cls in CONFIGS.values() if key in field_types(cls)]
        if not owners:
            raise ValueError(
                f"[defaults]: unknown key {key!r} (known keys: {', '.join(known_keys())})"
            )
        if key == "mode":
            raise ValueError("[defaults]: mode belongs in each [[grid]] (it picks its config)")
        if is_axis(key, value, owners[0]):
            raise ValueError(f"[defaults]: {key} must be a single value; put axes in [[grid]]")
        check_value(key, value, owners[0], "[defaults]")
    grids = data.get("grid")
    if not isinstance(grids, list) or not grids or not all(isinstance(g, dict) for g in grids):
        raise ValueError("the sweep needs at least one [[grid]] table")
    overrides = overrides or {}
    for key in overrides:
        if key not in known_keys():
            raise ValueError(f"--set: unknown key {key!r} (known keys: {', '.join(known_keys())})")
    cells: dict[Config, None] = {}
    for i, grid in enumerate(grids):
        cells.update(dict.fromkeys(expand_grid(grid, defaults, overrides, f"[[grid]] #{i + 1}")))
    out = data.get("out")
    if out is not None and not isinstance(out, str):
        raise ValueError(f"out must be a string (a folder), got {out!r}")
    sweep = Sweep(str(data.get("name", name)), None if out is None else Path(out), tuple(cells))
    groups(sweep.cells)  # checks that names are unique
    return sweep


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Read and validate a sweep file; overrides are KEY=VALUE strings, VALUE in TOML
    syntax (steps=100, seed=[0, 1])."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise tomllib.TOMLDecodeError("no '='")
            parsed[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            raise ValueError(f"--set {item!r}: write KEY=VALUE with a TOML value") from None
    return parse_sweep(data, path.stem, parsed)


def group_name(cfg: Config) -> str:
    """The folder name of a cell without its seed; a side memory of other than the default
    size adds -m<rows>, a grad_transpose other than the default -g<setting>."""
    prefix = f"{TOKENS}-V{cfg.vocab}-S{cfg.length}" if cfg.mode == TOKENS else cfg.mode
    alpha = getattr(cfg, "rule_alpha", None)
    rule = "" if alpha is None else f"-a{alpha:g}"
    rows = getattr(cfg, "memory_size", None)
    if isinstance(cfg, RunConfig) and cfg.method.side_memory and rows != RunConfig.memory_size:
        rule += f"-m{rows}"
    if cfg.grad_transpose != RunConfig.grad_transpose:
        rule += f"-g{cfg.grad_transpose}"
    return f"{prefix}{rule}-n{cfg.n_facts}-L{cfg.layers}-d{cfg.width}-{cfg.dtype}"


def cell_name(cfg: Config) -> str:
    return f"{group_name(cfg)}-s{cfg.seed}"


def groups(cells: tuple[Config, ...] | list[Config]) -> list[list[Config]]:
    """Cells differing only in seed, as ensembles in order of first appearance; a
    ValueError if two different ensembles would share a folder name."""
    by_key = grouped(cells, group_key)
    names: dict[str, Config] = {}
    for key in by_key:
        if names.setdefault(group_name(key), key) != key:
            raise ValueError(
                f"two different groups of cells are both named {group_name(key)!r}: they differ "
                "in a field the name leaves out; put them in separate sweeps"
            )
    return list(by_key.values())


def shard_groups(cells: tuple[Config, ...], shard: tuple[int, int]) -> list[list[Config]]:
    """Ensemble j belongs to shard j mod n: the same file gives every shard the same share."""
    i, n = shard
    return [g for j, g in enumerate(groups(cells)) if j % n == i]


def fitting_ensemble(cfg: Config) -> int:
    """How many seeds of this cell's shape train together: as many as the devices' free
    memory holds (devices.ensemble_size), so a large group runs as several ensembles."""
    mc = cfg.model_config()
    n_params = count_params(init_model(mc, 0)[1], mc)["total"]
    rows = padded_rows(cfg.n_facts)
    per_model = model_bytes(n_params, cfg.batch_size, mc.max_len, mc.width, mc.layers, rows)
    return agreed(ensemble_size(per_model, free_memory(), jax.device_count()))


def run_sweep(
    sweep: Sweep,
    out: str | Path,
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Run this shard's missing cells (an ensemble per group), then write and return the
    summary of all its cells (`command`: the command line that ran it, None from Python).
    Under jax.distributed every process runs every group together (the ensemble split over
    all their devices, each saving its shards of the checkpoints) and process 0 writes."""
    out, t0 = Path(out), time.perf_counter()
    mine = shard_groups(sweep.cells, shard)
    cells = [[Cell(cfg, out / cell_name(cfg)) for cfg in group] for group in mine]
    todo = pending(cells, resume, fitting_ensemble)
    for j, group in enumerate(todo, 1):
        name, seeds = group_name(group[0].cfg), [c.cfg.seed for c in group]
        if progress:
            print(f"[{j}/{len(todo)}] {name}, seeds {seeds}", file=sys.stderr)
        ckpt = out / "checkpoints" / f"{name}-s{'-'.join(map(str, seeds))}"
        writing = group if is_lead() else [dataclasses.replace(c, out_dir=None) for c in group]
        for r in run_ensemble(writing, progress, ckpt, resume):
            if progress:
                print(f"    {cell_summary(r)}", file=sys.stderr)
    barrier("sweep records written")
    if is_lead() and (out / "checkpoints").is_dir() and not any((out / "checkpoints").iterdir()):
        (out / "checkpoints").rmdir()  # every group's checkpoints go once its records exist
    records = [read_record(out / cell_name(c) / "record.json") for g in mine for c in g]
    summary = sweep_summary(records, sweep.name, shard, command)
    summary.update(ran=sum(map(len, todo)), wall_s=time.perf_counter() - t0, out=str(out))
    rows = summary["params_for_recall"]
    summary["plots"] = capacity.write_plots(summary["capacity"], rows, out) if is_lead() else []
    name = "summary.json" if shard == (0, 1) else f"summary-shard-{shard[0]}-of-{shard[1]}.json"
    if is_lead():
        write_json_atomic(out / name, summary)
    return summary


def cell_summary(record: Record) -> str:
    m, t = record["metrics"], record["train"]
    if "bits_memorized" in m:
        bits = f"{m['bits_memorized']:,.0f} bits held ({m['bits_per_param']:.2f}/param)"
    else:  # in-tool: bits delivered with the store's help
        bits = (
            f"{m['bits_delivered']:,.0f} bits delivered ({m['bits_delivered_per_param']:.2f}/param)"
        )
    return (
        f"seed {record['seed']}: recall {m['recall']:.3f}, {bits}, {t['steps']} steps, "
        f"{t['stop_reason']}"
    )


def config_of(record: Record) -> Config:
    return CONFIGS[record["mode"]](**record["config"])


def cell_row(record: Record) -> dict:
    """One summary row per cell: the default benchmark's row plus the model and seed."""
    model = record["model"]
    return {
        "cell": cell_name(config_of(record)),
        **summary_row(record),
        "layers": model["layers"],
        "width": model["width"],
        "dtype": model["dtype"],
        "seed": record["seed"],
        "params_non_embedding": record["params"]["non_embedding"],
        "converged": record["train"]["converged"],
        "held_out_loss": record["metrics"].get("held_out_loss"),
        **{k: record["metrics"][k] for k in STRUCTURED_METRICS if k in record["metrics"]},
    }


def sweep_summary(
    records: list[Record], name: str, shard: tuple[int, int] | None, command: str | None
) -> dict:
    """Cells, capacity fits and params-for-recall of a set of records, made by `command`."""
    rows = sorted((cell_row(r) for r in records), key=lambda r: r["cell"])
    ensembles = {}  # cells of one ensemble share its wall time: count it once
    for r in records:
        key = (group_name(config_of(r)), r["train"]["wall_s"])
        ensembles[key] = r["train"]["wall_s"] + r["train"]["compile_s"]
    env = environment()
    return {
        "format": "recall_bench.sweep/1",
        "name": name,
        "command": command,
        "shard": None if shard is None else list(shard),
        "n_cells": len(rows),
        "train_s": sum(ensembles.values()),
        "cells": rows,
        "capacity": capacity.capacity_summary(records),
        "params_for_recall": capacity.params_for_recall(records),
        "env": {k: env[k] for k in ("device_kind", "cpu_count", "jax", "git_commit", "git_dirty")},
    }


def merge(folders: list[str | Path], output: str | Path, command: str | None = None) -> dict:
    """One summary of the records of several shards' folders, written to `output`."""
    records = capacity.load_records(folders)
    if not records:
        raise ValueError(f"no record.json under {', '.join(map(str, folders))}")
    summary = sweep_summary(records, "merged", None, command)
    summary["sources"] = [str(f) for f in folders]
    write_json_atomic(output, summary)
    return summary


# bits held in the weights, and in-tool bits delivered with the store's help, apart
CELL_COLUMNS = (
    ("cell", "cell"),
    ("params", "params", ","),
    ("recall", "recall", ".3f"),
    ("bits", "bits_memorized", ",.0f"),
    ("b/param", "bits_per_param", ".2f"),
    ("delivered", "bits_delivered", ",.0f"),
    ("steps", "steps"),
    ("stop", "stop_reason"),
)


def format_summary(summary: dict) -> str:
    """Terminal table: every cell, then capacity and params-for-recall."""
    lines = [
        f"sweep {summary['name']}: {summary['n_cells']} cells, {summary['train_s']:.0f} s of "
        "training",
        format_table(summary["cells"], CELL_COLUMNS),
    ]
    structured = [r for r in summary["cells"] if "recall_rule" in r]
    if structured:
        lines += ["", format_structured(structured)]
    if summary["capacity"]:
        lines += ["", capacity.format_capacity(summary["capacity"])]
    if summary["params_for_recall"]:
        lines += ["", capacity.format_params_for_recall(summary["params_for_recall"])]
    return "\n".join(lines)


def format_structured(rows: list[dict]) -> str:
    """Structured-world cells: recall of rule facts and of exceptions, held-out accuracy."""
    headers = ("rule", "except", "exc.bits", "held-out rule", "held-out")
    specs = (".3f", ".3f", ",.0f", ".3f", ".3f")
    columns = [("cell", "cell"), *zip(headers, STRUCTURED_METRICS, specs, strict=True)]
    return (
        "structured worlds: recall on rule-following facts and on exceptions; held-out entities\n"
        + format_table(rows, columns)
    )
