"""Attribution vs random weight removal: the top-p% of the blocks' weight-matrix entries by a
score are zeroed, against a random p% of the same entries (Chang et al. 2024 compare such
localizers); embeddings, LayerNorms and a side memory are left alone.

Scores, each over the sampled facts' sequences:
- gradient_x_weight: |gradient × weight| of their mean loss (an attribution);
- magnitude: |weight| (magnitude pruning; does not look at the facts);
- learned_mask: a deletion mask learned by gradient descent, a pruning-style localizer in the
  spirit of Chang's Slimming and HardConcrete: per entry a drop d in (0, 1), trained to make
  the facts' loss tokens improbable while dropping little (learned_drop).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from recall_bench import formats, streams
from recall_bench.metrics import stats_from_logits
from recall_bench.model import apply
from recall_bench.saved import evaluate_run

PERCENTS = (0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0)
MATRICES = ("qkv", "attn_out", "mlp_in", "mlp_out")  # the blocks' weight matrices
MASK_STEPS = 200  # full-batch Adam steps of the learned mask
MASK_LR = 0.1  # Adam's step on the drop logits
MASK_INIT = -4.0  # every drop logit at the start: d = sigmoid(-4) = 0.018
MASK_PENALTY = 1.0  # the cost of dropping every entry, against a mean answer probability of 1
KEPT_METRICS = (  # of each evaluation (in-tool: bits delivered, and how the calls went)
    "recall",
    "bits_memorized",
    "bits_delivered",
    "recall_unseen",
    "call_key_accuracy",
    "copy_accuracy",
)


def kept(metrics: dict) -> dict:
    return {k: metrics[k] for k in KEPT_METRICS if k in metrics}


def path_names(path) -> tuple:
    """('blocks', 0, 'attn_out', 'keep') from a state tree path."""
    return tuple(k.key for k in path if hasattr(k, "key"))


def is_matrix(names: tuple) -> bool:
    """Whether a parameter is one of the blocks' weight matrices (the removal's domain)."""
    return names[0] == "blocks" and names[2] in MATRICES


def mean_loss(params, graphdef, tokens, loss_mask, value_mask) -> jax.Array:
    """Mean over sequences [M, L] of the loss per loss-masked token."""
    stats = stats_from_logits(
        apply(graphdef, params, tokens[:, :-1]), tokens, loss_mask, value_mask
    )
    return jnp.mean(stats["loss_sum"] / loss_mask[:, 1:].sum(axis=1))


_loss_gradient = jax.jit(jax.grad(mean_loss), static_argnums=1)


def loss_gradient(params, graphdef, seqs: formats.Sequences):
    """The gradient of mean_loss on `seqs` with respect to params."""
    return _loss_gradient(params, graphdef, seqs.tokens, seqs.loss_mask, seqs.value_mask)


def scaled(params, factors: list):
    """`params` with the blocks' matrices multiplied entrywise by `factors` (in tree order)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    it = iter(factors)
    leaves = [w * next(it) if is_matrix(path_names(p)) else w for p, w in flat]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def mask_objective(logits: list, params, graphdef, tokens, loss_mask, value_mask) -> jax.Array:
    """Mean probability of each sequence's loss tokens under w · (1 − sigmoid(logit)), plus
    MASK_PENALTY times the mean drop."""
    drops = [jax.nn.sigmoid(z) for z in logits]
    masked = scaled(params, [1 - d for d in drops])
    stats = stats_from_logits(
        apply(graphdef, masked, tokens[:, :-1]), tokens, loss_mask, value_mask
    )
    dropped = sum(jnp.sum(d) for d in drops) / sum(d.size for d in drops)
    return jnp.mean(jnp.exp(-stats["loss_sum"])) + MASK_PENALTY * dropped


@functools.partial(jax.jit, static_argnums=1)
def _learned_drop(params, graphdef, tokens, loss_mask, value_mask) -> list:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    logits = [
        jnp.full(w.shape, MASK_INIT, jnp.float32) for p, w in flat if is_matrix(path_names(p))
    ]
    opt = optax.adam(MASK_LR)

    def step(carry, _):
        z, state = carry
        grads = jax.grad(mask_objective)(z, params, graphdef, tokens, loss_mask, value_mask)
        updates, state = opt.update(grads, state)
        return (optax.apply_updates(z, updates), state), None

    (logits, _), _ = jax.lax.scan(step, (logits, opt.init(logits)), None, length=MASK_STEPS)
    return logits


def learned_drop(graphdef, params, seqs: formats.Sequences) -> np.ndarray:
    """Per entry of the blocks' matrices (flattened in tree order), the drop logit learned by
    MASK_STEPS full-batch Adam steps on mask_objective: the higher, the more removing the
    entry erases the facts (deterministic: no sampling)."""
    logits = _learned_drop(params, graphdef, seqs.tokens, seqs.loss_mask, seqs.value_mask)
    return np.concatenate([np.asarray(z).ravel() for z in logits])


def removal_scores(graphdef, params, seqs: formats.Sequences) -> dict[str, np.ndarray]:
    """Per entry of the blocks' matrices (flattened in tree order), each score: the higher,
    the earlier it is removed."""
    grads = loss_gradient(params, graphdef, seqs)
    pairs = zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(grads), strict=True
    )
    chosen = [(np.asarray(w), np.asarray(g)) for (p, w), g in pairs if is_matrix(path_names(p))]
    return {
        "gradient_x_weight": np.concatenate([np.abs(g * w).ravel() for w, g in chosen]),
        "magnitude": np.concatenate([np.abs(w).ravel() for w, _ in chosen]),
        "learned_mask": learned_drop(graphdef, params, seqs),
    }


def removed(params, mask: np.ndarray):
    """`params` with the blocks' matrix entries where `mask` (flattened as in
    removal_scores) is True set to zero; every other parameter as is."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves, offset = [], 0
    for path, w in flat:
        if is_matrix(path_names(path)):
            cut = mask[offset : offset + w.size].reshape(w.shape)
            offset += w.size
            w = np.where(cut, np.zeros((), w.dtype), np.asarray(w)) if cut.any() else w
        leaves.append(w)
    if offset != mask.size:
        raise ValueError(f"removal mask has {mask.size} entries, the matrices {offset}")
    return jax.tree_util.tree_unflatten(treedef, leaves)


def top_mask(order: np.ndarray, percent: float) -> np.ndarray:
    """A mask of the first round(percent% of all) entries of `order`."""
    mask = np.zeros(order.size, bool)
    mask[order[: round(percent / 100 * order.size)]] = True
    return mask


def removal_rows(cfg, world, graphdef, params, entities, seqs, baseline: dict) -> list[dict]:
    """Metrics after zeroing the top-p% of entries by each score, and a random p%."""
    scores = removal_scores(graphdef, params, seqs)
    orders = {k: np.argsort(-v, kind="stable") for k, v in scores.items()}
    n = orders["magnitude"].size
    orders["random"] = streams.generator(cfg.seed, streams.PROBE_REMOVAL).permutation(n)
    rows = []
    for percent in PERCENTS:
        for method, order in orders.items():
            if percent == 0:
                m = baseline
            else:
                m = evaluate_run(
                    cfg, world, graphdef, removed(params, top_mask(order, percent)), entities
                )
            rows.append({"percent": percent, "method": method, "entries": n} | kept(m))
    return rows
