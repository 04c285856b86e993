"""One run: build a fact world, train a model in-weight, in-tool or with a side memory,
evaluate it by real greedy decoding, and write its record.

In-weight: the model trains on all N facts and is evaluated on them.
Side-memory: as in-weight, with a product-key memory in place of one block's MLP.
In-tool: the store holds all N facts; the model trains on traces of the first entities and
never sees the last `unseen` ones (invariant 6), which are evaluated through the store only.
Its stopping rule watches extra validation entities beyond the world, so neither the
trained nor the unseen test facts decide when training ends.
Structured worlds (rule_alpha set): recall is split into rule-following facts and exceptions,
and an in-weight model is also asked about held-out entities (the next ones of the same
world, never trained on): does it answer with the rule, i.e. does it generalize?
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from recall_bench import formats
from recall_bench.checkpoint import save_params
from recall_bench.decode import Decoded, greedy_decode
from recall_bench.identity import finished_record
from recall_bench.metrics import bits_memorized, sequence_stats, summarize_in_weight
from recall_bench.model import ModelConfig, count_params
from recall_bench.records import new_record, write_json_atomic
from recall_bench.tool import ERROR_STATUS, OK, Store, build_store
from recall_bench.train import Task, TrainConfig, TrainResult, late_gain, plateaued, train_models
from recall_bench.worlds import FactSpec, FactWorld, make_fact_world, spec_fields, spec_hash

MODES = ("in-weight", "in-tool", "side-memory")
HELD_OUT_ENTITIES = 1000  # structured worlds: at most this many held-out entities (and <= N)


@dataclasses.dataclass(frozen=True)
class BaseRunConfig:
    """What every kind of run has: a mode, a data size, the model's shape and its training."""

    mode: str = "in-weight"
    n_facts: int = 256  # facts (or, for random tokens, sequences)
    layers: int = 2
    width: int = 32
    heads: int = 4
    mlp_ratio: int = 4
    dtype: str = "float32"
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-2
    seed: int = 0  # seeds the world, the initialization and the batch stream

    def model_shape(self, vocab_size: int, max_len: int, **memory) -> ModelConfig:
        """The ModelConfig of this run's model for a vocabulary and sequence length."""
        return ModelConfig(
            vocab_size=vocab_size,
            max_len=max_len,
            layers=self.layers,
            width=self.width,
            heads=self.heads,
            mlp_ratio=self.mlp_ratio,
            dtype=self.dtype,
            **memory,
        )

    def train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr)


@dataclasses.dataclass(frozen=True)
class RunConfig(BaseRunConfig):
    """A fact run: the world's shape, the store (in-tool) and the side memory's shape."""

    attribute_sizes: tuple[int, ...] = (4096,)
    key_length: int = 4
    key_alphabet: int = 64
    value_length: int = 2
    value_alphabet: int = 64
    store: str = "memory"  # in-tool: memory | sqlite
    unseen_fraction: float = 0.2  # in-tool: share of entities held out of training
    max_unseen: int = 1000  # in-tool: cap on held-out entities
    validation_entities: int = 256  # in-tool: extra entities watched by the stopping rule
    memory_layer: int = 0  # side-memory: block whose MLP becomes the memory
    memory_size: int = 16384  # side-memory: value rows, a perfect square
    memory_topk: int = 8  # side-memory: rows read per head and token
    memory_heads: int = 4  # side-memory
    memory_key_dim: int = 32  # side-memory: query size per head
    memory_lr_scale: float = 10.0  # side-memory: value-table learning rate / lr
    rule_alpha: float | None = None  # structured world: exception rate (None: fully random)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attribute_sizes", tuple(self.attribute_sizes))
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.n_facts < 1 or self.n_facts % len(self.attribute_sizes):
            raise ValueError(
                f"n_facts = {self.n_facts} must be a positive multiple of the number of "
                f"attributes ({len(self.attribute_sizes)})"
            )
        if self.store not in ("memory", "sqlite"):
            raise ValueError(f"store must be 'memory' or 'sqlite', got {self.store!r}")
        if not 0.0 < self.unseen_fraction < 1.0:
            raise ValueError(f"unseen_fraction must be in (0, 1), got {self.unseen_fraction}")
        self.model_config()  # checks the world (a SpecError) and model fields now

    @property
    def format(self) -> str:
        """How facts are rendered: a side memory trains on the in-weight format."""
        return "in-weight" if self.mode == "side-memory" else self.mode

    @property
    def spec(self) -> FactSpec:
        return FactSpec(
            n_entities=self.n_facts // len(self.attribute_sizes),
            attribute_sizes=self.attribute_sizes,
            key_length=self.key_length,
            key_alphabet=self.key_alphabet,
            value_length=self.value_length,
            value_alphabet=self.value_alphabet,
            seed=self.seed,
            rule_alpha=self.rule_alpha,
        )

    def model_config(self) -> ModelConfig:
        spec = self.spec
        memory = {}
        if self.mode == "side-memory":
            memory = dict(
                memory_layer=self.memory_layer,
                memory_size=self.memory_size,
                memory_topk=self.memory_topk,
                memory_heads=self.memory_heads,
                memory_key_dim=self.memory_key_dim,
            )
        return self.model_shape(formats.Vocab.of(spec).size, formats.max_length(spec), **memory)

    def train_config(self) -> TrainConfig:
        scale = self.memory_lr_scale if self.mode == "side-memory" else 1.0
        return dataclasses.replace(super().train_config(), memory_lr_scale=scale)

    def unseen_entities(self) -> int:
        if self.mode != "in-tool":
            return 0
        n = self.spec.n_entities
        return min(self.max_unseen, max(1, round(self.unseen_fraction * n)), n - 1)

    def trained_entities(self) -> int:
        """Entities 0..trained_entities()-1 are trained on; any later entity is unseen."""
        return self.spec.n_entities - self.unseen_entities()


def make_task(cfg: RunConfig, world: FactWorld) -> Task:
    """Training sequences and the monitored facts of a run."""
    spec = world.spec
    trained = np.arange(cfg.trained_entities())
    train = formats.render(world, cfg.format, trained)
    if cfg.mode == "in-tool":
        extra = make_fact_world(spec.with_entities(spec.n_entities + cfg.validation_entities))
        watched = np.arange(spec.n_entities, extra.spec.n_entities)
        monitor = formats.render(extra, cfg.mode, watched)
        return Task(train, monitor, extra.fact_bits()[: len(monitor.tokens)])
    limit = cfg.train_config().monitor_facts
    rows = np.random.default_rng([cfg.seed, 3]).permutation(len(train.tokens))[:limit]
    rows.sort()
    monitor = formats.Sequences(
        train.tokens[rows], train.loss_mask[rows], train.value_mask[rows], train.prompt_length
    )
    return Task(train, monitor, world.fact_bits()[rows])


def evaluate(
    cfg: RunConfig,
    world: FactWorld,
    graphdef,
    params,
    store: Store | None = None,
    entities: np.ndarray | None = None,
) -> tuple[dict[str, float], Decoded]:
    """Decode every fact of `entities` (default: all) greedily, with `store` in the loop for
    in-tool, and compute the metrics of the run's mode. In-tool, entities at or past
    cfg.trained_entities() count as unseen (`world` may be larger than cfg's world)."""
    spec = world.spec
    entity, attribute = formats.fact_index(spec, entities)
    expected = formats.answer_tokens(world, entity, attribute)
    vocab = formats.Vocab.of(spec)
    t0 = time.perf_counter()
    decoded = greedy_decode(
        graphdef,
        params,
        formats.prompt_tokens(world, entity, attribute),
        vocab,
        spec.key_length,
        spec.value_length,
        store,
    )
    eval_s = time.perf_counter() - t0
    right = answered(decoded, expected)
    seqs = formats.render(world, cfg.format, entities)
    stats = sequence_stats(graphdef, params, seqs.tokens, seqs.loss_mask, seqs.value_mask)
    n_params = count_params(params, cfg.model_config())
    fact_bits = world.fact_bits().reshape(spec.n_entities, spec.n_attributes)[entity, attribute]
    metrics = summarize_in_weight(
        stats, seqs.value_mask, fact_bits, n_params["total"], n_params["non_embedding"]
    )
    if "memory" in n_params:
        metrics.update(
            bits_per_memory_param=metrics["bits_memorized"] / n_params["memory"],
            bits_per_active_param=metrics["bits_memorized"] / n_params["active_per_token"],
        )
    metrics.update(recall=float(right.mean()), eval_s=eval_s)
    if spec.rule_alpha is not None:
        metrics.update(rule_metrics(world, decoded, right, entity, attribute))
        exception = ~world.follows_rule()[entity, attribute]  # what the rule cannot give
        nll = stats["value_nll_bits"][exception]
        metrics["bits_memorized_exceptions"] = bits_memorized(nll, fact_bits[exception])
    if cfg.mode == "in-tool":
        unseen = entity >= cfg.trained_entities()
        key_right = decoded.call_valid & np.all(decoded.call_key == world.keys[entity], axis=1)
        key_right &= decoded.call_attribute == attribute
        ok = decoded.store_status == OK
        copied = answered(decoded, decoded.store_value + vocab.value_offset)
        metrics.update(
            recall_trained=float(right[~unseen].mean()) if (~unseen).any() else None,
            recall_unseen=float(right[unseen].mean()) if unseen.any() else None,
            call_valid=float(decoded.call_valid.mean()),
            call_key_accuracy=float(key_right.mean()),
            copy_accuracy=float(copied[ok].mean()) if ok.any() else 0.0,
            store_errors=float(np.mean(decoded.store_status == ERROR_STATUS)),
            lookup_s=decoded.lookup_s,
        )
    return metrics, decoded


def rule_metrics(
    world: FactWorld, decoded: Decoded, right: np.ndarray, entity: np.ndarray, attribute: np.ndarray
) -> dict[str, float | None]:
    """Recall of the facts that follow the rule and of the exceptions (None where there are
    none), and rule_accuracy: the share of answers that are the rule's value."""
    follows = world.follows_rule()[entity, attribute]
    rule_world = dataclasses.replace(world, values=world.rule_values())
    by_rule = answered(decoded, formats.answer_tokens(rule_world, entity, attribute))
    return {
        "recall_rule": float(right[follows].mean()) if follows.any() else None,
        "recall_exceptions": float(right[~follows].mean()) if (~follows).any() else None,
        "rule_accuracy": float(by_rule.mean()),
    }


def held_out_metrics(cfg: RunConfig, world: FactWorld, graphdef, params) -> dict[str, float]:
    """Exact and rule accuracy on the next min(HELD_OUT_ENTITIES, N) entities of the same
    world, which the model never trained on: what it generalized rather than memorized."""
    spec = world.spec
    n = spec.n_entities
    m = min(HELD_OUT_ENTITIES, n, spec.key_space - n)
    if m < 1:
        return {}
    bigger = make_fact_world(spec.with_entities(n + m))
    held, _ = evaluate(cfg, bigger, graphdef, params, entities=np.arange(n, n + m))
    return {
        "held_out_accuracy": held["recall"],
        "held_out_rule_accuracy": held["rule_accuracy"],
        "held_out_facts": m * spec.n_attributes,
    }


def answered(decoded: Decoded, expected: np.ndarray) -> np.ndarray:
    """Rows whose final answer is exactly `expected` [N, value_length] followed by EOS."""
    v = expected.shape[1]
    return (decoded.answer_length == v) & np.all(decoded.answer[:, :v] == expected, axis=1)


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


def holds_config(record: dict, cfg) -> bool:
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
    done = [
        None if d is None else finished_record(Path(d) / "record.json", c, resume)
        for c, d in zip(cfgs, out_dirs, strict=True)
    ]
    for out_dir, record in zip(out_dirs, done, strict=True):
        if save_model and record is not None and not (Path(out_dir) / "model").is_dir():
            raise ValueError(
                f"{out_dir} holds a run finished without --save-model: its parameters are "
                "gone; rerun it into another --out"
            )
    if all(r is not None for r in done):
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
        store = None
        if cfg.mode == "in-tool":
            folder = Path(out_dir or tmp)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "store.sqlite" if cfg.store == "sqlite" else None
            store = build_store(world, cfg.store, path)
        metrics, decoded = evaluate(cfg, world, result.graphdef, params, store)
        if world.spec.rule_alpha is not None and cfg.format == "in-weight":
            metrics.update(held_out_metrics(cfg, world, result.graphdef, params))
        store_info = None if store is None else {"kind": cfg.store, "facts": len(store)}
        if store is not None:
            store.close()
    record = make_record(cfg, world, result, k, metrics, task)
    if store_info is not None:
        record["store"] = store_info
    if out_dir is not None:
        if save_model:
            save_params(Path(out_dir) / "model", params)
        write_json_atomic(Path(out_dir) / "record.json", record)
        save_traces(Path(out_dir) / "traces.npz", decoded)
    return record


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


def make_record(cfg: RunConfig, world, result: TrainResult, k: int, metrics, task) -> dict:
    spec = world.spec
    return new_record(
        mode=cfg.mode,
        n_facts=spec.n_facts,
        bits_per_fact=spec.bits_per_fact,
        seed=cfg.seed,
        config=dataclasses.asdict(cfg),
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
    )


def save_traces(path: Path, decoded: Decoded) -> None:
    """Per-fact traces of the evaluation (call, parse, key, store answer, final answer)."""
    arrays = {k: v for k, v in dataclasses.asdict(decoded).items() if isinstance(v, np.ndarray)}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
