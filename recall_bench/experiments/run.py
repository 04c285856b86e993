"""One run: train a fact model (or an ensemble of same-shaped ones), evaluate each by real
greedy decoding, and write its record; a finished record of the same config is returned,
one of another config refused (recall_bench/identity.py).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from recall_bench.checkpoint import save_params
from recall_bench.cost import record_cost
from recall_bench.decode import Decoded
from recall_bench.experiments.config import BaseRunConfig, RunConfig, make_task
from recall_bench.experiments.evaluate import evaluate, held_out_metrics, noise_floor_metrics
from recall_bench.identity import finished_record
from recall_bench.model import count_params
from recall_bench.record_types import Metrics, Record, Train
from recall_bench.records import new_record, write_json_atomic
from recall_bench.stopping import late_gain, plateaued
from recall_bench.tool import build_store
from recall_bench.train import Task, TrainConfig, TrainResult, train_models
from recall_bench.worlds import FactWorld, make_fact_world, spec_fields, spec_hash


def run(
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    progress: bool = True,
    resume: bool = False,
    checkpoint_every_s: float = 30.0,
    save_model: bool = False,
) -> dict[str, Any]:
    """Train and evaluate one configuration; write record.json (and traces.npz) to out_dir,
    checkpointing into out_dir/checkpoints meanwhile (removed once the record is written);
    with save_model, also the final parameters to out_dir/model (saved.load_run reads them)."""
    checkpoints = None if out_dir is None else Path(out_dir) / "checkpoints"
    return run_group(
        [cfg], [out_dir], progress, checkpoints, resume, checkpoint_every_s, save_model
    )[0]


def holds_config(record: Record, cfg) -> bool:
    """Whether a record was made by `cfg`; fields a record predates take their defaults."""
    try:
        return type(cfg)(**record.get("config", {})) == cfg
    except (TypeError, ValueError):
        return False


def group_key(cfg: BaseRunConfig) -> BaseRunConfig:
    """Configs with the same key train together as one ensemble (they differ only in seed)."""
    return dataclasses.replace(cfg, seed=0)


def train_group(
    cfgs: list[BaseRunConfig],
    tasks: list[Task],
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_every_s: float = 30.0,
) -> TrainResult:
    """Train same-shaped configurations (fact or random-token runs differing only in seed)
    as one vmapped ensemble."""
    if len({group_key(c) for c in cfgs}) != 1:
        raise ValueError("a group needs configs that differ only in seed")
    return train_models(
        cfgs[0].model_config(),
        cfgs[0].train_config(),
        tasks,
        [c.seed for c in cfgs],
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        checkpoint_every_s=checkpoint_every_s,
    )


def finished_group(
    cfgs: list[BaseRunConfig], out_dirs: list[str | Path | None], resume: bool
) -> list[dict] | None:
    """The records of a group whose every run has finished under the same config (with
    resume); None if any has not. A record of another config is refused (identity)."""
    done = [
        None if d is None else finished_record(Path(d) / "record.json", c, resume)
        for c, d in zip(cfgs, out_dirs, strict=True)
    ]
    return done if all(r is not None for r in done) else None


def run_group(
    cfgs: list[RunConfig],
    out_dirs: list[str | Path | None],
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_every_s: float = 30.0,
    save_model: bool = False,
) -> list[dict[str, Any]]:
    """Train same-shaped fact configurations as one ensemble (train_group), then evaluate
    and record each one as if it had been trained alone."""
    done = finished_group(cfgs, out_dirs, resume)
    if done is not None and save_model:
        for out_dir in out_dirs:
            if not (Path(out_dir) / "model").is_dir():
                raise ValueError(
                    f"{out_dir} holds a run finished without --save-model: its parameters "
                    "are gone; rerun it into another --out"
                )
    if done is not None:
        return done
    worlds = [make_fact_world(c.spec) for c in cfgs]
    tasks = [make_task(c, w) for c, w in zip(cfgs, worlds, strict=True)]
    result = train_group(cfgs, tasks, progress, checkpoint_dir, resume, checkpoint_every_s)
    records = [
        finish(cfg, world, task, result, k, out_dir, save_model)
        for k, (cfg, world, task, out_dir) in enumerate(
            zip(cfgs, worlds, tasks, out_dirs, strict=True)
        )
    ]
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return records


def finish(
    cfg: RunConfig,
    world: FactWorld,
    task: Task,
    result: TrainResult,
    k: int,
    out_dir,
    save_model: bool = False,
) -> dict[str, Any]:
    """Evaluate model k of a training result and write its record and traces (and, with
    save_model, its parameters to out_dir/model, before the record that vouches for them)."""
    params = result.model(k)
    with tempfile.TemporaryDirectory() as tmp:
        store, path = None, None
        if cfg.mode == "in-tool":
            folder = Path(out_dir or tmp)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "store.sqlite" if cfg.store == "sqlite" else None
            store = build_store(world, cfg.store, path)
        metrics, decoded = evaluate(cfg, world, result.graphdef, params, store)
        if world.spec.rule_alpha is not None and cfg.format == "in-weight":
            metrics.update(held_out_metrics(cfg, world, result.graphdef, params))
        elif cfg.format == "in-weight":  # a rule-free world: what is known of unseen facts is noise
            bits = metrics["bits_memorized"]
            metrics.update(noise_floor_metrics(cfg, world, result.graphdef, params, bits))
        extra = {} if store is None else {"store": {"kind": cfg.store, "facts": len(store)}}
        n_params = count_params(params, cfg.model_config())["total"]
        # per answered fact: tokens, FLOPs, latency, memory (cost.py)
        extra["cost"] = record_cost(
            cfg.model_config(), world, result.graphdef, params, decoded, n_params, store, path
        )
        if store is not None:
            store.close()
    record = make_record(cfg, world, result, k, metrics, task, **extra)
    if out_dir is not None:
        if save_model:
            save_params(Path(out_dir) / "model", params)
        write_json_atomic(Path(out_dir) / "record.json", record)
        save_traces(Path(out_dir) / "traces.npz", decoded)
    return record


def train_info(train_cfg: TrainConfig, result: TrainResult, k: int, task: Task) -> Train:
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
    cfg: RunConfig,
    world,
    result: TrainResult,
    k: int,
    metrics: Metrics,
    task,
    evaluation: dict | None = None,
    **extra: Any,
) -> Record:
    """The record of model k of a training result, complete: `evaluation` (what was
    evaluated, when it is not the run's own world) joins the config, `extra` adds fields such
    as the store and the cost per answer."""
    spec = world.spec
    return new_record(
        mode=cfg.mode,
        n_facts=spec.n_facts,
        bits_per_fact=spec.bits_per_fact,
        seed=cfg.seed,
        config={**dataclasses.asdict(cfg), **({"evaluation": evaluation} if evaluation else {})},
        world={
            # capacity fits group records by world kind: structured worlds stay apart
            "kind": "facts" if spec.rule_alpha is None else f"facts-rule{spec.rule_alpha:g}",
            "spec": spec_fields(spec),
            "hash": spec_hash(spec),
            "entropy_bits": spec.entropy_bits,
        },
        model=dataclasses.asdict(cfg.model_config()),
        params=count_params(result.model(k), cfg.model_config()),
        train=train_info(cfg.train_config(), result, k, task),
        metrics=metrics,
        env=result.env,
        **extra,
    )


def save_traces(path: Path, decoded: Decoded) -> None:
    """Per-fact traces of the evaluation (call, parse, key, store answer, final answer)."""
    arrays = {k: v for k, v in dataclasses.asdict(decoded).items() if isinstance(v, np.ndarray)}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
