"""Run records of trained cells, built complete in one call: the `train` block (budget,
steps, exposures, why it stopped), a fact cell's record, and its per-fact decoding traces;
what an experiment's summary makes of records (their spread over seeds, summary.json); and
the base models experiments build on, saved and read back."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from recall_bench.checkpoint import load_params, save_params
from recall_bench.decode import Decoded
from recall_bench.experiments.config import BaseRunConfig
from recall_bench.identity import refuse_other
from recall_bench.model import ModelConfig, count_params, init_model
from recall_bench.records import (
    clean_json,
    environment,
    new_record,
    read_json,
    skill_scores,
    write_json_atomic,
)
from recall_bench.stopping import late_gain, plateaued
from recall_bench.train import Task, TrainConfig, TrainResult
from recall_bench.worlds import FactSpec, FactWorld, spec_fields, spec_hash


def holds_config(record: dict, cfg) -> bool:
    """Whether a record was made by `cfg`; fields a record predates take their defaults."""
    try:
        return type(cfg)(**record.get("config", {})) == cfg
    except (TypeError, ValueError):
        return False


def train_info(train_cfg: TrainConfig, result: TrainResult, k: int, task: Task) -> dict:
    """The `train` block of a record: budget, steps, exposures, why and whether it stopped."""
    steps, history, reason = result.steps[k], result.history[k], result.stop_reason[k]
    n_trained = len(task.train.tokens)
    return {
        "steps": steps,
        "budget": train_cfg.budget,
        "batch_size": train_cfg.batch_size,
        "lr": train_cfg.lr,
        "trained_facts": n_trained,
        "exposures_per_fact": steps * train_cfg.batch_size / n_trained,
        "stop_reason": reason,
        "converged": reason in ("recall", "plateau"),
        "plateaued": plateaued(history, train_cfg, float(task.monitor_bits.sum())),
        # share of the monitored bits gained over the last late_window of the steps run
        "late_bits_gain": late_gain(history, train_cfg.plateau_window),
        "late_window": train_cfg.plateau_window,
        "final_loss": history[-1]["loss"],
        "wall_s": result.wall_s,
        "compile_s": result.compile_s,
        "ensemble_size": len(result.steps),
        "resumes": result.resumes,
        "history": history,
    }


def make_record(
    cfg: BaseRunConfig,
    world: FactWorld | None,
    result: TrainResult,
    k: int,
    metrics: dict,
    task: Task,
    evaluation: dict | None = None,
    /,
    model_cfg: ModelConfig | None = None,
    train_cfg: TrainConfig | None = None,
    **extra: Any,
) -> dict:
    """The record of model k of a training result, complete: what ran (run_fields), its
    `train` block, metrics and environment; train_cfg (default: cfg's) says how it trained;
    `extra` adds fields such as the store and the cost per answer, or replaces one (an
    experiment's own mode; any name, `k` and `metrics` too), and its `train` adds to the train
    block. A run of no fact world (world None) has no bits_per_fact, config or world unless
    `extra` gives them."""
    train = train_info(train_cfg or cfg.train_config(), result, k, task)
    fields = run_fields(cfg, world, result.model(k), model_cfg, evaluation)
    fields.update(train={**train, **extra.pop("train", {})}, metrics=metrics, env=result.env)
    if world is None:  # a run of no fact world: its data is the experiment's to describe
        unknown = {"bits_per_fact", "config", "world"} - set(extra)
        fields = {k: v for k, v in fields.items() if k not in unknown}
    return new_record(**{**fields, **extra})


def run_fields(
    cfg: BaseRunConfig,
    world: FactWorld | None,
    params: Any,
    model_cfg: ModelConfig | None = None,
    evaluation: dict | None = None,
) -> dict:
    """What a record says ran: the run's mode, fact count, seed and config (`evaluation`: what
    was evaluated, when it is not the run's own world, joins it), its fact world and the model
    (default: cfg's) with its parameter counts; also the record of a model that trained
    nothing (an edit in closed form)."""
    model_cfg = model_cfg or cfg.model_config()
    spec = None if world is None else world.spec
    return dict(
        mode=cfg.mode,
        n_facts=cfg.n_facts if spec is None else spec.n_facts,
        bits_per_fact=None if spec is None else spec.bits_per_fact,
        seed=cfg.seed,
        config={**dataclasses.asdict(cfg), **({"evaluation": evaluation} if evaluation else {})},
        world=None if spec is None else world_block(spec),
        model=dataclasses.asdict(model_cfg),
        params=count_params(params, model_cfg),
    )


def world_block(spec: FactSpec) -> dict:
    """What a record says of its fact world: its kind, spec, hash and entropy."""
    return {
        # capacity fits group records by world kind: structured worlds stay apart
        "kind": "facts" if spec.rule_alpha is None else f"facts-rule{spec.rule_alpha:g}",
        "spec": spec_fields(spec),
        "hash": spec_hash(spec),
        "entropy_bits": spec.entropy_bits,
    }


def save_traces(path: Path, decoded: Decoded) -> None:
    """Per-fact traces of the evaluation (call, parse, key, store answer, final answer)."""
    arrays = {k: v for k, v in dataclasses.asdict(decoded).items() if isinstance(v, np.ndarray)}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def grouped(items: Iterable[Any], key: Callable[[Any], Hashable]) -> dict[Hashable, list]:
    """Items by key(item): the keys, and the items of each, in order of first appearance."""
    groups: dict[Hashable, list] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def seed_spread(records: list[dict], keys: tuple[str, ...]) -> dict:
    """Each metric of `keys` over records (a cell's seeds): the mean of its finite values and
    their [min, max] (`<key>_range`); a metric none of them holds finite is left out."""
    row = {}
    for key in keys:
        values = [r["metrics"].get(key) for r in records]
        values = [v for v in values if v is not None and math.isfinite(v)]
        if values:
            row[key], row[f"{key}_range"] = float(np.mean(values)), [min(values), max(values)]
    return row


def write_summary(
    out: Path,
    experiment: str,
    cfg: Any,
    command: str | None,
    wall_s: float,
    file: str = "summary.json",
    **fields: Any,
) -> dict:
    """An experiment's summary (out/`file`), written atomically, and returned: its name, the
    command line (None from Python) and config that ran it, `fields`, the environment, wall
    seconds."""
    config = clean_json(dataclasses.asdict(cfg))
    summary = {"experiment": experiment, "command": command, "config": config, **fields}
    summary.update(env=environment(), wall_s=wall_s)
    write_json_atomic(Path(out) / file, summary)
    return summary


def save_base(folder: str | Path, base: dict) -> None:
    """A base model ({graphdef, params, info}): parameters (orbax), then base.json (its info);
    base.json present means the save completed."""
    save_params(Path(folder) / "params", base["params"])
    write_json_atomic(Path(folder) / "base.json", base["info"])


def load_base(folder: str | Path, what: str, key: tuple[str, dict], model_cfg: ModelConfig) -> dict:
    """The base model save_base wrote in folder, {graphdef, params, info}, its skill scores
    under today's names (one saved before record/3 has older ones); refused (a ValueError
    naming `what`) unless its info's key[0] field is key[1], the settings that shape it."""
    folder = Path(folder)
    info = read_json(folder / "base.json")
    info = {**info, "scores": skill_scores(info["scores"])}
    refuse_other(folder, what, info[key[0]], key[1])
    graphdef, like = init_model(model_cfg, 0)
    return {"graphdef": graphdef, "params": load_params(folder / "params", like), "info": info}
