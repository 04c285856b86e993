"""Evaluation of a trained fact model: real greedy decoding from the prompts its method
gives (the store in the loop for a method that calls a tool), recall and bits, what the
method adds (methods/base.py), the noise floor of bits on facts never trained on, and, for
structured worlds, recall split by rule and the answers on held-out entities.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from recall_bench import formats
from recall_bench.decode import Decoded, greedy_decode
from recall_bench.experiments.config import RunConfig
from recall_bench.methods import Answers
from recall_bench.methods.base import answered
from recall_bench.metrics import bits_memorized, noise_floor, sequence_stats, summarize_in_weight
from recall_bench.model import count_params
from recall_bench.records import delivered_names
from recall_bench.tool import Store
from recall_bench.worlds import FactWorld, make_fact_world

HELD_OUT_ENTITIES = 1000  # structured worlds: at most this many held-out entities (and <= N)


def evaluate(
    cfg: RunConfig,
    world: FactWorld,
    graphdef,
    params,
    store: Store | None = None,
    entities: np.ndarray | None = None,
) -> tuple[dict[str, float], Decoded]:
    """Decode every fact of `entities` (default: all) greedily from the method's prompts
    (`store` answering calls if the method calls a tool), and compute the metrics of the
    run's method. Entities at or past cfg.trained_entities() count as unseen (`world` may be
    larger than cfg's world)."""
    spec, method = world.spec, cfg.method
    entity, attribute = formats.fact_index(spec, entities)
    expected = formats.answer_tokens(world, entity, attribute)
    vocab = formats.Vocab.of(spec)
    t0 = time.perf_counter()
    decoded = greedy_decode(
        graphdef,
        params,
        method.prompts(world, entity, attribute, store),
        vocab,
        spec.key_length,
        spec.value_length,
        store if method.calls_tool else None,
    )
    eval_s = time.perf_counter() - t0
    right = answered(decoded, expected)
    seqs = method.render(world, entities)
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
    metrics.update(method.answer_metrics(Answers(cfg, world, entity, attribute, decoded, right)))
    if not method.bits_held:
        metrics = delivered_names(metrics)  # bits given with the prompt's help, not held
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


def noise_floor_metrics(
    cfg: RunConfig, world: FactWorld, graphdef, params, bits: float
) -> dict[str, float]:
    """The noise floor of bits memorized, measured on the next min(HELD_OUT_ENTITIES, N)
    entities of the same world (never trained on), and the bits held above it."""
    spec = world.spec
    n = spec.n_entities
    m = min(HELD_OUT_ENTITIES, n, spec.key_space - n)
    if m < 1:
        return {}
    bigger = make_fact_world(spec.with_entities(n + m))
    held = cfg.method.render(bigger, np.arange(n, n + m))
    stats = sequence_stats(graphdef, params, held.tokens, held.loss_mask, held.value_mask)
    held_bits = bigger.fact_bits()[n * spec.n_attributes :]
    out = noise_floor(stats["value_nll_bits"], held_bits, bits, spec.n_facts)
    total = count_params(params, cfg.model_config())["total"]
    return {**out, "bits_per_param_corrected": out["bits_memorized_corrected"] / total}
