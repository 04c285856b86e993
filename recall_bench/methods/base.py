"""The interface of a memory method: one way of holding facts (in the weights, behind a tool,
in a side memory, in the context, ...). The engine, the evaluation, the CLI and the records
know a method only through this dataclass; methods/__init__.py registers each by name.

A method says
  render         how facts become training (and teacher-forced scoring) sequences;
  prompts        what the model is given at evaluation, before it decodes freely;
  answer_metrics what it adds to the record's metrics from the decoded answers;
  track          which leaderboard track ranks it;
and, as flags, whether it holds entities out of training (evaluated as unseen, design §6),
whether a store is built for it (and answers calls while decoding), whether its model has a
side memory, and whether the bits formula counts bits held in its weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from recall_bench import formats
from recall_bench.worlds import FactWorld

if TYPE_CHECKING:
    from recall_bench.decode import Decoded
    from recall_bench.tool import Store


@dataclasses.dataclass(frozen=True)
class Answers:
    """What an evaluation decoded, for a method's answer_metrics: the run config, the world,
    the (entity, attribute) of every row, the decoding trace and which rows were right."""

    cfg: Any  # experiments.config.RunConfig
    world: FactWorld
    entity: np.ndarray
    attribute: np.ndarray
    decoded: Decoded
    right: np.ndarray


def question(world: FactWorld, entity: np.ndarray, attribute: np.ndarray, store: Store | None):
    """The plain prompt, BOS key ATTR (the store, if any, is not read)."""
    return formats.prompt_tokens(world, entity, attribute)


def answered(decoded: Decoded, expected: np.ndarray) -> np.ndarray:
    """Rows whose final answer is exactly `expected` [N, value_length] followed by EOS."""
    v = expected.shape[1]
    return (decoded.answer_length == v) & np.all(decoded.answer[:, :v] == expected, axis=1)


def split_recall(answers: Answers) -> dict[str, float | None]:
    """Recall on entities trained on and on unseen ones (None where there are none), and
    how many evaluated facts share a key with the protocol pool (with a pool only)."""
    cfg, right, entity = answers.cfg, answers.right, answers.entity
    unseen = entity >= cfg.trained_entities()
    out = {
        "recall_trained": float(right[~unseen].mean()) if (~unseen).any() else None,
        "recall_unseen": float(right[unseen].mean()) if unseen.any() else None,
    }
    if cfg.tool_train_entities:  # keys in the pool were trained with other values
        pool = {k.tobytes() for k in cfg.protocol_pool().keys[: cfg.tool_train_entities]}
        shared = [answers.world.keys[e].tobytes() in pool for e in entity]
        out["protocol_key_overlap"] = int(np.sum(shared))
    return out


def no_metrics(answers: Answers) -> dict[str, Any]:
    return {}


@dataclasses.dataclass(frozen=True)
class Method:
    """One memory method (see the module docstring); `name` is its --mode."""

    name: str
    track: str  # the leaderboard track it is ranked in (records.TRACKS)
    render: Callable[[FactWorld, np.ndarray | None], formats.Sequences]
    prompts: Callable[..., np.ndarray] = question  # (world, entity, attribute, store)
    answer_metrics: Callable[[Answers], dict[str, Any]] = no_metrics
    holds_out: bool = False  # trains on the first entities only; the rest are unseen
    uses_store: bool = False  # a store of the world's facts is built for evaluation
    calls_tool: bool = False  # the store answers the model's calls while it decodes
    side_memory: bool = False  # the model has a product-key memory (the memory_* fields)
    bits_held: bool = True  # False: the prompt holds the answer, bits are "delivered"

    def __post_init__(self) -> None:
        if self.calls_tool and not self.uses_store:
            raise ValueError(f"method {self.name!r}: a method that calls a tool needs a store")
