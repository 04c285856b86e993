"""General-ability degradation (docs/design.md §8): what storing facts costs a model that
already knows something else, in its weights versus through a tool.

A base model is trained on the general suite and saved (orbax); every cell starts from it
and trains on N facts in one mode, all under the same recall target and step budget:
  in-weight         the N facts, answered from the weights;
  in-tool           tool-call traces (store of all N facts, some entities held out);
  in-weight+replay  the N facts mixed with a fraction of general-suite sequences;
  in-tool+replay    the traces mixed the same way;
  side-memory       the N facts, answered from a product-key memory added to one block of
                    the base model (beside its MLP, value table at zero: at the start the
                    model is the base model exactly); only the memory trains, every base
                    weight stays bitwise fixed.
Each cell reports recall (real greedy decoding, the tool in the loop for in-tool), the
held-out general suite's accuracy and loss, and KL(base || new) / TV of the next-token
distributions at the suite's answer positions; with a text file in the suite (--text-file),
also the held-out text's bits per byte, its change from the base model's, and its KL / TV.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import numpy as np

from recall_bench import formats, general, plots, tables
from recall_bench.divergences import divergence
from recall_bench.experiments import recording
from recall_bench.experiments.config import RunConfig, make_task
from recall_bench.experiments.engine import Cell, base_models, finished, run_cells
from recall_bench.experiments.recording import write_summary
from recall_bench.experiments.tool_cost import cost_splits, format_splits
from recall_bench.model import ModelConfig, add_side_memory, count_params
from recall_bench.progress import log
from recall_bench.records import clean_json
from recall_bench.train import Task, TrainConfig, TrainResult
from recall_bench.worlds import FactWorld

MODES = ("in-weight", "in-tool", "in-weight+replay", "in-tool+replay", "side-memory")
FACT_COUNTS = (256, 1024, 4096, 16384)
BASE_TRAIN = ("steps", "stop_reason", "final_loss", "wall_s", "compile_s")  # in base.json


# the fact side of every cell: model shape, injection budget and lr, seed, side memory
FACTS = RunConfig(layers=2, width=48, heads=4, steps=500, batch_size=256, lr=1e-3, memory_layer=-1)
# a cell without a side memory records RunConfig's own memory fields (as it always has)
NO_MEMORY = {
    f.name: f.default for f in dataclasses.fields(RunConfig) if f.name.startswith("memory_")
}


@dataclasses.dataclass(frozen=True)
class DegradeConfig:
    fact_counts: tuple[int, ...] = FACT_COUNTS
    modes: tuple[str, ...] = MODES
    # every cell's fact run: the model's shape, the injection's steps (the same for every
    # mode), batch size (the base's too) and lr, the seed of the base model, facts and batch
    # streams, and the side memory (memory_layer < 0: counted from the last block)
    facts: RunConfig = FACTS
    base_steps: int = 1200  # training of the base model on the suite
    base_lr: float = 1e-2
    target_recall: float = 0.95  # injection stops once the monitored facts reach this
    replay_fraction: float = 0.25  # share of general sequences in a replay mix
    replay_min: int = 4096  # a replay mix holds at least this many general sequences
    suite: general.SuiteConfig = dataclasses.field(default_factory=general.SuiteConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fact_counts", tuple(self.fact_counts))
        object.__setattr__(self, "modes", tuple(self.modes))
        if not self.fact_counts or min(self.fact_counts) < 2:
            raise ValueError(f"fact counts must be >= 2, got {self.fact_counts}")
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {self.modes}")
        if not 0.0 < self.replay_fraction < 1.0:
            raise ValueError(f"replay fraction must be in (0, 1), got {self.replay_fraction}")
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target recall must be in (0, 1], got {self.target_recall}")
        self.model_config()  # validates the shape
        if "side-memory" in self.modes:
            self.cell_model_config("side-memory")  # and the memory's

    @property
    def seed(self) -> int:
        return self.facts.seed

    def run_config(self, mode: str, n_facts: int) -> RunConfig:
        """The fact side of a cell (its mode without replay); only a side-memory cell's names
        a side memory."""
        memory = NO_MEMORY
        if mode == "side-memory":
            memory = {**self.memory_fields(), "memory_lr_scale": self.facts.memory_lr_scale}
        return dataclasses.replace(
            self.facts, mode=mode.removesuffix("+replay"), n_facts=n_facts, **memory
        )

    def model_config(self) -> ModelConfig:
        """The fact model's shape, its position table long enough for the suite too."""
        facts = self.run_config("in-tool", max(self.fact_counts)).model_config()
        return dataclasses.replace(facts, max_len=max(facts.max_len, self.suite.width))

    def cell_model_config(self, mode: str) -> ModelConfig:
        """The model a cell trains: the base model, with a side memory added in side-memory."""
        if mode != "side-memory":
            return self.model_config()
        return dataclasses.replace(self.model_config(), memory_mode="add", **self.memory_fields())

    def memory_fields(self) -> dict:
        """The side memory's ModelConfig fields, a negative memory_layer counted from the end."""
        f = self.facts
        layer = f.memory_layer + f.layers if f.memory_layer < 0 else f.memory_layer
        shape = ("memory_size", "memory_topk", "memory_heads", "memory_key_dim")
        return {"memory_layer": layer, **{k: getattr(f, k) for k in shape}}

    def injection_config(self, mode: str) -> TrainConfig:
        side = mode == "side-memory"
        train = self.run_config(mode, 2).train_config()  # the side memory's lr scale with it
        return dataclasses.replace(train, memory_only=side, target_recall=self.target_recall)

    def base_config(self) -> TrainConfig:
        return TrainConfig(steps=self.base_steps, batch_size=self.facts.batch_size, lr=self.base_lr)

    def base_key(self) -> dict:
        """The settings of this config that shape the base model (checked when a saved one is
        reused; a changed architecture default also fails the restore, by shape)."""
        model = self.model_config()
        return clean_json(
            {
                "model": {
                    f: getattr(model, f)
                    for f in ("vocab_size", "max_len", "layers", "width", "heads", "dtype")
                },
                "suite": self.suite.key(),
                "train": {
                    "steps": self.base_steps,
                    "batch_size": self.facts.batch_size,
                    "lr": self.base_lr,
                },
                "seed": self.seed,
            }
        )


def suite_task(suite: general.Suite, monitor_rows: int = 2048) -> Task:
    """The base model's task: the whole suite; progress is watched on its first training rows
    (teacher-forced exact match; no bits, so it trains to its budget or to 100%)."""
    monitor = general.rows_of(suite.train, np.arange(min(monitor_rows, len(suite.train.tokens))))
    return Task(suite.train, monitor, np.zeros(len(monitor.tokens)))


def train_base(cfg: DegradeConfig, suite: general.Suite, progress: bool = True) -> dict:
    """Train the base model on the suite, a cell of the engine over no fact world (its record
    unwritten: base.json is recording.save_base's): {graphdef, params, info} (info: scores,
    training)."""
    tasks = {cfg.seed: lambda: suite_task(suite)}
    [(graphdef, params, record)] = base_models(
        tasks, cfg.model_config(), cfg.base_config(), progress
    ).values()
    info = {
        "config": cfg.base_key(),
        "params": count_params(params),
        "scores": general.score(graphdef, params, suite),
        "train": {k: record["train"][k] for k in BASE_TRAIN},
    }
    return {"graphdef": graphdef, "params": params, "info": info}


def load_base(folder: str | Path, cfg: DegradeConfig, suite: general.Suite) -> dict:
    """The base model saved in folder (a ValueError if it was trained under another config).
    A base saved before the graded score existed gets it now, scored from its parameters on
    `suite`, so that its cells' graded score kept (general.kept) is measured."""
    key = ("config", cfg.base_key())
    base = recording.load_base(folder, "a base model", key, cfg.model_config())
    if "general_mc_accuracy" not in base["info"]["scores"]:
        fresh = general.score(base["graphdef"], base["params"], suite).items()
        graded = {k: v for k, v in fresh if k.endswith("_mc_accuracy")}
        base["info"]["scores"] = {**base["info"]["scores"], **graded}
    return base


def injection_task(cfg: DegradeConfig, mode: str, world: FactWorld, suite: general.Suite) -> Task:
    """A cell's training task. Replay repeats the facts `k` times and adds general rows so
    that they are exactly replay_fraction of the rows (and at least replay_min of them)."""
    task = make_task(cfg.run_config(mode, world.spec.n_facts), world)
    if not mode.endswith("+replay"):
        return task
    ratio = cfg.replay_fraction / (1.0 - cfg.replay_fraction)
    n = len(task.train.tokens)
    k = max(1, math.ceil(cfg.replay_min / (ratio * n)))
    replay = general.rows_of(suite.train, np.arange(round(ratio * k * n)) % len(suite.train.tokens))
    train = general.concat([task.train] * k + [replay])
    return Task(train, task.monitor, task.monitor_bits)


def run_cell(cfg, mode: str, n_facts: int, base: dict, suite, progress, out_dir=None, resume=False):
    """Inject n_facts into the base model in one mode (the engine: trained, evaluated and
    recorded, into out_dir if given); the cell's record."""
    cell = make_cell(cfg, mode, n_facts, base, suite, out_dir)
    [record] = run_cells([cell], progress, resume=resume)
    return record


def make_cell(cfg: DegradeConfig, mode: str, n_facts: int, base: dict, suite, out_dir=None) -> Cell:
    """A cell of the sweep: the fact run of its mode, its own rows (replay mixes), model (a
    side memory added) and training, started from the base model and measured against it."""
    model_cfg = cfg.cell_model_config(mode)

    def init():
        if mode == "side-memory":
            return add_side_memory(model_cfg, base["params"], cfg.seed)
        return base["params"]

    block = {"config": clean_json(dataclasses.asdict(cfg)), "base": base["info"]}
    return Cell(
        cfg.run_config(mode, n_facts),
        out_dir,
        task=lambda world: injection_task(cfg, mode, world, suite),
        model=model_cfg,
        train=cfg.injection_config(mode),
        init=init,
        measures=(functools.partial(general_measures, cfg, base, suite),),
        fields=lambda result, k: {"mode": mode, "degrade": block},
        identity=identity(cfg),
        group=mode,
        floor=False,
    )


def identity(cfg: DegradeConfig) -> tuple:
    """What a cell's record says it was made under (sweep_config), and what cfg is."""
    return sweep_config, dataclasses.asdict(cfg)


def general_measures(
    cfg: DegradeConfig, base: dict, suite: general.Suite, result: TrainResult, k: int, metrics
) -> dict:
    """Model k's general scores, their divergence from the base model's and what it kept
    (general.kept, as the joint and tool-base protocols measure it)."""
    graphdef, params = result.graphdef, result.model(k)
    out = general.score(graphdef, params, suite)
    out.update(divergence(base["graphdef"], base["params"], graphdef, params, suite))
    chance = 1.0 / (cfg.suite.distractors + 1)
    return {**out, **general.kept(out, base["info"]["scores"], chance)}


# a row's metrics; greedy_kl and greedy_tv: on the base's greedy continuations (newer records)
ROW_METRICS = ("recall", "recall_unseen", "general_accuracy", "general_accuracy_kept")
ROW_METRICS += ("general_loss", "kl", "tv", "greedy_kl", "greedy_tv")


def summary_row(record: dict) -> dict:
    m, t = record["metrics"], record["train"]
    row = {
        "n_facts": record["n_facts"],
        "mode": record["mode"],
        **{k: m.get(k) for k in ROW_METRICS},
        "steps": t["steps"],
        "stop_reason": t["stop_reason"],
        "train_s": t["wall_s"],
    }
    skills = record["degrade"]["config"]["suite"]["skills"]
    per_skill = [
        (general.accuracy_name(s), *(f"{s}_{k}" for k in ("loss", "kl", "tv"))) for s in skills
    ]
    row.update({name: m[name] for names in per_skill for name in names})
    if "text_bits_per_byte" in m:
        text = ("bits_per_byte", "bits_per_byte_change", "loss", "kl", "tv")
        row.update({f"text_{k}": m[f"text_{k}"] for k in text})
    return row


def sweep_config(record: dict) -> dict:
    """The degradation config a cell's record was made under, as DegradeConfig's fields: fields
    it predates take their defaults, and the fact-run fields that records made before the
    configs were nested hold at the top level move into `facts`."""
    default = clean_json(dataclasses.asdict(DegradeConfig()))
    then = dict(record["degrade"]["config"])
    flat = {k: then.pop(k) for k in list(then) if k in default["facts"]}
    then = {**default, **then}
    then["facts"] = {**default["facts"], **then["facts"], **flat}
    then["suite"] = {**default["suite"], **then["suite"]}
    return then


def run_degrade(
    cfg: DegradeConfig,
    out: str | Path,
    progress: bool = True,
    resume: bool = False,
    command: str | None = None,
) -> dict:
    """The sweep: base model (reused from out/base when present), then every (mode, N) cell
    (with resume, finished cells of the same config are kept); summary.json (`command`: the
    command line that ran it, None from Python) and the plot."""
    out = Path(out)
    t0 = time.perf_counter()
    cells = [(mode, n) for n in cfg.fact_counts for mode in cfg.modes]
    for mode, n in cells:  # refuse a record of another config before any training
        finished(Cell(cfg.run_config(mode, n), out / f"{mode}-{n}", identity=identity(cfg)), resume)
    suite = general.make_suite(cfg.suite, formats.Vocab.of(cfg.run_config("in-weight", 2).spec))
    if (out / "base" / "base.json").exists():
        base = load_base(out / "base", cfg, suite)
    else:
        log(progress, "training the base model on the general suite")
        base = train_base(cfg, suite, progress)
        recording.save_base(out / "base", base)
    log(progress, f"base: {json.dumps(base['info']['scores'])}")
    rows = []
    for i, (mode, n) in enumerate(cells, 1):
        log(progress, f"[{i}/{len(cells)}] {mode}, {n} facts")
        record = run_cell(cfg, mode, n, base, suite, progress, out / f"{mode}-{n}", resume)
        rows.append(summary_row(record))
        r = rows[-1]
        log(
            progress,
            f"    recall {r['recall']:.3f}, general {r['general_accuracy']:.3f}, "
            f"kl {r['kl']:.4f}, tv {r['tv']:.4f} ({r['steps']} steps)",
        )
    plot = plots.degradation(rows, base["info"]["scores"], out / "degradation.png")
    return write_summary(
        out, "degradation", cfg, command, time.perf_counter() - t0,
        model=dataclasses.asdict(cfg.model_config()),
        params=base["info"]["params"],
        base=base["info"],
        rows=rows,
        tool_cost=cost_splits(rows),  # one-time vs per-fact cost of learning the tool
        plot=str(plot),
    )  # fmt: skip


def format_table(summary: dict) -> str:
    base = summary["base"]["scores"]
    has_text = "text_bits_per_byte" in base
    text = f", text {base['text_bits_per_byte']:.3f} bits/byte" if has_text else ""
    columns = [("mode", "mode"), ("facts", "n_facts"), ("recall", "recall", ".3f")]
    columns += [("general", "general_accuracy", ".3f"), ("kept", "general_accuracy_kept", ".3f")]
    columns += [("kl", "kl", ".4f"), ("tv", "tv", ".4f"), ("gen tv", "greedy_tv", ".4f")]
    columns += [("steps", "steps")]
    columns += [("text bpb", "text_bits_per_byte", ".3f")] if has_text else []
    lines = [
        f"degradation: {summary['params']['total']:,}-parameter base model, general accuracy "
        f"{base['general_accuracy']:.3f}, loss {base['general_loss']:.4f}{text}",
        tables.format_table(summary["rows"], columns),
        format_splits(summary.get("tool_cost", [])),  # empty without a tool mode
        f"plot: {summary['plot']}   total {summary['wall_s']:.0f} s",
    ]
    return "\n".join(line for line in lines if line)
