"""Where a saved run keeps its facts: ablations, gradient profiles and attribution removal.

- Ablation: each layer's attention, each head, each MLP is replaced by zero or by its mean
  over the evaluated sequences' positions, and the run is re-evaluated (recall by greedy
  decoding, bits memorized). Done at the input of the component's output projection
  (attn_out: per head, the rows of its slice; mlp_out: the hidden units), so the ablated
  output is exactly 0 or the mean output; ablating nothing changes nothing, bitwise.
- Gradient profile: per layer and component, the mean over facts of the norm of each
  fact's loss gradient, on facts the model recalls vs facts it does not (yet) recall
  (Stoehr et al. 2024).
- Removal: the top-p% of the blocks' weight-matrix entries by |gradient × weight| (the loss
  on the evaluated facts) are zeroed, against a random p% of the same entries (Chang et
  al. 2024 compare such localizers); embeddings and LayerNorms are left alone.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recall_bench import formats, saved, streams
from recall_bench.identity import refuse_other
from recall_bench.metrics import sequence_stats, stats_from_logits
from recall_bench.model import apply
from recall_bench.records import new_record, read_record, write_json_atomic
from recall_bench.saved import evaluate_run, load_run
from recall_bench.tables import Column, format_table

RECORD_NAME = "probe.json"
PERCENTS = (0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0)
PROJECTIONS = ("attn_out", "mlp_out")  # the output projection of each ablated component
MATRICES = ("qkv", "attn_out", "mlp_in", "mlp_out")  # the blocks' weight matrices
GRADIENT_FACTS = 256  # facts per set whose gradient norms are averaged
KEPT_METRICS = ("recall", "bits_memorized", "bits_delivered", "recall_unseen")  # in-tool: delivered


class Gate(nnx.Variable):
    """Ablation state (not a parameter): which inputs of a projection are kept, and what
    the others are replaced by."""


class Ablatable(nnx.Module):
    """A bias-free Linear [in, out] whose inputs can be replaced: x -> (keep x + (1 − keep)
    fill) @ kernel. keep = 1 everywhere computes exactly what the Linear did."""

    def __init__(self, kernel: nnx.Param):
        self.kernel = kernel
        self.keep = Gate(jnp.ones(kernel.shape[0], kernel.dtype))
        self.fill = Gate(jnp.zeros(kernel.shape[0], kernel.dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        keep = self.keep[...]
        return (x * keep + self.fill[...] * (1 - keep)) @ self.kernel[...]


def ablatable(graphdef, params) -> tuple[Any, Any]:
    """(graphdef, state) of the model with every attn_out and mlp_out made Ablatable."""
    model = nnx.merge(graphdef, params)
    for block in model.blocks:
        for name in PROJECTIONS:
            if hasattr(block, name):
                setattr(block, name, Ablatable(getattr(block, name).kernel))
    return nnx.split(model)


class Recording(Ablatable):
    """An Ablatable that also keeps every input it sees, in `sink` (eager use only)."""

    def __init__(self, kernel: nnx.Param, sink: list):
        super().__init__(kernel)
        self.sink = sink

    def __call__(self, x: jax.Array) -> jax.Array:
        self.sink.append(x.reshape(-1, x.shape[-1]).astype(jnp.float32))
        return super().__call__(x)


def projection_means(graphdef, params, tokens: np.ndarray) -> dict[tuple[int, str], np.ndarray]:
    """Mean input of every output projection over all positions of `tokens[:, :-1]`."""
    means = _projection_means(graphdef, params, jnp.asarray(tokens[:, :-1]))
    return {k: np.asarray(v) for k, v in means.items()}


@functools.partial(jax.jit, static_argnums=0)
def _projection_means(graphdef, params, tokens: jax.Array) -> dict:
    model = nnx.merge(graphdef, params)
    seen: dict[tuple[int, str], list] = {}
    for layer, block in enumerate(model.blocks):
        for name in PROJECTIONS:
            if hasattr(block, name):
                sink = seen.setdefault((layer, name), [])
                setattr(block, name, Recording(getattr(block, name).kernel, sink))
    model(tokens)
    return {k: jnp.concatenate(v).mean(axis=0) for k, v in seen.items()}


def path_names(path) -> tuple:
    """('blocks', 0, 'attn_out', 'keep') from a state tree path."""
    return tuple(k.key for k in path if hasattr(k, "key"))


def with_gates(state, gates: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]):
    """The ablatable state with (keep, fill) set for the projections named (layer, name)."""

    def one(path, x):
        names = path_names(path)
        if len(names) == 4 and (names[1], names[2]) in gates and names[3] in ("keep", "fill"):
            keep, fill = gates[names[1], names[2]]
            return np.asarray(keep if names[3] == "keep" else fill, x.dtype)
        return x

    return jax.tree_util.tree_map_with_path(one, state)


def ablations(cfg) -> list[tuple[str, int, int | None]]:
    """(component, layer, head) of every ablation: each attention, each head, each MLP."""
    out = []
    for layer in range(cfg.layers):
        out.append(("attention", layer, None))
        out += [("head", layer, h) for h in range(cfg.heads)]
        if not cfg.method.side_memory or layer != cfg.memory_layer:
            out.append(("mlp", layer, None))
    return out


def gate(cfg, component: str, layer: int, head: int | None, fill: np.ndarray) -> dict:
    """The gates of one ablation: the projection's inputs it removes get `fill`."""
    name = "mlp_out" if component == "mlp" else "attn_out"
    keep = np.zeros(fill.shape[0])
    if head is not None:
        size = cfg.width // cfg.heads
        keep = np.ones(fill.shape[0])
        keep[head * size : (head + 1) * size] = 0
    return {(layer, name): (keep, fill)}


def ablation_rows(cfg, world, graphdef, params, entities, tokens) -> list[dict]:
    """Metrics after each zero and mean ablation."""
    g2, state = ablatable(graphdef, params)
    means = projection_means(graphdef, params, tokens)
    rows = []
    for component, layer, head in ablations(cfg):
        name = "mlp_out" if component == "mlp" else "attn_out"
        for method in ("zero", "mean"):
            mean = means[layer, name]
            fill = np.zeros_like(mean) if method == "zero" else mean
            ablated = with_gates(state, gate(cfg, component, layer, head, fill))
            m = evaluate_run(cfg, world, g2, ablated, entities)
            row = {"component": component, "layer": layer, "head": head, "method": method}
            rows.append(row | kept(m))
    return rows


def kept(metrics: dict) -> dict:
    return {k: metrics[k] for k in KEPT_METRICS if k in metrics}


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


def group(names: tuple) -> str:
    """The layer and component a parameter belongs to (embeddings, L0 attention, ...)."""
    if names[0] != "blocks":
        return "embeddings" if names[0].endswith("embed") else "final norm"
    part = "attention" if names[2] in ("ln_attn", "qkv", "attn_out") else "mlp"
    return f"L{names[1]} {part}"


@functools.partial(jax.jit, static_argnums=1)
def fact_gradient_norms(params, graphdef, tokens, loss_mask, value_mask) -> dict[str, jax.Array]:
    """Per sequence of tokens [M, L] and per group, the norm of its own loss gradient."""

    def one(t, lm, vm):
        grads = jax.grad(mean_loss)(params, graphdef, t[None], lm[None], vm[None])
        sums: dict[str, jax.Array] = {}
        for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
            key = group(path_names(path))
            sums[key] = sums.get(key, 0.0) + jnp.sum(jnp.square(g.astype(jnp.float32)))
        return {k: jnp.sqrt(v) for k, v in sums.items()}

    return jax.vmap(one)(tokens, loss_mask, value_mask)


def gradient_profile(
    graphdef, params, seqs: formats.Sequences, recalled: np.ndarray, seed: int
) -> list[dict]:
    """Per group, the mean over facts of each fact's own loss-gradient norm, for recalled
    and not recalled facts (up to GRADIENT_FACTS of each, seeded): per fact, so that the
    sizes of the two sets do not matter (the norm of a mean gradient shrinks with the set)."""
    norms = {}
    for label, rows in (("recalled", recalled), ("not_recalled", ~recalled)):
        index = np.flatnonzero(rows)
        if not index.size:
            continue
        rng = streams.generator(seed, streams.PROBE_GRADIENTS)
        index = np.sort(rng.permutation(index)[:GRADIENT_FACTS])
        per_fact = fact_gradient_norms(
            params, graphdef, seqs.tokens[index], seqs.loss_mask[index], seqs.value_mask[index]
        )
        norms[label] = {k: float(np.mean(v)) for k, v in per_fact.items()}
    groups = list(norms.get("recalled", norms.get("not_recalled", {})))
    return [
        {
            "group": k,
            "recalled": norms["recalled"][k] if "recalled" in norms else None,
            "not_recalled": norms["not_recalled"][k] if "not_recalled" in norms else None,
            "facts_recalled": int(recalled.sum()),
            "facts_not_recalled": int((~recalled).sum()),
        }
        for k in groups
    ]


def is_matrix(names: tuple) -> bool:
    """Whether a parameter is one of the blocks' weight matrices (the removal's domain)."""
    return names[0] == "blocks" and names[2] in MATRICES


def removal_scores(graphdef, params, seqs: formats.Sequences) -> dict[str, np.ndarray]:
    """Per entry of the blocks' matrices (flattened in tree order): |gradient × weight| of
    the mean loss on `seqs`, and |weight| (magnitude pruning)."""
    grads = loss_gradient(params, graphdef, seqs)
    pairs = zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(grads), strict=True
    )
    chosen = [(np.asarray(w), np.asarray(g)) for (p, w), g in pairs if is_matrix(path_names(p))]
    return {
        "gradient_x_weight": np.concatenate([np.abs(g * w).ravel() for w, g in chosen]),
        "magnitude": np.concatenate([np.abs(w).ravel() for w, _ in chosen]),
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


def sample_entities(cfg, n_facts: int) -> np.ndarray:
    """A seeded, sorted sample of entities holding about n_facts facts (all if fewer)."""
    n = cfg.spec.n_entities
    m = min(n, max(1, n_facts // len(cfg.attribute_sizes)))
    return np.sort(streams.generator(cfg.seed, streams.PROBE_ENTITIES).choice(n, m, replace=False))


def probe_run(
    run_dir: str | Path, sample: int = 2048, out: str | Path | None = None, resume: bool = False
) -> dict[str, Any]:
    """Ablations, gradient profile and removal curves of the run saved in run_dir, on a
    sample of its facts; one record written to out/probe.json (default: run_dir)."""
    source = saved.read_record(run_dir)
    path = Path(out or run_dir) / RECORD_NAME
    config = {"run": source["config"], "sample_facts": sample, "percents": list(PERCENTS)}
    if path.exists():
        old = read_record(path)
        refuse_other(path, "a probe record", old.get("config", {}), config)
        if resume:
            return old
        raise ValueError(f"{path} already holds this probe: pass --resume to return it")
    cfg, world, graphdef, params = load_run(run_dir)
    entities = sample_entities(cfg, sample)
    seqs = cfg.method.render(world, entities)
    baseline = kept(evaluate_run(cfg, world, graphdef, params, entities))
    exact = metrics_exact(graphdef, params, seqs)
    record = new_record(
        kind="probe",
        mode=cfg.mode,
        n_facts=cfg.n_facts,
        seed=cfg.seed,
        config=config,
        source={
            "folder": str(run_dir),
            "run_id": source["run_id"],
            "metrics": kept(source["metrics"]),
        },
        sample={"entities": len(entities), "facts": len(seqs.tokens), **baseline},
        ablation=ablation_rows(cfg, world, graphdef, params, entities, seqs.tokens),
        gradients=gradient_profile(graphdef, params, seqs, exact, cfg.seed),
        removal=removal_rows(cfg, world, graphdef, params, entities, seqs, baseline),
    )
    write_json_atomic(path, record)
    return record


def metrics_exact(graphdef, params, seqs: formats.Sequences) -> np.ndarray:
    """Per fact: teacher-forced exact match on every loss token (greedy recall in-weight)."""
    stats = sequence_stats(graphdef, params, seqs.tokens, seqs.loss_mask, seqs.value_mask)
    return np.asarray(stats["exact"], bool)


def ablated(row: dict) -> str:
    """An ablation row's component: L0 attention, L0 head 1, L1 mlp."""
    return f"L{row['layer']} {row['component']}" + (
        "" if row["head"] is None else f" {row['head']}"
    )


def format_tables(record: dict) -> str:
    """The ablation, gradient and removal tables of a probe record."""
    s = record["sample"]
    tool = record["mode"] == "in-tool"
    bits = "bits_delivered" if tool else "bits_memorized"  # in-tool: with the store's help
    header = "delivered" if tool else "bits"
    metrics = [Column("recall", "recall", ".4f"), Column(header, bits, ",.0f")]
    metrics += [Column("unseen", "recall_unseen", ".4f")] if tool else []
    ablation = [Column("ablated", ablated), Column("method", "method"), *metrics]
    norms = [Column("gradient norm", "group")]
    norms += [Column("recalled", "recalled", ".4f"), Column("not rec.", "not_recalled", ".4f")]
    removal = [Column("removed", lambda r: f"{r['percent']:g}%", right=True)]
    removal += [Column("method", "method"), *metrics[:2]]
    return "\n\n".join(
        [
            f"{record['mode']}, {record['n_facts']} facts; probed on {s['facts']} facts: recall "
            f"{s['recall']:.4f}, {'bits delivered' if tool else 'bits'} {s[bits]:,.0f}",
            format_table(record["ablation"], ablation),
            format_table(record["gradients"], norms),
            format_table(record["removal"], removal),
        ]
    )
