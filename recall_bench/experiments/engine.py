"""The cell engine: every run of every experiment goes through here.

A cell is one model to train and evaluate: a run config (a fact run of any memory method,
a random-token run, or a run of no fact world that brings its own rows) and the folder its
record goes to; an experiment's cell may also bring its own training rows, model, training,
initial parameters (a base model), stop rule, extra measures and record fields, join an
ensemble of other configs, or share its model with cells of other configs (Cell). The engine
  1. refuses or returns finished cells (identity.py: a finished record is never retrained);
  2. groups cells that differ only in seed (or carry one ensemble tag) into vmapped
     ensembles, split to what the devices hold, one model for cells that share it;
  3. trains each ensemble (train.train_models: checkpoints, resume, sharding; or the
     cells' own trainer);
  4. evaluates each model by its method (experiments/evaluate.py; a store built when the
     method uses one) and the cell's measures (or by its measures alone), builds its record
     complete, once (recording.py), and writes it atomically with its traces (a base cell may
     also hand its model back); then drops the ensemble's checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import tempfile
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np

from recall_bench.checkpoint import save_params
from recall_bench.cost import record_cost
from recall_bench.devices import is_lead
from recall_bench.experiments.config import BaseRunConfig, RunConfig, make_task
from recall_bench.experiments.evaluate import evaluate, held_out_metrics, noise_floor_metrics
from recall_bench.experiments.recording import grouped, make_record, save_traces
from recall_bench.experiments.tokens import TokenRunConfig, token_record, token_task
from recall_bench.identity import finished_record
from recall_bench.model import ModelConfig, count_params
from recall_bench.records import write_json_atomic
from recall_bench.tool import build_store
from recall_bench.train import Task, TrainConfig, TrainResult, train_models
from recall_bench.worlds import FactWorld, make_fact_world

Config = RunConfig | TokenRunConfig | BaseRunConfig  # the last: no fact world (Cell.task)


Measure = Callable[[TrainResult, int, dict], dict]  # (result, model k, metrics so far) -> more


@dataclasses.dataclass(frozen=True)
class Cell:
    """One model to train and evaluate, and where its record goes (None: not written). A plain
    run of `cfg` leaves the other fields unset; an experiment sets what its cell does
    differently."""

    cfg: Config
    out_dir: Path | None = None
    # its rows from its world (None: a run of no fact world) (default: make_task)
    task: Callable[[FactWorld | None], Task] | None = None
    model: ModelConfig | None = None  # the model it trains (default: cfg's)
    train: TrainConfig | None = None  # how it trains (default: cfg's), also in its record
    init: Callable[[], Any] | None = None  # initial parameters (default: fresh from the seed)
    # trains the ensemble instead of train_models, same arguments (a stop rule of its own)
    trainer: Callable[..., TrainResult] | None = None
    measures: tuple[Measure, ...] = ()  # evaluations adding to the record's metrics
    fields: Callable[[TrainResult, int], dict] | None = None  # record fields added or replaced
    # (what a finished record says it was made under, what this cell is made under); default:
    # the record's config read back through cfg's class, and cfg
    identity: tuple[Callable[[dict], dict], dict] | None = None
    group: Hashable = None  # cells train together only if this tag matches too
    floor: bool = True  # a method holding bits in weights: also its noise floor / held-out
    evaluate: bool = True  # False: its measures are its whole evaluation (no decoding, store)
    # set: the cells with this tag train as one ensemble whatever their configs (one model
    # and training; rows of one width); default: configs differing only in seed
    ensemble: Hashable = None
    # cells of an ensemble with equal seeds and a same tag are one model: trained once, a
    # record each (e.g. one model evaluated on worlds of several sizes)
    shares: Hashable = None
    keep: Callable[[TrainResult, int], None] | None = None  # given model k (a base to build on)

    def model_config(self) -> ModelConfig:
        return self.model or self.cfg.model_config()

    def train_config(self) -> TrainConfig:
        return self.train or self.cfg.train_config()


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What a fact cell is evaluated on when it is not its own world: the facts of
    `entities` of the world's first n_entities (same first entities, more of them), through
    a store of `store` kind. `info` joins the record's config as its `evaluation`."""

    n_entities: int
    entities: np.ndarray
    store: str
    info: dict


def group_key(cfg: BaseRunConfig) -> BaseRunConfig:
    """Configs with the same key train together as one ensemble (they differ only in seed)."""
    return dataclasses.replace(cfg, seed=0)


def cell_key(cell: Cell) -> tuple:
    """Cells with the same key train together as one ensemble."""
    runs = group_key(cell.cfg) if cell.ensemble is None else None
    return (runs, cell.model_config(), cell.train_config(), cell.group, cell.ensemble)


def finished(cell: Cell, resume: bool) -> dict | None:
    """The cell's record if its folder holds this config's finished record (and resume);
    None if it has not run; refused if it holds another config, or this one without resume."""
    if cell.out_dir is None:
        return None
    return finished_record(Path(cell.out_dir) / "record.json", cell.cfg, resume, cell.identity)


def pending(
    groups: list[list[Cell]], resume: bool, fits: Callable[[Config], int] | None = None
) -> list[list[Cell]]:
    """The ensembles still to run: each group's unfinished cells, split into ensembles of at
    most fits(cfg) models (default: all of them at once)."""
    todo = []
    for group in groups:
        missing = [c for c in group if finished(c, resume) is None]
        k = fits(missing[0].cfg) if missing and fits is not None else max(1, len(missing))
        todo.extend(missing[i : i + k] for i in range(0, len(missing), k))
    return todo


def train_group(
    cells: list[Cell],
    tasks: list[Task],
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_every_s: float = 30.0,
) -> TrainResult:
    """Train same-shaped cells (fact or random-token runs differing only in seed) as one
    vmapped ensemble, from their initial parameters, with their trainer."""
    if len({cell_key(c) for c in cells}) != 1:
        raise ValueError("a group needs configs that differ only in seed")
    first = cells[0]
    checkpointing = {}
    if checkpoint_dir is not None:
        checkpointing = dict(
            checkpoint_dir=checkpoint_dir, resume=resume, checkpoint_every_s=checkpoint_every_s
        )
    if first.init is not None:
        checkpointing["init_params"] = [c.init() for c in cells]
    return (first.trainer or train_models)(
        first.model_config(),
        first.train_config(),
        tasks,
        [c.cfg.seed for c in cells],
        progress,
        **checkpointing,
    )


def world_of(cfg: Config) -> FactWorld | None:
    """A fact run's world (None for random tokens or a run of no fact world)."""
    return make_fact_world(cfg.spec) if isinstance(cfg, RunConfig) else None


def task_of(cell: Cell, world: FactWorld | None) -> Task:
    """A cell's training task: its own rows, or its run's."""
    if cell.task is not None:
        return cell.task(world)
    if isinstance(cell.cfg, TokenRunConfig):
        return token_task(cell.cfg)
    return make_task(cell.cfg, world)


def model_slots(cells: list[Cell]) -> list[int]:
    """Which model of the ensemble each cell is: one each, but one for cells sharing a tag
    and a seed."""
    slots: dict = {}
    key = lambda c: id(c) if c.shares is None else (c.cfg.seed, c.shares)  # noqa: E731
    return [slots.setdefault(key(c), len(slots)) for c in cells]


def run_ensemble(
    cells: list[Cell],
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_every_s: float = 30.0,
    save_model: bool = False,
) -> list[dict[str, Any]]:
    """Train same-shaped cells (differing only in seed) as one ensemble, then evaluate and
    record each one as if it had been trained alone; a group whose every record is finished
    is returned as it is."""
    done = [finished(c, resume) for c in cells]
    if all(r is not None for r in done):
        if save_model:
            check_saved(cells, resume)
        return done
    worlds, slot = [world_of(c.cfg) for c in cells], model_slots(cells)
    first = [slot.index(j) for j in range(len(set(slot)))]  # the cell that trains model j
    tasks = [task_of(cells[i], worlds[i]) for i in first]
    trained = [cells[i] for i in first]
    result = train_group(trained, tasks, progress, checkpoint_dir, resume, checkpoint_every_s)
    records = [
        record_of(cell, worlds[i], tasks[slot[i]], result, slot[i], save_model)
        for i, cell in enumerate(cells)
    ]
    if checkpoint_dir is not None and is_lead():  # the one that wrote the records
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return records


def trained_models(cells: list[Cell], progress: bool = True) -> list[tuple[TrainResult, int, dict]]:
    """Cells trained for their models (a base later cells start from, a model recorded
    elsewhere): scored by their measures alone, records unwritten; per cell, its ensemble's
    result, its model's index there (result.model(k)) and its record."""
    kept: dict[int, tuple[TrainResult, int]] = {}

    def keep(i: int, result: TrainResult, k: int) -> None:
        kept[i] = (result, k)

    cells = [
        dataclasses.replace(c, out_dir=None, evaluate=False, keep=functools.partial(keep, i))
        for i, c in enumerate(cells)
    ]
    records = run_cells(cells, progress)
    return [(*kept[i], record) for i, record in enumerate(records)]


def base_models(
    tasks: dict[int, Callable[[], Task]],
    model: ModelConfig,
    train: TrainConfig,
    progress: bool = True,
) -> dict[int, tuple[Any, Any, dict]]:
    """Base models of no fact world, one per seed, trained from scratch on tasks[seed]() as one
    ensemble (trained_models: records unwritten): {seed: (graphdef, params, record)}."""
    cells = [
        Cell(
            BaseRunConfig(mode="base", n_facts=0, seed=s),
            task=lambda w, t=t: t(),
            model=model,
            train=train,
        )
        for s, t in tasks.items()
    ]
    made = trained_models(cells, progress)
    return {
        c.cfg.seed: (r.graphdef, r.model(k), rec)
        for c, (r, k, rec) in zip(cells, made, strict=True)
    }


def run_cells(
    cells: list[Cell],
    progress: bool = True,
    checkpoints: Callable[[list[Cell]], Path | None] = lambda group: None,
    resume: bool = False,
    checkpoint_every_s: float = 30.0,
    save_model: bool = False,
) -> list[dict[str, Any]]:
    """Every cell's record, in the order of `cells`: finished ones returned (with resume),
    the others trained as ensembles (an ensemble checkpoints into checkpoints(group))."""
    if save_model:
        check_saved(cells, resume)
    ran: dict[int, dict] = {}
    for group in pending(list(grouped(cells, cell_key).values()), resume):
        args = (progress, checkpoints(group), resume, checkpoint_every_s, save_model)
        ran.update(zip(map(id, group), run_ensemble(group, *args), strict=True))
    return [ran[id(c)] if id(c) in ran else finished(c, resume) for c in cells]


def check_saved(cells: list[Cell], resume: bool) -> None:
    """A ValueError if a finished cell was run without save_model: its parameters are gone."""
    for cell in cells:
        if finished(cell, resume) is not None and not (Path(cell.out_dir) / "model").is_dir():
            raise ValueError(
                f"{cell.out_dir} holds a run finished without --save-model: its parameters "
                "are gone; rerun it into another --out"
            )


def finish(
    cfg: Config,
    world: FactWorld | None,
    task: Task,
    result: TrainResult,
    k: int,
    out_dir: str | Path | None,
    save_model: bool = False,
    evaluation: Evaluation | None = None,
) -> dict[str, Any]:
    """record_of a plain run of cfg whose record goes to out_dir."""
    cell = Cell(cfg, None if out_dir is None else Path(out_dir))
    return record_of(cell, world, task, result, k, save_model, evaluation)


def record_of(
    cell: Cell,
    world: FactWorld | None,
    task: Task,
    result: TrainResult,
    k: int,
    save_model: bool = False,
    evaluation: Evaluation | None = None,
) -> dict[str, Any]:
    """Evaluate model k of a training result, build its record and write it with its traces
    (and, with save_model, its parameters to out_dir/model, before the record that vouches
    for them)."""
    out_dir = cell.out_dir
    if cell.keep is not None:
        cell.keep(result, k)
    if isinstance(cell.cfg, TokenRunConfig):
        record, decoded = token_record(cell.cfg, task, result, k), None
    elif world is None or not cell.evaluate:
        record, decoded = measured_record(cell, world, task, result, k, {}), None
    else:
        record, decoded = fact_record(cell, world, task, result, k, evaluation)
    if out_dir is not None:
        if save_model:
            save_params(Path(out_dir) / "model", result.model(k))
        write_json_atomic(Path(out_dir) / "record.json", record)
        if decoded is not None:
            save_traces(Path(out_dir) / "traces.npz", decoded)
    return record


def fact_record(
    cell: Cell,
    world: FactWorld,
    task: Task,
    result: TrainResult,
    k: int,
    evaluation: Evaluation | None = None,
) -> tuple[dict, Any]:
    """Model k's record and decoding traces: evaluated by its method, then by the cell's
    measures."""
    metrics, extra, decoded = method_evaluation(cell, world, result, k, evaluation)
    info = None if evaluation is None else evaluation.info
    return measured_record(cell, world, task, result, k, metrics, info, **extra), decoded


def method_evaluation(
    cell: Cell, world: FactWorld, result: TrainResult, k: int, evaluation: Evaluation | None
) -> tuple[dict, dict, Any]:
    """(metrics, record fields, decoding traces) of model k evaluated on its own world (a store
    of it in out_dir when the method uses one) or on `evaluation`, with the cost per answer."""
    cfg, model_cfg, out_dir = cell.cfg, cell.model_config(), cell.out_dir
    graphdef, params, method = result.graphdef, result.model(k), cfg.method
    seen = (
        world
        if evaluation is None
        else make_fact_world(world.spec.with_entities(evaluation.n_entities))
    )
    entities = None if evaluation is None else evaluation.entities
    kind = cfg.store if evaluation is None else evaluation.store
    with tempfile.TemporaryDirectory() as tmp:
        store, path, extra = None, None, {}
        if method.uses_store:
            keep = out_dir is not None and evaluation is None  # a run keeps its store
            folder = Path(out_dir if keep else tmp)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "store.sqlite" if kind == "sqlite" else None
            t0 = time.perf_counter()
            store = build_store(seen, kind, path)
            extra["store"] = {"kind": kind, "facts": len(store)}
            if evaluation is not None:
                extra["store"]["build_s"] = time.perf_counter() - t0
        metrics, decoded = evaluate(cfg, seen, graphdef, params, store, entities)
        if method.bits_held and evaluation is None and cell.floor:
            metrics.update(weights_metrics(cfg, world, graphdef, params, metrics))
        if evaluation is not None and store is not None:
            lookups = len(entities) * world.spec.n_attributes
            extra["store"].update(lookup_s=metrics.get("lookup_s"), lookups=lookups)
        n_params = count_params(params, model_cfg)["total"]
        # per answered fact: tokens, FLOPs, latency, memory (cost.py)
        extra["cost"] = record_cost(
            model_cfg, seen, graphdef, params, decoded, n_params, store, path
        )
        if store is not None:
            store.close()
    return metrics, extra, decoded


def measured_record(
    cell: Cell,
    world: FactWorld | None,
    task: Task,
    result: TrainResult,
    k: int,
    metrics: dict,
    evaluation: dict | None = None,
    **extra: Any,
) -> dict:
    """Model k's record, complete: its metrics so far with the cell's measures added, and
    the cell's fields (a `train` field adds to the train block)."""
    for measure in cell.measures:
        metrics.update(measure(result, k, metrics))
    extra.update(cell.fields(result, k) if cell.fields is not None else {})
    how = dict(model_cfg=cell.model_config(), train_cfg=cell.train_config())
    return make_record(cell.cfg, world, result, k, metrics, task, evaluation, **how, **extra)


def weights_metrics(cfg: RunConfig, world: FactWorld, graphdef, params, metrics: dict) -> dict:
    """For a method holding bits in its weights: on a structured world, the answers on
    held-out entities; on a rule-free one, the noise floor of bits on unseen facts."""
    if world.spec.rule_alpha is not None:
        return held_out_metrics(cfg, world, graphdef, params)
    return noise_floor_metrics(cfg, world, graphdef, params, metrics["bits_memorized"])
