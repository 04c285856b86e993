"""How far a changed model moved from its base on general data (docs/design.md §8): KL and TV
of the next-token distributions at the suite's answer positions, and on the base model's own
greedy continuations of a fixed set of general prompts (the published protocol's divergence).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from recall_bench.formats import EOS, PAD
from recall_bench.general import Suite
from recall_bench.metrics import kl_tv
from recall_bench.model import apply

_logits = jax.jit(apply, static_argnums=0)
Logits = Callable[[np.ndarray], jax.Array]  # tokens [n, t] -> next-token logits [n, t, vocab]
PROMPTS = 64  # held-out prompts per part whose greedy continuations are compared
TEXT_PROMPT = 4  # nibbles of a held-out text window given as its prompt


def continuation_prompts(suite: Suite) -> tuple[np.ndarray, np.ndarray]:
    """A fixed set of general prompts: the first PROMPTS held-out prompts of each skill
    (`BOS MARKER data SEP`) and held-out text windows cut after `BOS TEXT` and TEXT_PROMPT
    nibbles, as PAD-padded tokens [n, width] and their lengths [n]."""
    parts = [(s.tokens[:PROMPTS], s.prompt_length) for s in suite.test.values()]
    if suite.text is not None:
        parts.append((suite.text.tokens[:PROMPTS], 2 + TEXT_PROMPT))
    tokens = np.concatenate([np.where(np.arange(t.shape[1]) < p, t, PAD) for t, p in parts])
    return tokens.astype(np.int32), np.concatenate([np.full(len(t), p) for t, p in parts])


def greedy_continuations(logits: Logits, prompts: np.ndarray, lengths: np.ndarray):
    """(tokens, mask [n, width - 1]): each prompt (its first `lengths` tokens) continued
    greedily to the full width; mask marks the positions whose next-token distribution chose
    a continuation token, up to and including the first EOS (PAD after it)."""
    tokens, width = prompts.copy(), prompts.shape[1]
    mask = np.zeros((len(tokens), width - 1), np.float32)
    live = np.ones(len(tokens), bool)
    for t in range(int(lengths.min()), width):
        chosen = np.asarray(logits(tokens[:, :-1]).argmax(-1))[:, t - 1]
        grown = (t >= lengths) & live
        tokens[grown, t] = chosen[grown]
        mask[:, t - 1] = grown
        live &= ~(grown & (chosen == EOS))
    return tokens, mask


def continuation_divergence(
    base: Logits, new: Logits, prompts: np.ndarray, lengths: np.ndarray
) -> dict[str, float]:
    """greedy_kl (KL(base || new), nats) and greedy_tv: per-token means over the base model's
    own greedy continuations of the prompts (the published protocol's divergence), and
    greedy_tokens, how many continuation tokens they average over."""
    tokens, mask = greedy_continuations(base, prompts, lengths)
    return reference_divergence((tokens, mask, base(tokens[:, :-1])), new)


def reference_divergence(reference: tuple, new: Logits) -> dict[str, float]:
    """continuation_divergence against a base's continuations computed once: reference =
    (tokens, mask, the base's logits on them), for comparing many models with one base."""
    tokens, mask, base_logits = reference
    kl, tv = kl_tv(base_logits, new(tokens[:, :-1]), mask)
    return {"greedy_kl": kl, "greedy_tv": tv, "greedy_tokens": int(mask.sum())}


def greedy_reference(base_graphdef: nnx.GraphDef, base_params: nnx.State, suite: Suite) -> tuple:
    """The reference of reference_divergence: a base's greedy continuations of the suite's
    fixed prompts, their mask and its logits on them."""
    base = logits_of(base_graphdef, base_params)
    tokens, mask = greedy_continuations(base, *continuation_prompts(suite))
    return tokens, mask, base(tokens[:, :-1])


def logits_of(graphdef: nnx.GraphDef, params: nnx.State) -> Logits:
    """A model's next-token logits as a function of tokens."""
    return functools.partial(_logits, graphdef, params)


def divergence(
    base_graphdef: nnx.GraphDef,
    base_params: nnx.State,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    suite: Suite,
) -> dict[str, float]:
    """Mean per-token KL(base || new) (nats) and TV distance of the next-token distributions
    at the answer positions of each skill's held-out prompts (and the held-out text's nibble
    positions), their means over the structured skills (the new model may have another graph,
    e.g. an added memory), and greedy_kl / greedy_tv on the base's greedy continuations."""
    out: dict[str, float] = {}
    parts = {**suite.test, **({"text": suite.text} if suite.text is not None else {})}
    for skill, seqs in parts.items():
        tokens = seqs.tokens[:, :-1]
        kl, tv = kl_tv(
            _logits(base_graphdef, base_params, tokens),
            _logits(graphdef, params, tokens),
            seqs.loss_mask[:, 1:],
        )
        out[f"{skill}_kl"], out[f"{skill}_tv"] = float(kl), float(tv)
    out["kl"] = float(np.mean([out[f"{s}_kl"] for s in suite.test]))
    out["tv"] = float(np.mean([out[f"{s}_tv"] for s in suite.test]))
    base, new = logits_of(base_graphdef, base_params), logits_of(graphdef, params)
    out.update(continuation_divergence(base, new, *continuation_prompts(suite)))
    return out
