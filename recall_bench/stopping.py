"""The stopping rule: when a run has learned its facts (the recall target) or stopped
learning them (a plateau of the monitored bits, docs/design.md §7), and what the progress
display shows of it.

Plateau: bits gained over the last plateau_window (30%) of the steps run are under
plateau_tol (1%) of the bits held, the model holds at least plateau_min_bits (2%) of the
monitored entropy (so the early no-knowledge plateau does not count), and the step is past
both plateau_min_steps and plateau_after (70%) of the budget, when the cosine schedule has
decayed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from recall_bench.metrics import bits_memorized, sequence_stats

if TYPE_CHECKING:
    from recall_bench.formats import Task
    from recall_bench.optimizer import TrainConfig


@dataclasses.dataclass(frozen=True)
class FirstPass:
    """Evaluations in place of the monitor (docs/design.md §9): measure(stacked params, step)
    evaluates every model of an ensemble at step 0 and at each check (every eval_every steps,
    or the steps `at`, the last of which ends training); a model stops at the first evaluation
    whose "recall" reaches `target` (None: none stops early, a trajectory), or at the end (no
    plateau rule)."""

    measure: Callable[[Any, int], list[dict]]  # -> one evaluation per model (with "recall")
    target: float | None
    at: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.at is not None:
            object.__setattr__(self, "at", tuple(sorted(set(self.at))))
            if not self.at or self.at[0] < 0:
                raise ValueError(f"evaluation steps must be >= 0 and at least one, got {self.at}")

    def check_steps(self, cfg: TrainConfig) -> None:
        """check_eval_steps of this first pass's own evaluation steps."""
        check_eval_steps(self.at or (), cfg)


def check_eval_steps(at: tuple[int, ...], cfg: TrainConfig) -> None:
    """A ValueError unless the evaluation steps `at` fall on compiled calls within the budget."""
    if any(s % cfg.steps_per_call for s in at) or max(at, default=0) > cfg.budget:
        raise ValueError(
            f"evaluation steps {at} must be multiples of {cfg.steps_per_call} and at most "
            f"the budget ({cfg.budget})"
        )


def is_check(step: int, cfg: TrainConfig, first_pass: FirstPass | None = None) -> bool:
    """Whether `step` is a progress check: every eval_every steps and the budget, or a first
    pass's own evaluation steps."""
    if first_pass is not None and first_pass.at is not None:
        return step in first_pass.at
    return step % cfg.eval_every == 0 or step >= cfg.budget


def last_step(cfg: TrainConfig, first_pass: FirstPass | None = None) -> int:
    """The step at which training ends at the latest: the budget, or the last evaluation."""
    return cfg.budget if first_pass is None or first_pass.at is None else first_pass.at[-1]


def late_gain(history: list[dict], window: float) -> float | None:
    """Monitored bits gained over the last `window` share of the steps run, relative to the
    bits held now (docs/design.md §7: how far from saturation); None before there is a
    check that far back or while no bits are held (or measured: a trajectory without them)."""
    now = history[-1]
    earlier = [h for h in history if h["step"] <= now["step"] * (1 - window)]
    if not earlier or now.get("bits", 0.0) <= 0:
        return None
    return (now["bits"] - earlier[-1]["bits"]) / now["bits"]


def rule_applies(step: int, cfg: TrainConfig) -> bool:
    """Whether the plateau rule may stop a run at `step` (see plateaued)."""
    return step >= max(cfg.plateau_min_steps, cfg.plateau_after * cfg.budget)


def plateaued(history: list[dict], cfg: TrainConfig, monitor_entropy: float) -> bool:
    """Bits gained over the last plateau_window of steps are under plateau_tol of the bits
    held, the model holds enough bits to have left the early no-knowledge plateau, and the
    cosine schedule has decayed (plateau_after of the budget): stalls at the peak learning
    rate ended GPU capacity runs 15-20% below seeds that trained on (results/capacity_gpu)."""
    now = history[-1]
    held = now.get("bits", 0.0)  # a trajectory of other measures holds none
    if not rule_applies(now["step"], cfg) or held < cfg.plateau_min_bits * monitor_entropy:
        return False
    gain = late_gain(history, cfg.plateau_window)
    return gain is not None and gain < cfg.plateau_tol


def progress_fields(history: list[dict], cfg: TrainConfig, task: Task) -> dict[str, str]:
    """What the progress bar shows: loss, recall, the share of the monitored entropy held
    (for tasks with an entropy: not a general suite), and, once the plateau rule can apply,
    the bits gained over the last plateau_window of steps (what it checks)."""
    last = history[-1]
    fields = {"loss": f"{last['loss']:.3f}", "recall": f"{last['recall']:.3f}"}
    entropy = float(task.monitor_bits.sum())
    if entropy > 0:
        fields["bits"] = f"{last['bits'] / entropy:.1%}"
    gain = late_gain(history, cfg.plateau_window)
    if gain is not None and rule_applies(last["step"], cfg):
        fields["late"] = f"{gain:+.1%}"
    return fields


def check_progress(graphdef, params, task: Task) -> dict:
    stats = sequence_stats(
        graphdef, params, task.monitor.tokens, task.monitor.loss_mask, task.monitor.value_mask
    )
    return {
        "recall": float(np.mean(stats["exact"])),
        "bits": bits_memorized(stats["value_nll_bits"], task.monitor_bits),
        "monitor_loss": float(stats["loss_sum"].sum() / task.monitor.loss_mask[:, 1:].sum()),
    }
