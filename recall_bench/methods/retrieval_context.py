"""Retrieval into the context: before the question, the harness looks the key up in the
store and writes the fact into the prompt; the model never calls, it copies the value from
its context. The baseline every retrieval-augmented system is compared with.

    BOS RESULT key ATTR value key ATTR | value EOS      loss on `value EOS`

Like in-tool it trains on the first entities (or a protocol pool) and is evaluated on unseen
ones too (design §6); its bits are delivered by the context, not held in the weights. The
rows fit the in-tool position table (formats.max_length), so the model is the same shape.
"""

from __future__ import annotations

import numpy as np

from recall_bench import formats
from recall_bench.methods.base import Answers, Method, split_recall
from recall_bench.tool import OK
from recall_bench.worlds import FactWorld


def context_tokens(world: FactWorld, entity: np.ndarray, attribute: np.ndarray, values):
    """[N, 1 + key_length + 1 + value_length]: RESULT key ATTR value, the retrieved fact
    (`values`: value tokens, or NOT_FOUND where the store had none)."""
    fact = formats.prompt_tokens(world, entity, attribute)[:, 1:]
    start = np.full((len(entity), 1), formats.RESULT)
    return np.concatenate([start, fact, values], axis=1).astype(np.int32)


def render(world: FactWorld, entities: np.ndarray | None = None) -> formats.Sequences:
    """Training rows: the true fact in the context, then the question and its answer."""
    entity, attribute = formats.fact_index(world.spec, entities)
    value = formats.answer_tokens(world, entity, attribute)
    context = context_tokens(world, entity, attribute, value)
    question = formats.prompt_tokens(world, entity, attribute)[:, 1:]
    bos = np.full((len(entity), 1), formats.BOS)
    eos = np.full((len(entity), 1), formats.EOS)
    tokens = np.concatenate([bos, context, question, value, eos], axis=1).astype(np.int32)
    p, v = 1 + context.shape[1] + question.shape[1], value.shape[1]
    loss = np.zeros(tokens.shape, np.float32)
    loss[:, p:] = 1.0
    value_mask = np.zeros(tokens.shape, np.float32)
    value_mask[:, p : p + v] = 1.0
    return formats.Sequences(tokens, loss, value_mask, p)


def prompts(world: FactWorld, entity: np.ndarray, attribute: np.ndarray, store) -> np.ndarray:
    """BOS, the fact the store returns for (key, attribute), then the question."""
    found = store.lookup(world.keys[entity], attribute)
    value = np.where(
        (found.status == OK)[:, None],
        found.values.astype(np.int32) + formats.Vocab.of(world.spec).value_offset,
        formats.NOT_FOUND,
    )
    context = context_tokens(world, entity, attribute, value)
    question = formats.prompt_tokens(world, entity, attribute)
    bos = question[:, :1]
    return np.concatenate([bos, context, question[:, 1:]], axis=1)


def context_metrics(answers: Answers) -> dict:
    """Recall on trained and unseen entities, and the share of rows whose lookup found no
    fact to write into the context."""
    tokens = answers.decoded.tokens
    width = 2 + 2 * answers.world.spec.key_length + answers.world.spec.value_length + 2
    missing = np.any(tokens[:, :width] == formats.NOT_FOUND, axis=1)
    return {**split_recall(answers), "context_missing": float(missing.mean())}


METHOD = Method(
    name="retrieval-context",
    track="retrieval-context",
    render=render,
    prompts=prompts,
    answer_metrics=context_metrics,
    holds_out=True,
    uses_store=True,
    bits_held=False,
)
