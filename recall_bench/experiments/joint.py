"""Shared capacity (`recall-bench degrade --protocol joint`; docs/design.md §7-§9): one
model trained from scratch on a fixed mixture of general data and N facts, so that as N passes
the model's fact capacity the facts and the general skills compete for the same weights.

Cells, each trained on `rows` sequences for the same step budget, every seed of a fact count
in one vmapped ensemble:
  general-only  the reference: the general suite (and its text) alone;
  in-weight     general_fraction of the rows general, the rest the N facts;
  in-tool       the same with tool traces over a protocol pool of entities disjoint from every
                evaluated world (invariant 10): trained once per seed, with the references,
                and evaluated at every N through a store of the N facts (all unseen);
  facts-only    the N facts alone, in-weight: the model's fact capacity under this budget.
In-weight facts are sampled Zipf-like (the row of rank r, in a seeded order, repeated in
proportion to (r + 1)^-zipf, each at least once), so frequent facts leave the early
no-knowledge plateau soon (invariant 7); facts-only and in-tool rows uniformly. Neither recall
nor fact bits stop a cell: each trains its whole budget, and its record says how much its whole
loss (a fixed monitor of fact and general rows) still fell over the last 30% of the steps.

Each cell runs through the cell engine (experiments/engine.py) as a Cell of its own rows,
measures and record fields; a resumed sweep trains only the cells it lacks.

Every cell reports the facts it holds (recall by greedy decoding, bits_memorized: in-tool these
are answered through the store) beside its general ability relative to the general-only model of
the same seed: exact accuracy kept, graded accuracy kept above chance, text bits per byte, and
KL / TV of its next-token distributions from that reference (at the answer positions, and on
the reference's own greedy continuations of general prompts).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from recall_bench import general, streams
from recall_bench.checkpoint import load_params, save_params
from recall_bench.divergences import divergence
from recall_bench.experiments.config import BaseRunConfig, RunConfig, make_task
from recall_bench.experiments.engine import Cell, finished, run_cells
from recall_bench.experiments.evaluate import evaluate
from recall_bench.general import rows_of
from recall_bench.model import ModelConfig, init_model
from recall_bench.records import clean_json, read_record
from recall_bench.stopping import late_gain
from recall_bench.tool import build_store
from recall_bench.train import Task, TrainConfig, TrainResult
from recall_bench.worlds import make_fact_world

GENERAL, FACTS_ONLY = "general-only", "facts-only"
MODES = ("in-weight", "in-tool")
MONITOR_ROWS = 2048  # rows of the fixed whole-loss monitor (half facts, half general)
LATE = 0.3  # share of the steps over which the whole loss's late drop is measured


FACTS = RunConfig(layers=1, width=16, heads=4, steps=2500, batch_size=64, lr=1e-2, eval_every=500)


@dataclasses.dataclass(frozen=True)
class JointConfig:
    fact_counts: tuple[int, ...] = (32, 2048, 8192)
    modes: tuple[str, ...] = MODES
    capacity_counts: tuple[int, ...] | None = None  # facts-only cells (None: the largest N)
    # every cell's model shape, training (its whole budget: steps) and fact world's shape;
    # a cell sets its mode, fact count and seed
    facts: RunConfig = FACTS
    # in-tool: the tool protocol is learned on this many entities of a pool disjoint from
    # every evaluated world (invariant 10), once per seed; each N is served through its store
    tool_train_entities: int = 2000
    general_fraction: float = 0.5  # share of a mixed cell's rows that are general data
    zipf: float = 1.0  # exponent of the in-weight cells' fact sampling weights (0: uniform)
    rows: int = 1 << 17  # training rows of every cell
    seeds: tuple[int, ...] = (0, 1, 2)  # each seeds a world, an initialization, a batch stream
    suite: general.SuiteConfig = dataclasses.field(
        default_factory=lambda: general.SuiteConfig(text_file=general.STDLIB_TEXT)
    )

    def __post_init__(self) -> None:
        for name in ("fact_counts", "modes", "seeds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.capacity_counts is None:
            object.__setattr__(self, "capacity_counts", (max(self.fact_counts, default=2),))
        object.__setattr__(self, "capacity_counts", tuple(self.capacity_counts))
        counts = self.fact_counts + self.capacity_counts + (self.tool_train_entities,)
        if not self.fact_counts or min(counts) < 2 or max(counts) > self.rows // 2:
            raise ValueError(
                f"fact counts and tool_train_entities must be in [2, rows / 2 = "
                f"{self.rows // 2}], got {counts}: lower them or raise --rows"
            )
        if not self.modes or set(self.modes) - set(MODES):
            raise ValueError(f"joint modes must be a non-empty subset of {MODES}, got {self.modes}")
        if not 0.0 < self.general_fraction < 1.0:
            raise ValueError(f"general fraction must be in (0, 1), got {self.general_fraction}")
        if self.zipf < 0.0:
            raise ValueError(f"zipf exponent must be >= 0, got {self.zipf}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        self.model_config()  # validates the shape

    def run_config(self, kind: str, n_facts: int, seed: int) -> RunConfig:
        """The fact side of a cell (facts-only trains in-weight; in-tool on the pool)."""
        return dataclasses.replace(
            self.facts,
            mode="in-weight" if kind == FACTS_ONLY else kind,
            n_facts=n_facts,
            seed=seed,
            tool_train_entities=self.tool_train_entities if kind == "in-tool" else 0,
        )

    def cell_config(self, kind: str, n_facts: int, seed: int) -> BaseRunConfig:
        """A cell's run: its fact side, or for general-only the facts' shape and training over
        no fact world."""
        if kind != GENERAL:
            return self.run_config(kind, n_facts, seed)
        shared = {f.name: getattr(self.facts, f.name) for f in dataclasses.fields(BaseRunConfig)}
        return BaseRunConfig(**{**shared, "mode": GENERAL, "n_facts": 0, "seed": seed})

    def model_config(self) -> ModelConfig:
        """One shape for every cell: the in-tool model's, its positions covering the suite."""
        facts = self.run_config("in-tool", 2, 0).model_config()
        return dataclasses.replace(facts, max_len=max(facts.max_len, self.suite.width))

    def train_config(self) -> TrainConfig:
        """The whole budget, whatever the recall or the fact bits (never a recall stop)."""
        return self.facts.train_config().whole_budget()

    def kinds(self, n_facts: int) -> tuple[str, ...]:
        """The cells trained at a fact count (in-tool is trained once, with the references)."""
        weights = ("in-weight",) if "in-weight" in self.modes else ()
        return weights + ((FACTS_ONLY,) if n_facts in self.capacity_counts else ())


def zipf_rows(n: int, total: int, exponent: float, seed: int) -> np.ndarray:
    """[total] indices of n rows: the row of rank r (ranks in a seeded random order) repeated
    1 + floor((total - n) * w_r / sum w) times, w_r = (r + 1)^-exponent, the few left over going
    to the first ranks."""
    if total < n:
        raise ValueError(f"{total} training rows cannot hold {n} facts: raise --rows")
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    counts = 1 + np.floor((total - n) * weights / weights.sum()).astype(np.int64)
    counts[: total - counts.sum()] += 1
    order = streams.generator(seed, streams.ZIPF_ORDER).permutation(n)
    return np.repeat(order, counts)


def cell_task(cfg: JointConfig, kind: str, n_facts: int, seed: int, suite: general.Suite) -> Task:
    """A cell's training rows (padded to the model's length) and whole-loss monitor. Monitored
    fact rows carry their entropy, general rows 0. In-weight facts are drawn Zipf-like (cfg.zipf);
    facts-only cells, which measure capacity, uniformly (they hold more so); in-tool trains on
    traces of the protocol pool (the same for every N), drawn uniformly."""
    width = cfg.model_config().max_len
    n_general = {GENERAL: cfg.rows, FACTS_ONLY: 0}.get(kind, round(cfg.general_fraction * cfg.rows))
    mixed = rows_of(suite.train, np.arange(n_general) % len(suite.train.tokens))
    monitor = rows_of(suite.train, np.arange(MONITOR_ROWS) % len(suite.train.tokens))
    if kind == GENERAL:
        return Task(general.pad_to(mixed, width), monitor, np.zeros(MONITOR_ROWS))
    # in-tool (n_facts 0): the pool's traces, whatever the world (a smallest one stands in)
    run_cfg = cfg.run_config(kind, n_facts or len(cfg.facts.attribute_sizes), seed)
    facts = make_task(run_cfg, make_fact_world(run_cfg.spec))
    n = len(facts.train.tokens)
    zipf = cfg.zipf if kind == "in-weight" else 0.0
    drawn = rows_of(facts.train, zipf_rows(n, cfg.rows - n_general, zipf, seed))
    train = general.concat([drawn, mixed] if n_general else [drawn])
    half = MONITOR_ROWS // 2 if n_general else MONITOR_ROWS
    watched = rows_of(facts.monitor, np.arange(min(half, len(facts.monitor.tokens))))
    parts = [watched, rows_of(monitor, np.arange(half))] if n_general else [watched]
    bits = np.zeros(len(general.concat(parts).tokens))
    bits[: len(watched.tokens)] = facts.monitor_bits[: len(watched.tokens)]
    return Task(general.pad_to(train, width), general.concat(parts), bits)


def late_drop(history: list[dict], window: float = LATE) -> float | None:
    """How much the monitored whole loss fell over the last `window` of the steps, relative to
    its value now (0: flat; None before there is a check that far back)."""
    now = history[-1]
    earlier = [h for h in history if h["step"] <= now["step"] * (1 - window)]
    if not earlier or now["monitor_loss"] <= 0:
        return None
    return (earlier[-1]["monitor_loss"] - now["monitor_loss"]) / now["monitor_loss"]


def cell_metrics(
    cfg: JointConfig, cell: tuple[str, int, int], model: tuple, suite: general.Suite, ref: dict
) -> dict:
    """Facts held (fact cells: recall, bits; in-tool through the store of the N facts) and
    general ability, kept relative to the reference model of the same seed (ref: {graphdef,
    params, scores}; scores None: the cell is the reference, scored against itself)."""
    kind, n_facts, seed = cell
    graphdef, params = model
    metrics: dict = {}
    if kind != GENERAL:
        run_cfg = cfg.run_config(kind, n_facts, seed)
        world = make_fact_world(run_cfg.spec)
        store = build_store(world) if run_cfg.mode == "in-tool" else None
        metrics, _ = evaluate(run_cfg, world, graphdef, params, store)
        if store is not None:
            store.close()
    metrics.update(general.score(graphdef, params, suite))
    metrics.update(divergence(ref["graphdef"], ref["params"], graphdef, params, suite))
    base = ref["scores"] or metrics
    metrics.update(general.kept(metrics, base, 1.0 / (cfg.suite.distractors + 1)))
    return metrics


def cell_fields(cfg: JointConfig, kind: str, result: TrainResult, k: int) -> dict:
    """What model k's record adds: its mode, the protocol's block and, in its train block, how
    much the whole loss still fell late (a plateau: under 1%) and how much the monitored fact
    bits still rose (None for general-only, which holds none)."""
    drop = late_drop(result.history[k])
    plateau = drop is not None and drop < 0.01
    train = {
        "whole_loss_late_drop": drop,
        "fact_bits_late_gain": late_gain(result.history[k], LATE),
        "plateaued": plateau,
        "converged": plateau,
    }
    joint = {"config": clean_json(dataclasses.asdict(cfg))}
    return {"mode": kind, "train": train, "protocol": "joint", "joint": joint}


def cell_path(out: Path, kind: str, n_facts: int, seed: int) -> Path:
    return out / (f"{kind}-s{seed}" if kind == GENERAL else f"{kind}-{n_facts}-s{seed}")


def references(cfg: JointConfig, folder: Path) -> Callable[[int], dict]:
    """Each seed's general-only model in folder, read once: {graphdef, params, scores}."""

    @functools.cache
    def reference(seed: int) -> dict:
        path = cell_path(folder, GENERAL, 0, seed)
        graphdef, like = init_model(cfg.model_config(), 0)
        params = load_params(path / "params", like)
        scores = read_record(path / "record.json")["metrics"]
        return {"graphdef": graphdef, "params": params, "scores": scores}

    return reference


def measure(
    cfg: JointConfig,
    cell: tuple[str, int, int],
    suite: general.Suite,
    reference: Callable[[int], dict],
    out_dir: Path,
    result: TrainResult,
    k: int,
    metrics: dict,
) -> dict:
    """Model k's cell_metrics against its seed's reference (the engine's metrics so far: none).
    A general-only model is its own reference, its parameters kept in out_dir/params for the
    cells measured against it."""
    kind, _, seed = cell
    model = (result.graphdef, result.model(k))
    if kind != GENERAL:
        return cell_metrics(cfg, cell, model, suite, reference(seed))
    save_params(out_dir / "params", model[1])
    itself = {"graphdef": model[0], "params": model[1], "scores": None}
    return cell_metrics(cfg, cell, model, suite, itself)


def make_cell(cfg: JointConfig, cell: tuple[str, int, int], suite, reference, out: Path) -> Cell:
    """A cell on the engine: its rows (cell_task), measures (cell_metrics) and record fields;
    the cells of one call train as one ensemble, a seed's in-tool cells as one model (trained
    on the protocol pool, evaluated at each N)."""
    kind, n, seed = cell
    out_dir = cell_path(out, *cell)
    return Cell(
        cfg.cell_config(kind, n, seed),
        out_dir,
        task=lambda world: cell_task(cfg, kind, 0 if kind == "in-tool" else n, seed, suite),
        model=cfg.model_config(),
        train=cfg.train_config(),
        measures=(functools.partial(measure, cfg, cell, suite, reference, out_dir),),
        fields=functools.partial(cell_fields, cfg, kind),
        identity=(lambda record: cell_key(record["joint"]["config"], kind), cell_key(cfg, kind)),
        evaluate=False,
        ensemble="joint",
        shares="in-tool" if kind == "in-tool" else None,
    )


def train_cells(
    cfg: JointConfig,
    cells: list[tuple[str, int, int]],
    suite: general.Suite,
    reference: Callable[[int], dict],
    out: Path,
    progress: bool,
    resume: bool = False,
) -> list[dict]:
    """The records of cells (with resume, finished ones kept), the others trained as one
    ensemble by the engine, each measured against its seed's reference (`references`). A
    general-only cell is its seed's reference: it comes before the seed's other cells (the
    engine records an ensemble's cells in order); an in-tool cell (N 0), trained on the
    protocol pool, is recorded at every fact count of the sweep."""
    each = [
        (kind, m, seed)
        for kind, n, seed in cells
        for m in (cfg.fact_counts if kind == "in-tool" else (n,))
    ]
    made = [make_cell(cfg, cell, suite, reference, out) for cell in each]
    return run_cells(made, progress, resume=resume)


def reused(cfg: JointConfig, cells: list[tuple[str, int, int]], folder: Path) -> list[dict] | None:
    """The records of cells finished in folder under cfg (cell_key), or None when any is
    missing or was made under another config."""
    try:
        records = [finished(make_cell(cfg, cell, None, None, folder), True) for cell in cells]
    except ValueError:
        return None
    return None if None in records else records


def cell_key(cfg: JointConfig | dict, kind: str) -> dict:
    """What decides a cell's training: the config less the sweep's list of cells (a sweep resumed
    with fewer or more fact counts keeps the cells it shares), and for cells that train on no
    mixture (general-only, facts-only) less the general fraction, so they serve every fraction."""
    fields = clean_json(dataclasses.asdict(cfg) if isinstance(cfg, JointConfig) else cfg)
    drop = {"fact_counts", "modes", "capacity_counts"}
    drop |= {"general_fraction"} if kind in (GENERAL, FACTS_ONLY) else set()
    return {k: v for k, v in fields.items() if k not in drop}
