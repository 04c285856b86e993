"""A base that already uses tools (`recall-bench degrade --protocol tool-base`; docs/design.md
§8-§10): what new facts cost a model that already knows general skills, some facts (old
knowledge) and the tool protocol, when they reach it through its store or through its weights.

The base, one per seed (the seeds in one vmapped ensemble), trains from scratch on a fixed mix:
general data (the skill suite and its text), tool traces over a protocol pool of entities
disjoint from every evaluated world (RunConfig.protocol_pool), and its old facts in-weight
(old_knowledge.py). Every cell starts from it:
  store-write           the N new facts are written into the store: zero gradient steps,
                        recall measured by decoding with the store in the loop;
  in-weight (lr)        fine-tuning on the N new facts at a constant learning rate;
  in-weight+replay (lr) the same, replay_fraction of the rows general data and old facts;
  store-write+fine-tune (lr, optional: in_tool_steps > 0) the store write, then a short
                        fine-tune on tool traces over the new facts' first entities (the
                        rest held out), recall measured through the store.
Fine-tuning is evaluated every eval_every steps, step 0 (the base) included, and stops at the
first evaluation whose recall on the new facts passes the target, or at its budget. Each
evaluation records the trajectory: recall and bits of the new facts, the general measures on a
fixed probe of held-out prompts, the old facts' recall and bits, and ||dtheta|| / ||theta||.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recall_bench import general
from recall_bench.experiments import old_knowledge
from recall_bench.experiments.config import RunConfig, make_task
from recall_bench.formats import Sequences
from recall_bench.general import rows_of
from recall_bench.metrics import bits_memorized
from recall_bench.model import ModelConfig
from recall_bench.train import Task, TrainConfig
from recall_bench.worlds import FactWorld

STORE = "store-write"
TOOL_FT = "store-write+fine-tune"  # the store write, then in-tool fine-tuning on the new facts


def default_base() -> RunConfig:
    """The base: 1 layer, d=24 (the joint protocol's small model), a 2,000-entity tool pool,
    128 old facts, 3,000 steps at lr 1e-2 (warmup, cosine)."""
    return RunConfig(
        mode="in-tool",
        n_facts=128,
        layers=1,
        width=24,
        heads=4,
        steps=3000,
        batch_size=64,
        lr=1e-2,
        tool_train_entities=2000,
    )


@dataclasses.dataclass(frozen=True)
class ToolBaseConfig:
    # the base model: its shape, its training (steps, batch, lr, schedule), its tool pool
    # (tool_train_entities, in-tool) and its old knowledge (n_facts facts, learned in-weight)
    base: RunConfig = dataclasses.field(default_factory=default_base)
    suite: general.SuiteConfig = dataclasses.field(
        default_factory=lambda: general.SuiteConfig(text_file=general.STDLIB_TEXT)
    )
    general_fraction: float = 0.5  # share of the base's rows that are general data
    old_fraction: float = 0.25  # share that are old facts (the rest: tool traces)
    base_rows: int = 1 << 17  # training rows of the base
    fact_counts: tuple[int, ...] = (32, 256, 2048)  # new facts
    seeds: tuple[int, ...] = (0, 1, 2)  # each seeds a base, its old facts and the new facts
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)  # constant fine-tuning learning rates
    replay: tuple[bool, ...] = (False, True)  # in-weight without and with replay
    steps: int = 300  # fine-tuning budget
    eval_every: int = 25  # steps between evaluations (a multiple of 25)
    target_recall: float = 0.99  # first-pass stop: recall on the new facts
    in_tool_steps: int = 0  # budget of the store write's in-tool fine-tune (0: none)
    in_tool_lrs: tuple[float, ...] = (3e-4, 1e-3)  # its constant learning rates
    replay_fraction: float = 0.5  # share of a replay mix's rows: general data and old facts
    probe_prompts: int = 32  # held-out prompts per skill scored at every evaluation
    probe_text: int = 256  # held-out text windows scored at every evaluation

    def __post_init__(self) -> None:
        for name in ("fact_counts", "seeds", "lrs", "replay", "in_tool_lrs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.base.mode != "in-tool" or self.base.tool_train_entities < 1:
            raise ValueError(
                "the tool-base base must be an in-tool run with tool_train_entities >= 1 "
                f"(got mode {self.base.mode!r}, {self.base.tool_train_entities} entities)"
            )
        if self.suite.width > self.model_config().max_len:
            raise ValueError(
                f"the suite's sequences ({self.suite.width} tokens) are longer than the facts' "
                f"({self.model_config().max_len}): shorten the suite's skills"
            )
        if not (self.general_fraction > 0 and self.old_fraction > 0) or (
            self.general_fraction + self.old_fraction >= 1
        ):
            raise ValueError(
                f"general ({self.general_fraction}) and old-fact ({self.old_fraction}) fractions "
                "must be > 0 and leave room for tool traces (sum < 1)"
            )
        if not 0.0 < self.replay_fraction < 1.0:
            raise ValueError(f"replay fraction must be in (0, 1), got {self.replay_fraction}")
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target recall must be in (0, 1], got {self.target_recall}")
        if not self.fact_counts or min(self.fact_counts) < 1:
            raise ValueError(f"fact counts must be >= 1, got {self.fact_counts}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if not self.lrs or min(self.lrs) <= 0:
            raise ValueError(f"learning rates must be > 0, got {self.lrs}")
        if self.in_tool_steps < 0 or (self.in_tool_steps and not self.in_tool_lrs):
            raise ValueError(
                f"in_tool_steps must be >= 0 (0: no in-tool fine-tune), got {self.in_tool_steps}, "
                "and needs at least one in-tool learning rate"
            )
        if self.in_tool_lrs and min(self.in_tool_lrs) <= 0:
            raise ValueError(f"in-tool learning rates must be > 0, got {self.in_tool_lrs}")
        if self.eval_every % 25 or self.eval_every < 25:
            raise ValueError(f"eval_every must be a multiple of 25, got {self.eval_every}")
        self.cell_config(self.fact_counts[0], self.seeds[0], self.lrs[0])  # validates them

    def model_config(self) -> ModelConfig:
        """One shape for the base and every cell: the in-tool model's."""
        return self.base.model_config()

    def base_train_config(self) -> TrainConfig:
        """The base trains its whole budget (no recall or plateau stop)."""
        return self.base.train_config().whole_budget()

    def cell_config(
        self, n_facts: int, seed: int, lr: float | None, method: str | None = None
    ) -> RunConfig:
        """A cell's run: fine-tuning at a constant lr (in-weight, or in-tool on the new facts'
        first entities for TOOL_FT), or (lr None) the store-write cell, in-tool through the
        base's protocol pool (every new fact unseen)."""
        steps = self.in_tool_steps if method == TOOL_FT else self.steps
        fine = dict(steps=steps, schedule="constant", warmup_steps=0)
        fine.update(eval_every=self.eval_every, n_facts=n_facts, seed=seed)
        if lr is None:
            return dataclasses.replace(self.base, **fine)
        mode = "in-tool" if method == TOOL_FT else "in-weight"
        return dataclasses.replace(self.base, mode=mode, tool_train_entities=0, lr=lr, **fine)

    def methods(self) -> list[tuple[str, float | None]]:
        """(method, lr) of every cell at a fact count: store-write, in-weight by lr, then the
        store write's in-tool fine-tune by lr (with in_tool_steps)."""
        fine = [
            ("in-weight+replay" if r else "in-weight", lr) for lr in self.lrs for r in self.replay
        ]
        tool = [(TOOL_FT, lr) for lr in self.in_tool_lrs] if self.in_tool_steps else []
        return [(STORE, None), *fine, *tool]


def base_task(cfg: ToolBaseConfig, seed: int, suite: general.Suite) -> Task:
    """The base's rows (general, tool traces over the pool, old facts; base_rows in all, padded
    to the model's length) and its monitor (old facts, then the pool's validation traces)."""
    run = dataclasses.replace(cfg.base, seed=seed)
    old = old_knowledge.old_world(run, seed)
    pool = make_task(run, old)  # the pool's traces: the world only gives the spec
    olds = old_knowledge.old_rows(old)
    n_general = round(cfg.general_fraction * cfg.base_rows)
    n_old = round(cfg.old_fraction * cfg.base_rows)
    n_tool = cfg.base_rows - n_general - n_old
    parts = [
        rows_of(suite.train, np.arange(n_general) % len(suite.train.tokens)),
        rows_of(pool.train, np.arange(n_tool) % len(pool.train.tokens)),
        rows_of(olds, np.arange(n_old) % len(olds.tokens)),
    ]
    width = cfg.model_config().max_len
    monitor = general.concat([olds, pool.monitor])
    bits = np.concatenate([old.fact_bits(), pool.monitor_bits])
    return Task(general.pad_to(general.concat(parts), width), general.pad_to(monitor, width), bits)


def replay_rows(cfg: ToolBaseConfig, suite: general.Suite, old: FactWorld, n: int) -> Sequences:
    """n rows of general data and old facts, in the base's proportion."""
    n_old = round(n * cfg.old_fraction / (cfg.old_fraction + cfg.general_fraction))
    olds = old_knowledge.old_rows(old)
    return general.concat(
        [
            rows_of(suite.train, np.arange(n - n_old) % len(suite.train.tokens)),
            rows_of(olds, np.arange(n_old) % len(olds.tokens)),
        ]
    )


def finetune_task(
    cfg: ToolBaseConfig, new: Sequences, bits: np.ndarray, replay: Sequences | None
) -> Task:
    """In-weight fine-tuning rows: the new facts (with replay, repeated to fill
    1 - replay_fraction of the rows, the replay rows the rest); monitored: the new facts."""
    width = cfg.model_config().max_len
    train = new
    if replay is not None:
        n = len(replay.tokens)
        facts = round(n * (1 - cfg.replay_fraction) / cfg.replay_fraction)
        train = general.concat([rows_of(new, np.arange(facts) % len(new.tokens)), replay])
    return Task(general.pad_to(train, width), general.pad_to(new, width), bits)


@dataclasses.dataclass(frozen=True)
class Probe:
    """The rows scored at every evaluation of one model, padded to one width: `parts` names
    each part's slice (new facts, old facts, each skill's held-out prompts and graded choices,
    held-out text)."""

    seqs: Sequences
    parts: dict[str, slice]


def make_probe(cfg: ToolBaseConfig, suite: general.Suite, old: Sequences, new: Sequences | None):
    """The probe of a cell: the new facts (none for the base alone), the old facts, the first
    probe_prompts held-out prompts of each skill (and their graded choices), the first
    probe_text held-out text windows."""
    k = cfg.suite.distractors + 1
    named = [("new", new), ("old", old)]
    for skill in suite.test:
        named.append((f"test:{skill}", rows_of(suite.test[skill], np.arange(cfg.probe_prompts))))
        choices = suite.choices[skill]
        named.append((f"choice:{skill}", rows_of(choices, np.arange(cfg.probe_prompts * k))))
    if suite.text is not None:
        windows = np.arange(min(cfg.probe_text, len(suite.text.tokens)))
        named.append(("text", rows_of(suite.text, windows)))
    named = [(name, seqs) for name, seqs in named if seqs is not None]
    parts, start = {}, 0
    for name, seqs in named:
        parts[name] = slice(start, start + len(seqs.tokens))
        start += len(seqs.tokens)
    width = cfg.model_config().max_len
    return Probe(general.pad_to(general.concat([s for _, s in named]), width), parts)


def probe_measures(
    stats: dict[str, np.ndarray], probe: Probe, suite: general.Suite, worlds: dict
) -> dict[str, float]:
    """The trajectory's measures of one model from its probe stats: recall and bits of the new
    facts, old_recall and old_bits, general_accuracy (exact), general_mc_accuracy (graded),
    text_bits_per_byte. worlds: {"old": FactWorld, "new_bits": [N] entropy or None}."""
    part = {name: {k: v[s] for k, v in stats.items()} for name, s in probe.parts.items()}
    out: dict[str, float] = {}
    if "new" in part:
        out["recall"] = float(np.mean(part["new"]["exact"]))
        out["bits"] = bits_memorized(part["new"]["value_nll_bits"], worlds["new_bits"])
    out.update(old_knowledge.old_scores(part["old"], worlds["old"]))
    skills = list(suite.test)
    out["general_accuracy"] = float(np.mean([np.mean(part[f"test:{s}"]["exact"]) for s in skills]))
    k = suite.config.distractors + 1
    graded = [
        general.choice_accuracy(part[f"choice:{s}"]["loss_sum"].reshape(-1, k)).mean()
        for s in skills
    ]
    out["general_mc_accuracy"] = float(np.mean(graded))
    if "text" in part:
        text = rows_of(probe.seqs, np.arange(probe.parts["text"].start, probe.parts["text"].stop))
        out["text_bits_per_byte"] = general.text_score(part["text"], text)["text_bits_per_byte"]
    return out
