"""The training configuration (budget, batch, AdamW and its schedule, the stopping rule's
thresholds) and the optimizer it defines."""

from __future__ import annotations

import dataclasses
import math

import jax
import optax

SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000  # step budget (rounded up to a multiple of steps_per_call)
    batch_size: int = 128
    lr: float = 1e-2
    warmup_steps: int = 50
    schedule: str = "cosine"  # after warmup: cosine decay to end_lr_fraction of lr, or constant
    end_lr_fraction: float = 0.05  # the cosine schedule's final learning rate / lr
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    adam_b1: float = 0.9  # AdamW: decay of the first-moment (gradient) average
    adam_b2: float = 0.98  # AdamW: decay of the second-moment average
    adam_eps: float = 1e-8  # AdamW: added to the root of the second moment
    memory_lr_scale: float = 1.0  # learning rate of product-key value tables, relative to lr
    memory_only: bool = False  # train only product-key memories; every other weight stays fixed
    grad_clip: float = 1.0
    steps_per_call: int = 25  # optimizer steps per compiled call
    eval_every: int = 100  # steps between progress checks (a multiple of steps_per_call)
    monitor_facts: int = 2048  # facts checked at each progress check
    target_recall: float = 1.0  # stop once the monitored recall reaches this
    plateau_window: float = 0.3  # plateau: bits gained over the last 30% of steps...
    plateau_tol: float = 0.01  # ...are under 1% of the bits held...
    plateau_min_bits: float = 0.02  # ...and the model holds >= 2% of the monitored entropy
    plateau_min_steps: int = 1000  # no plateau is declared before this step...
    plateau_after: float = 0.7  # ...nor before this share of the budget (see plateaued)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "steps_per_call", "eval_every", "monitor_facts"):
            if getattr(self, name) < 1:
                raise ValueError(f"train {name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every % self.steps_per_call:
            raise ValueError(
                f"eval_every ({self.eval_every}) must be a multiple of steps_per_call "
                f"({self.steps_per_call})"
            )
        if not self.memory_lr_scale > 0:
            raise ValueError(f"memory_lr_scale must be > 0, got {self.memory_lr_scale}")
        if not 0.0 <= self.plateau_after <= 1.0:
            raise ValueError(f"plateau_after must be in [0, 1], got {self.plateau_after}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps and weight_decay must be >= 0")
        if not (0.0 <= self.adam_b1 < 1.0 and 0.0 <= self.adam_b2 < 1.0 and self.adam_eps > 0):
            raise ValueError(
                f"AdamW needs 0 <= adam_b1, adam_b2 < 1 and adam_eps > 0, got {self.adam_b1}, "
                f"{self.adam_b2}, {self.adam_eps}"
            )
        if not 0.0 <= self.end_lr_fraction <= 1.0:
            raise ValueError(f"end_lr_fraction must be in [0, 1], got {self.end_lr_fraction}")

    @property
    def budget(self) -> int:
        return -(-self.steps // self.steps_per_call) * self.steps_per_call

    def whole_budget(self) -> TrainConfig:
        """This training run to its whole budget: neither the recall target nor the plateau
        stops it (a base model, or a mix whose every part has to converge: docs/design.md §9)."""
        return dataclasses.replace(self, target_recall=math.inf, plateau_min_bits=math.inf)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warmup then cosine decay (or a constant rate) after global-norm
    clipping; product-key value
    tables (sparse: each row gets a gradient only when read) use lr * memory_lr_scale. With
    memory_only, parameters outside the memories get zero updates and no say in the clip."""

    def adamw(lr: float) -> optax.GradientTransformation:
        warmup = min(cfg.warmup_steps, cfg.budget - 1)
        if cfg.schedule == "constant":
            schedule = optax.join_schedules(
                [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
            )
        else:
            schedule = optax.warmup_cosine_decay_schedule(
                0.0, lr, warmup, cfg.budget, end_value=lr * cfg.end_lr_fraction
            )
        return optax.adamw(
            schedule,
            b1=cfg.adam_b1,
            b2=cfg.adam_b2,
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
        )

    def labels(params):
        def label(path, _) -> str:
            names = {getattr(k, "key", None) for k in path}
            if "value_table" in names:
                return "memory"
            return "frozen" if cfg.memory_only and "memory" not in names else "dense"

        return jax.tree_util.tree_map_with_path(label, params)

    def frozen(params):
        return jax.tree.map(lambda label: label == "frozen", labels(params))

    clip = optax.clip_by_global_norm(cfg.grad_clip)
    if cfg.memory_lr_scale == 1.0 and not cfg.memory_only:
        return optax.chain(clip, adamw(cfg.lr))
    updates = {"dense": adamw(cfg.lr), "memory": adamw(cfg.lr * cfg.memory_lr_scale)}
    if not cfg.memory_only:
        return optax.chain(clip, optax.multi_transform(updates, labels))
    updates["frozen"] = optax.set_to_zero()
    return optax.chain(
        optax.masked(optax.set_to_zero(), frozen), clip, optax.multi_transform(updates, labels)
    )
