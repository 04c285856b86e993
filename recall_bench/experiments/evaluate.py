"""Evaluation of a trained fact model: real greedy decoding (the store in the loop for
in-tool), recall and bits, the noise floor of bits on facts never trained on, and, for
structured worlds, recall split by rule and the answers on held-out entities.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from recall_bench import formats
from recall_bench.decode import Decoded, greedy_decode
from recall_bench.experiments.config import RunConfig
from recall_bench.metrics import bits_memorized, noise_floor, sequence_stats, summarize_in_weight
from recall_bench.model import count_params
from recall_bench.records import delivered_names
from recall_bench.tool import ERROR_STATUS, OK, Store
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
    """Decode every fact of `entities` (default: all) greedily, with `store` in the loop for
    in-tool, and compute the metrics of the run's mode. In-tool, entities at or past
    cfg.trained_entities() count as unseen (`world` may be larger than cfg's world)."""
    spec = world.spec
    entity, attribute = formats.fact_index(spec, entities)
    expected = formats.answer_tokens(world, entity, attribute)
    vocab = formats.Vocab.of(spec)
    t0 = time.perf_counter()
    decoded = greedy_decode(
        graphdef,
        params,
        formats.prompt_tokens(world, entity, attribute),
        vocab,
        spec.key_length,
        spec.value_length,
        store,
    )
    eval_s = time.perf_counter() - t0
    right = answered(decoded, expected)
    seqs = formats.render(world, cfg.format, entities)
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
    if cfg.mode == "in-tool":
        unseen = entity >= cfg.trained_entities()
        key_right = decoded.call_valid & np.all(decoded.call_key == world.keys[entity], axis=1)
        key_right &= decoded.call_attribute == attribute
        ok = decoded.store_status == OK
        copied = answered(decoded, decoded.store_value + vocab.value_offset)
        metrics.update(
            recall_trained=float(right[~unseen].mean()) if (~unseen).any() else None,
            recall_unseen=float(right[unseen].mean()) if unseen.any() else None,
            call_valid=float(decoded.call_valid.mean()),
            call_key_accuracy=float(key_right.mean()),
            copy_accuracy=float(copied[ok].mean()) if ok.any() else 0.0,
            store_errors=float(np.mean(decoded.store_status == ERROR_STATUS)),
            **protocol_overlap(cfg, world, entity),
            lookup_s=decoded.lookup_s,
        )
        metrics = delivered_names(metrics)  # bits given with the store's help, not held
    return metrics, decoded


def protocol_overlap(cfg: RunConfig, world: FactWorld, entity: np.ndarray) -> dict[str, int]:
    """How many evaluated facts belong to entities whose key the protocol pool also has
    (trained with other values: a chance overlap, not a seen fact); none without a pool."""
    if not cfg.tool_train_entities:
        return {}
    pool = {k.tobytes() for k in cfg.protocol_pool().keys[: cfg.tool_train_entities]}
    shared = [world.keys[e].tobytes() in pool for e in entity]
    return {"protocol_key_overlap": int(np.sum(shared))}


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
    held = formats.render(bigger, cfg.format, np.arange(n, n + m))
    stats = sequence_stats(graphdef, params, held.tokens, held.loss_mask, held.value_mask)
    held_bits = bigger.fact_bits()[n * spec.n_attributes :]
    out = noise_floor(stats["value_nll_bits"], held_bits, bits, spec.n_facts)
    total = count_params(params, cfg.model_config())["total"]
    return {**out, "bits_per_param_corrected": out["bits_memorized_corrected"] / total}


def answered(decoded: Decoded, expected: np.ndarray) -> np.ndarray:
    """Rows whose final answer is exactly `expected` [N, value_length] followed by EOS."""
    v = expected.shape[1]
    return (decoded.answer_length == v) & np.all(decoded.answer[:, :v] == expected, axis=1)
