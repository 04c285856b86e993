"""What a run is: its config (mode, data size, model shape, training, world, store, side
memory) and the training task it builds from a fact world.

The mode names a memory method (recall_bench/methods), which renders the facts. A method
that holds entities out (in-tool, retrieval-context) trains on the first entities and never
sees the last `unseen` ones (docs/design.md §6), or, with tool_train_entities, trains on
entities of a protocol pool of its own (§10); its stopping rule watches extra validation
entities, so no evaluated fact decides when training ends. Any other method trains on all N
facts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recall_bench import formats, methods, streams
from recall_bench.general import concat, rows_of
from recall_bench.methods import MODES, Method
from recall_bench.model import ModelConfig
from recall_bench.train import Task, TrainConfig
from recall_bench.worlds import FactSpec, FactWorld, make_fact_world

PROTOCOL_SEED = streams.PROTOCOL_OFFSET  # the protocol pool's world seed: the run's seed plus this


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
    warmup_steps: int = 50  # linear warmup of the learning rate
    schedule: str = "cosine"  # after warmup: cosine decay to 5% of lr, or "constant"
    weight_decay: float = 0.0  # AdamW
    eval_every: int = 100  # steps between progress checks (and stopping decisions)
    monitor_facts: int = 2048  # facts (or sequences) checked at each progress check
    grad_transpose: str = "input"  # or "narrower": faster on CPU at d <= 128, not bitwise

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
            grad_transpose=self.grad_transpose,
            **memory,
        )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_steps=self.warmup_steps,
            schedule=self.schedule,
            weight_decay=self.weight_decay,
            eval_every=self.eval_every,
            monitor_facts=self.monitor_facts,
        )


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
    # in-tool: train on this many entities of a protocol pool, a world of its own seed, and
    # hold out every entity of the evaluated world (0: train on the world's first entities)
    tool_train_entities: int = 0
    memory_layer: int = 0  # side-memory: block whose MLP becomes the memory
    memory_size: int = 16384  # side-memory: value rows, a perfect square
    memory_topk: int = 8  # side-memory: rows read per head and token
    memory_heads: int = 4  # side-memory
    memory_key_dim: int = 32  # side-memory: query size per head
    memory_lr_scale: float = 10.0  # side-memory: value-table learning rate / lr
    rule_alpha: float | None = None  # structured world: exception rate (None: fully random)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attribute_sizes", tuple(self.attribute_sizes))
        methods.get(self.mode)  # a ValueError naming the known modes
        if self.n_facts < 1 or self.n_facts % len(self.attribute_sizes):
            raise ValueError(
                f"n_facts = {self.n_facts} must be a positive multiple of the number of "
                f"attributes ({len(self.attribute_sizes)})"
            )
        if self.store not in ("memory", "sqlite"):
            raise ValueError(f"store must be 'memory' or 'sqlite', got {self.store!r}")
        if not 0.0 < self.unseen_fraction < 1.0:
            raise ValueError(f"unseen_fraction must be in (0, 1), got {self.unseen_fraction}")
        if self.tool_train_entities < 0 or (self.tool_train_entities and not self.method.holds_out):
            held_out = [m for m in MODES if methods.get(m).holds_out]
            raise ValueError(
                f"tool_train_entities = {self.tool_train_entities}: give a count >= 1 with mode "
                f"{' or '.join(held_out)} only (0: train on the world's own first entities)"
            )
        self.model_config()  # checks the world (a SpecError) and model fields now

    @property
    def method(self) -> Method:
        """The memory method of this run's mode (recall_bench/methods)."""
        return methods.get(self.mode)

    @property
    def format(self) -> str:
        """The built-in row format (formats.render) of this run: a side memory trains on the
        in-weight format. A method's own rows come from cfg.method.render."""
        return "in-weight" if self.method.side_memory else self.mode

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
        if self.method.side_memory:
            memory = dict(
                memory_layer=self.memory_layer,
                memory_size=self.memory_size,
                memory_topk=self.memory_topk,
                memory_heads=self.memory_heads,
                memory_key_dim=self.memory_key_dim,
            )
        return self.model_shape(formats.Vocab.of(spec).size, formats.max_length(spec), **memory)

    def train_config(self) -> TrainConfig:
        scale = self.memory_lr_scale if self.method.side_memory else 1.0
        return dataclasses.replace(super().train_config(), memory_lr_scale=scale)

    def unseen_entities(self) -> int:
        if not self.method.holds_out:
            return 0
        n = self.spec.n_entities
        if self.tool_train_entities:
            return n
        return min(self.max_unseen, max(1, round(self.unseen_fraction * n)), n - 1)

    def protocol_pool(self) -> FactWorld:
        """The protocol entities a held-out method trains on when tool_train_entities is set,
        then its validation entities: the same spec, a seed of its own (keys may coincide
        with an evaluated world's only by chance, with other values)."""
        n = self.tool_train_entities + self.validation_entities
        spec = dataclasses.replace(self.spec, n_entities=n, seed=self.seed + PROTOCOL_SEED)
        return make_fact_world(spec)

    def trained_entities(self) -> int:
        """Entities 0..trained_entities()-1 are trained on; any later entity is unseen."""
        return self.spec.n_entities - self.unseen_entities()


def make_task(cfg: RunConfig, world: FactWorld, orders: tuple[str, ...] = ()) -> Task:
    """Training sequences and the monitored facts of a run: rendered by its method, or with
    `orders` by its mode's format in each of those phrasings (formats.ORDERS), one phrasing's
    rows after another's."""
    spec, copies = world.spec, max(1, len(orders))

    def render(w: FactWorld, entities: np.ndarray) -> formats.Sequences:
        if not orders:
            return cfg.method.render(w, entities)
        return concat([formats.render(w, cfg.mode, entities, order) for order in orders])

    if cfg.tool_train_entities:
        pool, k = cfg.protocol_pool(), cfg.tool_train_entities
        train = render(pool, np.arange(k))
        monitor = render(pool, np.arange(k, pool.spec.n_entities))
        return Task(train, monitor, np.tile(pool.fact_bits()[k * spec.n_attributes :], copies))
    trained = np.arange(cfg.trained_entities())
    train = render(world, trained)
    if cfg.method.holds_out:
        extra = make_fact_world(spec.with_entities(spec.n_entities + cfg.validation_entities))
        watched = np.arange(spec.n_entities, extra.spec.n_entities)
        monitor = render(extra, watched)
        bits = extra.fact_bits()[: len(monitor.tokens) // copies]
        return Task(train, monitor, np.tile(bits, copies))
    limit = cfg.train_config().monitor_facts
    rows = streams.generator(cfg.seed, streams.MONITOR_ROWS).permutation(len(train.tokens))[:limit]
    rows.sort()
    return Task(train, rows_of(train, rows), np.tile(world.fact_bits(), copies)[rows])
