"""The edit protocol (docs/edits.md): base models that know a world's facts in two phrasings
(in-weight) or answer them through a store (in-tool); k facts changed by every method; one
record per (method, k, seed) with efficacy, generalization, specificity and cost per edit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from recall_bench import edit, formats, general
from recall_bench.edit_weights import WeightEditConfig
from recall_bench.experiments import edits_general
from recall_bench.experiments.config import RunConfig, make_task
from recall_bench.experiments.edits_located import located_edit
from recall_bench.experiments.engine import Cell, run_cells, trained_models
from recall_bench.experiments.recording import run_fields, save_base
from recall_bench.general import Suite, SuiteConfig
from recall_bench.records import new_record, write_json_atomic
from recall_bench.saved import restore_model
from recall_bench.tool import build_store
from recall_bench.train import Task, TrainConfig
from recall_bench.worlds import FactWorld, make_fact_world

STORE_METHODS = ("store-memory", "store-sqlite")
WEIGHT_METHODS = ("finetune", "finetune-replay", "rome", "memit")
METHODS = STORE_METHODS + WEIGHT_METHODS


def method_mode(method: str) -> str:
    """The kind of base model a method edits."""
    return "in-tool" if method in STORE_METHODS else "in-weight"


TRAIN_INFO = ("steps", "stop_reason", "exposures_per_fact", "wall_s", "compile_s")  # of a base
GENERAL_NOTE = "not measured: the base models learned facts only (no general suite to keep)"


def default_base() -> RunConfig:
    """2 layers, d=32 (about 30k parameters); 512 entities x 4 attributes of 64 values."""
    return RunConfig(
        n_facts=2048,
        attribute_sizes=(64, 64, 64, 64),
        value_length=1,
        value_alphabet=64,
        steps=3000,
    )


@dataclasses.dataclass(frozen=True)
class EditsConfig:
    """The protocol: the base run (its mode is set per method), edit counts, methods, seeds,
    and how each method edits."""

    base: RunConfig = dataclasses.field(default_factory=default_base)
    ks: tuple[int, ...] = (1, 4, 16, 64, 256, 1024)
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    tool_steps: int = 1500  # in-tool base: step budget (it stops at 100% recall)
    # in-tool base: learns the tool on this many entities of a protocol pool, so every fact
    # of the world is unseen and copying is learned from enough keys (docs/design.md §10)
    tool_train_entities: int = 2000
    finetune_steps: int = 1000  # fine-tuning budget; it stops at the first pass
    finetune_lr: float = 1e-3  # constant, no warmup (the published protocol's shape)
    finetune_batch: int = 64
    finetune_eval_every: int = 10  # steps between the checks that can stop it
    weights: WeightEditConfig = dataclasses.field(default_factory=WeightEditConfig)
    rome_chunk: int = 16  # facts per compiled ROME call (sequential inside)
    # bases that also learn this general suite (half of their rows, a fixed step budget), so
    # that every edit's general ability kept is measured (edits_general.py); None: facts only
    suite: SuiteConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(self.ks))
        object.__setattr__(self, "methods", tuple(self.methods))
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"unknown edit methods {unknown}: choose from {', '.join(METHODS)}")
        facts = self.base.n_facts
        bad = [k for k in self.ks if not 1 <= k < facts]
        if bad or not self.ks:
            raise ValueError(
                f"k = {bad or '(none)'}: every k must be in [1, {facts}) so that some facts "
                "stay unedited; raise --facts or lower --k"
            )
        if not self.seeds or self.finetune_steps < 1 or self.tool_steps < 1:
            raise ValueError("give at least one seed, and steps >= 1")
        if self.suite is not None:
            edits_general.check_fits(self.suite, self.base)

    def train_config(self) -> TrainConfig:
        """Fine-tuning: constant lr, checks every finetune_eval_every steps, target 100%."""
        return TrainConfig(
            steps=self.finetune_steps,
            batch_size=self.finetune_batch,
            lr=self.finetune_lr,
            warmup_steps=0,
            schedule="constant",
            steps_per_call=self.finetune_eval_every,
            eval_every=self.finetune_eval_every,
        )


@dataclasses.dataclass
class Base:
    """A base model of one seed: config, world, parameters, what it knew (right [n_facts],
    key-first) and its record block."""

    cfg: RunConfig
    world: FactWorld
    graphdef: Any
    params: Any
    right: np.ndarray
    info: dict
    suite: Suite | None = None  # the general suite it also learned (info["general"]: scores)


def answers(base_or_model, world: FactWorld, order: str, store=None) -> np.ndarray:
    """[n_facts] right answers of (cfg, graphdef, params) against `world`'s values."""
    cfg, graphdef, params = base_or_model
    if cfg.mode == "in-tool":
        return edit.tool_answers(graphdef, params, world, order, store)
    return edit.weight_answers(graphdef, params, world, order)


def cell_task(cfg: RunConfig, suite: Suite | None, world: FactWorld) -> Task:
    """A base's rows (make_task's, every fact in both phrasings), mixed half and half with the
    general suite if it has one."""
    task = make_task(cfg, world, formats.ORDERS)
    if suite is None:
        return task
    return edits_general.mixed_task(task, suite, cfg.model_config().max_len)


def train_bases(cfg: EditsConfig, mode: str, progress: bool) -> list[Base]:
    """One base model per seed, trained by the cell engine as one ensemble on both phrasings
    (their records, unwritten, give what an edit record says of its base)."""
    fields = {"mode": mode}
    if mode == "in-tool":
        fields.update(steps=cfg.tool_steps, tool_train_entities=cfg.tool_train_entities)
    cfgs = [dataclasses.replace(cfg.base, seed=s, **fields) for s in cfg.seeds]
    train_cfg, suite = cfgs[0].train_config(), None
    if cfg.suite is not None:
        train_cfg, suite = edits_general.general_training(cfg.suite, cfgs[0])
    cells = [Cell(c, task=functools.partial(cell_task, c, suite), train=train_cfg) for c in cfgs]
    bases = []
    for c, (result, k, record) in zip(cfgs, trained_models(cells, progress), strict=True):
        info = {"source": "trained", "orders": list(formats.ORDERS)}
        info.update({name: record["train"][name] for name in TRAIN_INFO})
        model = (result.graphdef, result.model(k))
        bases.append(make_base(c, make_fact_world(c.spec), *model, info, suite))
    return bases


def make_base(cfg: RunConfig, world, graphdef, params, info: dict, suite=None) -> Base:
    """A base model with what it answers in both phrasings (through a store of its world if
    in-tool); its record block `info` (where it came from) gains its recall and general scores."""
    store = build_store(world) if cfg.mode == "in-tool" else None
    right = {o: answers((cfg, graphdef, params), world, o, store) for o in formats.ORDERS}
    info = {"mode": cfg.mode, **info, "recall": {o: float(r.mean()) for o, r in right.items()}}
    if suite is not None:
        info["general"] = general.score(graphdef, params, suite)
    return Base(cfg, world, graphdef, params, right["key-first"], info, suite)


def saved_base(run_dir: str | Path) -> Base:
    """A base model from a run saved with `recall-bench run ... --save-model` (trained on
    the key-first phrasing only: its generalization is to a phrasing it never saw)."""
    from recall_bench.saved import load_run

    cfg, world, graphdef, params = load_run(run_dir)
    if cfg.mode == "side-memory":
        raise ValueError(f"{run_dir} is a side-memory run: edit an in-weight or in-tool run")
    return make_base(
        cfg, world, graphdef, params, {"source": str(run_dir), "orders": ["key-first"]}
    )


def save_bases(bases: list[Base], folder: str | Path) -> None:
    """Write each base to folder/<mode>-seed<s>/ (its parameters, config, record block and
    suite), so that `edit --from folder` edits it again without training it."""
    for base in bases:
        suite = None if base.suite is None else dataclasses.asdict(base.suite.config)
        saved = {"config": dataclasses.asdict(base.cfg), "info": base.info, "suite": suite}
        path = Path(folder) / f"{base.cfg.mode}-seed{base.cfg.seed}"
        save_base(path, {"params": base.params, "info": saved})


def saved_bases(folder: str | Path) -> dict[str, list[Base]]:
    """The bases save_bases wrote into `folder`, by mode, seeds ascending; what they answer
    and their general scores measured again (make_base)."""
    bases: dict[str, list[Base]] = {}
    for path in sorted(Path(folder).glob("*/base.json")):
        saved = json.loads(path.read_text())
        cfg = RunConfig(**saved["config"])
        suite = None
        if saved["suite"] is not None:
            init = {f.name for f in dataclasses.fields(SuiteConfig) if f.init}
            config = SuiteConfig(**{k: v for k, v in saved["suite"].items() if k in init})
            suite = edits_general.make_suite(config, cfg)
        info = {**saved["info"], "saved_base": str(path.parent)}
        model = restore_model(cfg, path.parent / "params")
        bases.setdefault(cfg.mode, []).append(
            make_base(cfg, make_fact_world(cfg.spec), *model, info, suite)
        )
    return {mode: sorted(found, key=lambda b: b.cfg.seed) for mode, found in bases.items()}


def bases_from(folder: str | Path) -> dict[str, list[Base]]:
    """The bases of a --from folder: those `edit --save-bases` wrote there, or else the one
    model of a run saved with `run --save-model`."""
    return saved_bases(folder) or {(base := saved_base(folder)).cfg.mode: [base]}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one method did to one base model: parameters after, right answers (both
    phrasings) against the edited world, and its cost and method-specific fields."""

    params: Any
    right: np.ndarray
    right_second: np.ndarray
    cost: dict
    info: dict


def store_outcome(base: Base, edits: edit.EditSet, kind: str) -> Outcome:
    """Write the new values into a store of `kind` built from the base world, then decode
    every fact through it."""
    before = jax.tree.map(np.array, base.params)
    new_world = edit.edited_world(base.world, edits)
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(base.world, kind, Path(tmp) / "store.sqlite")
        try:
            t0 = time.perf_counter()
            written = edit.edit_store(store, base.world, edits)
            wall = time.perf_counter() - t0
            model = (base.cfg, base.graphdef, base.params)
            right = {o: answers(model, new_world, o, store) for o in formats.ORDERS}
        finally:
            store.close()
    changed = edit.changed_entries(before, base.params)
    cost = {"wall_s": wall, "flops": 0, "bytes_written": written, "params_changed": changed}
    return Outcome(base.params, right["key-first"], right["attribute-first"], cost, {})


def weight_outcome(base: Base, edits: edit.EditSet, params, cost: dict, info: dict) -> Outcome:
    """Evaluate edited weights on the edited world, in both phrasings."""
    new_world = edit.edited_world(base.world, edits)
    model = (base.cfg, base.graphdef, params)
    right = {o: answers(model, new_world, o) for o in formats.ORDERS}
    changed = edit.changed_entries(base.params, params)
    cost = {**cost, "bytes_written": 4 * changed, "params_changed": changed}
    return Outcome(params, right["key-first"], right["attribute-first"], cost, info)


def finetune_cells(
    cfg: EditsConfig, method: str, bases: list[Base], edit_sets: list[edit.EditSet]
) -> list[dict]:
    """Fine-tune every seed's base on its edits: engine cells trained as one ensemble, each
    stopped at its first check where every edited fact answers its new value; their records."""
    cells = []
    for base, edits in zip(bases, edit_sets, strict=True):
        suite_rows = base.suite and base.suite.train
        task = edit.finetune_task(base.world, edits, method == "finetune-replay", suite_rows)
        cells.append(
            Cell(
                base.cfg,
                task=lambda world, task=task: task,  # made from the base's world above
                train=cfg.train_config(),
                init=lambda base=base: base.params,
                fields=functools.partial(finetune_fields, cfg, method, base, edits, task),
                evaluate=False,
            )
        )
    return run_cells(cells, progress=False)


def finetune_fields(
    cfg: EditsConfig, method: str, base: Base, edits: edit.EditSet, task: Task, result, k: int
) -> dict:
    """The edit record's fields of fine-tuned model k (the engine adds its `train` block)."""
    steps, model_cfg, train_cfg = result.steps[k], base.cfg.model_config(), cfg.train_config()
    length = task.train.tokens.shape[1] - 1
    flops = 3 * steps * train_cfg.batch_size * edit.sequence_flops(model_cfg, length)
    info = {
        "steps": steps,
        "stop_reason": result.stop_reason[k],
        "passed": result.stop_reason[k] == "recall",
        "history": result.history[k],
    }
    n = len(result.steps)
    cost = {"wall_s": result.wall_s / n, "flops": flops, "ensemble": n}
    outcome = weight_outcome(base, edits, result.model(k), cost, info)
    return edit_fields(cfg, base, method, edits, outcome)


def closed_form_outcomes(
    cfg: EditsConfig, method: str, bases: list[Base], edit_sets: list[edit.EditSet]
) -> list[Outcome]:
    """A method that trains nothing (a store write, ROME, MEMIT) applied to every seed's base."""
    if method in STORE_METHODS:
        kind = method.removeprefix("store-")
        return [store_outcome(b, e, kind) for b, e in zip(bases, edit_sets, strict=True)]
    out = []
    for base, edits in zip(bases, edit_sets, strict=True):
        model = (base.graphdef, base.params, base.world)
        args = (cfg.weights, cfg.rome_chunk, model, base.cfg.model_config(), edits, method)
        out.append(weight_outcome(base, edits, *located_edit(*args)))
    return out


def edit_fields(
    cfg: EditsConfig, base: Base, method: str, edits: edit.EditSet, outcome: Outcome
) -> dict:
    """What one (method, k, seed) cell's record adds to its base run's (recording.run_fields):
    what was edited, how well, at what cost, and from which base."""
    edited = edit.edited_mask(base.world, edits)
    groups = edit.specificity_groups(base.world, edits)
    metrics = edit.edit_metrics(outcome.right, outcome.right_second, base.right, edited, groups)
    k = edits.k
    per_edit = {f"{name}_per_edit": outcome.cost[name] / k for name in ("wall_s", "flops")}
    per_edit["bytes_per_edit"] = outcome.cost["bytes_written"] / k
    config = dataclasses.asdict(cfg)
    config["base"] = dataclasses.asdict(base.cfg)
    return dict(
        mode="edit",
        method=method,
        k=k,
        config=config,
        base=base.info,
        metrics={**metrics, "weights_unchanged": outcome.cost["params_changed"] == 0},
        general_ability=general_ability(base, outcome),
        cost={**outcome.cost, **per_edit},
        method_info=outcome.info,
    )


def closed_form_record(
    cfg: EditsConfig, base: Base, method: str, edits: edit.EditSet, outcome: Outcome
) -> dict:
    """The record of an edit that trained nothing: its base run's fields, then the edit's."""
    run = run_fields(base.cfg, base.world, base.params)
    return new_record(**{**run, **edit_fields(cfg, base, method, edits, outcome)})


def general_ability(base: Base, outcome: Outcome) -> dict | str:
    """The general measures after the edit and what they kept of the base's (graded above
    chance), or a note when the base learned no general suite."""
    if base.suite is None:
        return GENERAL_NOTE
    scores = general.score(base.graphdef, outcome.params, base.suite)
    chance = 1.0 / (base.suite.config.distractors + 1)
    return {"scores": scores, "kept": general.kept(scores, base.info["general"], chance)}


def run_edits(
    cfg: EditsConfig,
    out_dir: str | Path | None,
    progress: bool = True,
    bases: dict[str, list[Base]] | None = None,
) -> list[dict]:
    """Every method at every k on every seed: one record each, written to out_dir/records/
    (if given). `bases` (by mode) skips training them."""
    bases = dict(bases or {})
    records = []
    for method in cfg.methods:
        mode = method_mode(method)
        if mode not in bases:
            bases[mode] = train_bases(cfg, mode, progress)
        for k in cfg.ks:
            edit_sets = [edit.choose_edits(b.world, k, b.cfg.seed) for b in bases[mode]]
            if method.startswith("finetune"):
                made = finetune_cells(cfg, method, bases[mode], edit_sets)
            else:
                outcomes = closed_form_outcomes(cfg, method, bases[mode], edit_sets)
                made = [
                    closed_form_record(cfg, base, method, edits, outcome)
                    for base, edits, outcome in zip(bases[mode], edit_sets, outcomes, strict=True)
                ]
            records += made
            for record in made if out_dir is not None else ():
                name = f"{method}_k{k}_seed{record['seed']}.json"
                write_json_atomic(Path(out_dir) / "records" / name, record)
    return records
