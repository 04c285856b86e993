"""Consolidation into the weights (`recall-bench consolidate`; docs/protocols.md): a base model
that both answers OLD facts from its weights and looks facts up through a store is given a
world of N NEW facts in its store; its own store-mediated answers are then trained into its
weights offline, with no store, beside rehearsal of the old facts, of tool traces and of the
general suite. A second method trains the true facts instead, with the same mixture and steps.

Per seed: the base trains on a mixture of tool traces over a protocol pool (RunConfig
.protocol_pool), the old facts in-weight and the general suite. Every cell (method, N, seed)
then starts from its seed's base; all cells train as one vmapped ensemble and are measured
at each evaluation step: new facts recalled and bits held without the store, recall through
the store, old facts kept, the tool on fresh pool entities, general ability kept.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import numpy as np

from recall_bench import formats, general, streams
from recall_bench.consolidate import bits_moved, kept_share, mixture, own_answers
from recall_bench.experiments import engine
from recall_bench.experiments.config import BaseRunConfig, RunConfig
from recall_bench.experiments.evaluate import evaluate
from recall_bench.experiments.recording import world_block
from recall_bench.formats import Sequences
from recall_bench.model import ModelConfig
from recall_bench.records import clean_json
from recall_bench.stopping import FirstPass, check_eval_steps
from recall_bench.tool import Store, build_store
from recall_bench.train import Task, TrainConfig, TrainResult, take, train_models
from recall_bench.worlds import FactWorld, make_fact_world

METHODS = ("own-answers", "true-facts")
NEW_SEED, OLD_SEED = (
    streams.NEW_FACTS_OFFSET,
    streams.CONSOLIDATION_OLD_OFFSET,
)  # world seeds: seed + these


@dataclasses.dataclass(frozen=True)
class ConsolidateConfig:
    fact_counts: tuple[int, ...] = (64, 512, 2048, 4096)  # new facts per world
    methods: tuple[str, ...] = METHODS
    old_facts: int = 256  # facts the base holds in its weights
    tool_entities: int = 2000  # protocol-pool entities the base learns the tool on
    layers: int = 1
    width: int = 32
    heads: int = 4
    base_steps: int = 2000  # base training budget (cosine schedule)
    base_lr: float = 1e-2
    steps: int = 1200  # offline budget of every cell (constant learning rate)
    eval_steps: tuple[int, ...] | None = None  # None: 0, 50, 100, 200, ... doubling, and steps
    batch_size: int = 64
    lr: float = 3e-3
    rows: int = 1 << 14  # training rows of the base and of every cell
    new_share: float = 0.5  # offline mixture: new facts' share of the rows...
    old_share: float = 0.15  # ...rehearsal of the old facts (in-weight)...
    tool_share: float = 0.2  # ...of tool traces over the protocol pool...
    general_share: float = 0.15  # ...and of the general suite (0: no general data anywhere)
    seeds: tuple[int, ...] = (0, 1, 2)  # each seeds the worlds, the base and its batches
    suite: general.SuiteConfig = dataclasses.field(
        default_factory=lambda: general.SuiteConfig(train_per_skill=4000, test_per_skill=128)
    )

    def __post_init__(self) -> None:
        for name in ("fact_counts", "methods", "seeds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.eval_steps is None:
            doubling = [50 * 2**i for i in range(20) if 50 * 2**i < self.steps]
            object.__setattr__(self, "eval_steps", (0, *doubling, self.steps))
        object.__setattr__(self, "eval_steps", tuple(sorted(set(self.eval_steps))))
        if not self.fact_counts or min(self.fact_counts) < 1:
            raise ValueError(f"fact counts must be >= 1, got {self.fact_counts}")
        if not self.methods or set(self.methods) - set(METHODS):
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {self.methods}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be distinct, >= 0 and at least one, got {self.seeds}")
        if self.steps < 0 or min(self.eval_steps) < 0 or max(self.eval_steps) != self.steps:
            raise ValueError(
                f"evaluation steps {self.eval_steps} must be >= 0 and end at --steps {self.steps}"
            )
        shares = (self.new_share, self.old_share, self.tool_share, self.general_share)
        if min(shares) < 0 or not 0 < self.new_share < 1 or not math.isclose(sum(shares), 1.0):
            raise ValueError(
                f"mixture shares new/old/tool/general = {shares} must be >= 0, sum to 1 and "
                "give the new facts a share in (0, 1): the base trains on the others"
            )
        if self.old_facts < 1 or self.tool_entities < 1:
            raise ValueError("old facts and tool entities must be >= 1")
        # the trainer's own check, before any base trains (train_config validates steps, lr)
        check_eval_steps(tuple(self.eval_steps), self.train_config())
        self.model_config()

    def tool_run(self, seed: int) -> RunConfig:
        """The in-tool run whose protocol pool the base learns the tool on; also the config
        that evaluates through a store (every evaluated entity unseen)."""
        return RunConfig(
            mode="in-tool",
            n_facts=self.tool_entities,
            layers=self.layers,
            width=self.width,
            heads=self.heads,
            batch_size=self.batch_size,
            seed=seed,
            tool_train_entities=self.tool_entities,
        )

    def weight_run(self) -> RunConfig:
        """The config that evaluates in-weight answers (no store)."""
        return dataclasses.replace(self.tool_run(0), mode="in-weight", tool_train_entities=0)

    def model_config(self) -> ModelConfig:
        facts = self.tool_run(0).model_config()
        return dataclasses.replace(facts, max_len=max(facts.max_len, self.suite.width))

    def base_train_config(self) -> TrainConfig:
        """The base's whole budget (no recall or plateau stop)."""
        train = TrainConfig(steps=self.base_steps, batch_size=self.batch_size, lr=self.base_lr)
        return train.whole_budget()

    def train_config(self) -> TrainConfig:
        """The offline phase: a constant learning rate after a short warmup."""
        return TrainConfig(
            steps=max(self.steps, 25),
            batch_size=self.batch_size,
            lr=self.lr,
            warmup_steps=min(25, self.steps),
            schedule="constant",
        )


@dataclasses.dataclass(frozen=True)
class Seeded:
    """What one seed's cells share: the old facts, the protocol pool and its store (the
    fresh entities: the pool's validation entities, never trained on), the largest new world."""

    seed: int
    old: FactWorld
    pool: FactWorld
    pool_store: Store
    fresh: np.ndarray
    new: FactWorld


def seeded(cfg: ConsolidateConfig, seed: int) -> Seeded:
    spec = cfg.weight_run().spec
    pool = cfg.tool_run(seed).protocol_pool()
    return Seeded(
        seed=seed,
        old=make_fact_world(
            dataclasses.replace(spec, n_entities=cfg.old_facts, seed=seed + OLD_SEED)
        ),
        pool=pool,
        pool_store=build_store(pool),
        fresh=np.arange(cfg.tool_entities, pool.spec.n_entities),
        new=make_fact_world(
            dataclasses.replace(spec, n_entities=max(cfg.fact_counts), seed=seed + NEW_SEED)
        ),
    )


def new_world(s: Seeded, n_facts: int) -> FactWorld:
    """The first n_facts entities of the seed's new world (worlds are prefix-consistent)."""
    return make_fact_world(s.new.spec.with_entities(n_facts))


def rehearsal(cfg: ConsolidateConfig, s: Seeded, suite: general.Suite) -> list:
    """(sequences, share) of what the base holds: old facts, tool traces, general data."""
    tool = formats.render_in_tool(s.pool, np.arange(cfg.tool_entities))
    return [
        (formats.render_in_weight(s.old), cfg.old_share),
        (tool, cfg.tool_share),
        (suite.train, cfg.general_share),
    ]


def base_task(cfg: ConsolidateConfig, s: Seeded, suite: general.Suite) -> Task:
    """A base's rows: the rehearsal mixture (shares renormalized without the new facts),
    monitored on its old facts."""
    parts = [(seqs, share / (1 - cfg.new_share)) for seqs, share in rehearsal(cfg, s, suite)]
    data = mixture(parts, cfg.rows, cfg.model_config().max_len, s.seed)
    monitor = general.pad_to(formats.render_in_weight(s.old), cfg.model_config().max_len)
    return Task(data, monitor, s.old.fact_bits())


def train_bases(cfg: ConsolidateConfig, seeds: list[Seeded], suite, progress: bool) -> dict:
    """One base model per seed, trained by the cell engine as one ensemble (engine.base_models,
    records unwritten): {seed: (graphdef, params, record)}."""
    tasks = {s.seed: functools.partial(base_task, cfg, s, suite) for s in seeds}
    return engine.base_models(tasks, cfg.model_config(), cfg.base_train_config(), progress)


def measure(cfg: ConsolidateConfig, model: tuple, s: Seeded, world, store, suite) -> dict:
    """One evaluation of one model, all by real greedy decoding: new facts without and
    through the store, old facts without it, the tool on fresh pool entities; general ability."""
    weight, tool = cfg.weight_run(), cfg.tool_run(s.seed)
    alone, _ = evaluate(weight, world, *model)
    through, _ = evaluate(tool, world, *model, store)
    old, _ = evaluate(weight, s.old, *model)
    fresh, _ = evaluate(tool, s.pool, *model, s.pool_store, s.fresh)
    out = {
        "recall_without_store": alone["recall"],
        "bits_without_store": alone["bits_memorized"],
        "recall_through_store": through["recall"],
        "call_valid_through_store": through["call_valid"],
        "old_recall": old["recall"],
        "old_bits": old["bits_memorized"],
        "tool_recall_fresh": fresh["recall"],
        "tool_call_valid_fresh": fresh["call_valid"],
    }
    if cfg.general_share > 0:
        scores = general.score(*model, suite)
        out.update({k: scores[k] for k in ("general_accuracy", "general_mc_accuracy")})
    return out


def relative(point: dict, base: dict, chance: float) -> dict:
    """A measurement with what it kept or moved relative to the base's (step 0)."""
    out = dict(point)
    out["bits_moved"] = bits_moved(point["bits_without_store"], base["bits_without_store"])
    out["old_recall_kept"] = kept_share(point["old_recall"], base["old_recall"])
    out["tool_recall_fresh_kept"] = kept_share(
        point["tool_recall_fresh"], base["tool_recall_fresh"]
    )
    if "general_accuracy" in point:
        out.update(general.kept(point, base, chance))
    return out


@dataclasses.dataclass(frozen=True)
class Cell:
    """One consolidation: a method, a new world of N facts with its store, a seed; the data
    it trains on and how that data compares with the truth."""

    method: str
    n_facts: int
    seed: Seeded
    world: FactWorld
    store: Store
    data: Sequences
    taught: dict


def make_cell(
    cfg: ConsolidateConfig, method: str, n_facts: int, s: Seeded, base: tuple, suite
) -> Cell:
    """A cell's offline mixture: the new facts (the base's own answers through the store, or
    the truth) beside the rehearsal parts."""
    world = new_world(s, n_facts)
    store = build_store(world)
    truth = formats.render_in_weight(world)
    if method == "own-answers":
        new, kept, _ = own_answers(*base, world, store)
        if not kept.any():
            raise ValueError(
                f"seed {s.seed}: the base gave no well-formed answer through the store for "
                f"{n_facts} facts: train the base longer (--base-steps)"
            )
        right = (new.tokens == truth.tokens[kept]).all(axis=1)
        taught = {"answered": float(kept.mean()), "right": float(right.sum() / len(kept))}
    else:
        new, taught = truth, {"answered": 1.0, "right": 1.0}
    parts = [(new, cfg.new_share), *rehearsal(cfg, s, suite)]
    data = mixture(parts, cfg.rows, cfg.model_config().max_len, s.seed)
    return Cell(method, n_facts, s, world, store, data, taught)


def offline_task(cfg: ConsolidateConfig, cell: Cell, world=None) -> Task:
    """A cell's offline rows, monitored on its new facts' truth (`world`, of its run of no fact
    world, is None)."""
    monitor = general.pad_to(formats.render_in_weight(cell.world), cfg.model_config().max_len)
    return Task(cell.data, monitor, cell.world.fact_bits())


def train_offline(
    cfg: ConsolidateConfig,
    cells: list[Cell],
    graphdef,
    suite,
    model_cfg,
    train_cfg,
    tasks,
    seeds,
    progress,
    init_params,
) -> TrainResult:
    """The cells' trainer (the engine hands it their ensemble in the order of `cells`):
    train_models from their bases on the consolidation batch stream, no store anywhere, every
    model measured at cfg.eval_steps relative to its first measurement, up to the last of them
    whatever the measures do."""
    chance = 1.0 / (cfg.suite.distractors + 1)
    first: list[list[dict]] = []
    t0 = time.perf_counter()

    def measure_all(params, step: int) -> list[dict]:
        points = [
            measure(cfg, (graphdef, take(params, k)), c.seed, c.world, c.store, suite)
            for k, c in enumerate(cells)
        ]
        if not first:
            first.append(points)
        if progress:
            done = time.perf_counter() - t0
            print(f"  step {step:>5}  evaluated {len(cells)} models  ({done:.0f} s)")
        return [relative(p, base, chance) for p, base in zip(points, first[0], strict=True)]

    return train_models(
        model_cfg, train_cfg, tasks, seeds, False, init_params,
        first_pass=FirstPass(measure_all, None, cfg.eval_steps),
        batch_offset=streams.CONSOLIDATION_BATCH_OFFSET,
    )  # fmt: skip


def consolidate_cells(
    cfg: ConsolidateConfig, cells: list[Cell], graphdef, trained: dict, suite, progress: bool
) -> list[dict]:
    """Train every cell from its seed's base (`trained`: engine.base_models' {seed: (graphdef,
    params, record)}) as one ensemble of the cell engine: one record per cell, complete when
    built (engine.trained_models)."""
    trainer = functools.partial(train_offline, cfg, cells, graphdef, suite)
    runs = [
        engine.Cell(
            BaseRunConfig(mode=f"consolidate-{c.method}", n_facts=c.n_facts, seed=c.seed.seed),
            task=functools.partial(offline_task, cfg, c),
            model=cfg.model_config(),
            train=cfg.train_config(),
            init=lambda seed=c.seed.seed: trained[seed][1],
            trainer=trainer,
            measures=(last_measurement,),
            fields=functools.partial(cell_fields, cfg, c, trained[c.seed.seed][2]),
            ensemble="consolidation",
        )
        for c in cells
    ]
    return [record for _, _, record in engine.trained_models(runs, progress)]


def last_measurement(result: TrainResult, k: int, metrics: dict) -> dict:
    """A cell's metrics: its last evaluation; a share of nothing (nan: the base had none) only
    in the trajectory (the train block's history)."""
    final = result.history[k][-1]
    return {
        key: v for key, v in final.items() if key != "step" and v is not None and not math.isnan(v)
    }


def cell_fields(
    cfg: ConsolidateConfig, cell: Cell, base: dict, result: TrainResult, k: int
) -> dict:
    """What a cell's record adds to the engine's: the sweep's config, the new world, the data
    it was taught, its new facts' exposures and the base it started from (`base`: the base's
    own record). Its train block (the whole budget, whatever the measures do: no plateau
    claimed) holds the whole trajectory as its history."""
    spec, train = cell.world.spec, base["train"]
    exposures = result.steps[k] * cfg.batch_size * cfg.new_share / spec.n_facts
    return dict(
        protocol="consolidation",
        bits_per_fact=spec.bits_per_fact,
        config=clean_json(dataclasses.asdict(cfg)),
        world=world_block(spec),
        train={"schedule": "constant", "rows": cfg.rows, "exposures_per_fact": exposures},
        consolidation={"method": cell.method, "data": cell.taught, "store": "none"},
        base={
            "steps": train["steps"],
            "lr": cfg.base_lr,
            "wall_s": train["wall_s"],
            "final_loss": train["final_loss"],
            "old_facts_monitor": train["history"],
        },
    )


def run_consolidation(cfg: ConsolidateConfig, progress: bool = True) -> list[dict]:
    """Train the bases, then every cell in one ensemble; one record per cell."""
    seeds = [seeded(cfg, s) for s in cfg.seeds]
    vocab = formats.Vocab.of(cfg.weight_run().spec)
    suite = general.make_suite(cfg.suite, vocab)
    if progress:
        print(f"base models: seeds {cfg.seeds}, {cfg.base_steps} steps")
    trained = train_bases(cfg, seeds, suite, progress)
    graphdef = trained[seeds[0].seed][0]
    cells = [
        make_cell(cfg, method, n, s, (graphdef, trained[s.seed][1]), suite)
        for method in cfg.methods
        for n in cfg.fact_counts
        for s in seeds
    ]
    if progress:
        print(f"offline phase: {len(cells)} cells, {cfg.steps} steps, no store")
    records = consolidate_cells(cfg, cells, graphdef, trained, suite, progress)
    for s in seeds:
        s.pool_store.close()
    return records
