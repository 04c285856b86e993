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

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recall_bench import formats, saved, streams
from recall_bench.identity import refuse_other
from recall_bench.metrics import sequence_stats
from recall_bench.pkm import ProductKeyMemory
from recall_bench.probe_memory import memory_rows
from recall_bench.probe_removal import (
    PERCENTS,
    kept,
    mean_loss,
    path_names,
    removal_rows,
)
from recall_bench.records import new_record, read_record, write_json_atomic
from recall_bench.saved import evaluate_run, load_run
from recall_bench.tables import Column, format_table
from recall_bench.worlds import make_fact_world

RECORD_NAME = "probe.json"
# the module whose input (a projection) or output (a side memory) each ablation replaces
TARGETS = {"attention": "attn_out", "head": "attn_out", "mlp": "mlp_out", "memory": "memory"}
GRADIENT_FACTS = 256  # facts per set whose gradient norms are averaged


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


class GatedMemory(ProductKeyMemory):
    """A side memory whose output can be replaced: keep · memory(x) + (1 − keep) · fill per
    output unit. It takes over the memory's parameters at their paths (so the state reads as
    the model's); keep = 1 everywhere computes exactly what the memory did."""

    def __init__(self, memory: ProductKeyMemory):
        self.heads, self.topk, self.n = memory.heads, memory.topk, memory.n
        self.query, self.query_norm = memory.query, memory.query_norm
        self.sub_keys, self.value_table = memory.sub_keys, memory.value_table
        self.keep = Gate(jnp.ones(self.value_table.shape[1], self.value_table.dtype))
        self.fill = Gate(jnp.zeros(self.value_table.shape[1], self.value_table.dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        keep = self.keep[...]
        return super().__call__(x) * keep + self.fill[...] * (1 - keep)


def ablatable(graphdef, params) -> tuple[Any, Any]:
    """(graphdef, state) of the model with every attn_out and mlp_out made Ablatable and a
    side memory Gated."""
    model = nnx.merge(graphdef, params)
    for block in model.blocks:
        for name in ("attn_out", "mlp_out"):
            if hasattr(block, name):
                setattr(block, name, Ablatable(getattr(block, name).kernel))
        if hasattr(block, "memory"):
            block.memory = GatedMemory(block.memory)
    return nnx.split(model)


class Recording(Ablatable):
    """An Ablatable that also keeps every input it sees, in `sink` (eager use only)."""

    def __init__(self, kernel: nnx.Param, sink: list):
        super().__init__(kernel)
        self.sink = sink

    def __call__(self, x: jax.Array) -> jax.Array:
        self.sink.append(x.reshape(-1, x.shape[-1]).astype(jnp.float32))
        return super().__call__(x)


class RecordingMemory(GatedMemory):
    """A GatedMemory that also keeps every output of the memory, in `sink` (eager use only)."""

    def __init__(self, memory: ProductKeyMemory, sink: list):
        super().__init__(memory)
        self.sink = sink

    def __call__(self, x: jax.Array) -> jax.Array:
        out = ProductKeyMemory.__call__(self, x)
        self.sink.append(out.reshape(-1, out.shape[-1]).astype(jnp.float32))
        return out


def projection_means(graphdef, params, tokens: np.ndarray) -> dict[tuple[int, str], np.ndarray]:
    """Mean input of every output projection, and mean output of a side memory, over all
    positions of `tokens[:, :-1]`."""
    means = _projection_means(graphdef, params, jnp.asarray(tokens[:, :-1]))
    return {k: np.asarray(v) for k, v in means.items()}


@functools.partial(jax.jit, static_argnums=0)
def _projection_means(graphdef, params, tokens: jax.Array) -> dict:
    model = nnx.merge(graphdef, params)
    seen: dict[tuple[int, str], list] = {}
    for layer, block in enumerate(model.blocks):
        for name in ("attn_out", "mlp_out"):
            if hasattr(block, name):
                sink = seen.setdefault((layer, name), [])
                setattr(block, name, Recording(getattr(block, name).kernel, sink))
        if hasattr(block, "memory"):
            block.memory = RecordingMemory(block.memory, seen.setdefault((layer, "memory"), []))
    model(tokens)
    return {k: jnp.concatenate(v).mean(axis=0) for k, v in seen.items()}


def with_gates(state, gates: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]):
    """The ablatable state with (keep, fill) set for the modules named (layer, name)."""

    def one(path, x):
        names = path_names(path)
        if len(names) == 4 and (names[1], names[2]) in gates and names[3] in ("keep", "fill"):
            keep, fill = gates[names[1], names[2]]
            return np.asarray(keep if names[3] == "keep" else fill, x.dtype)
        return x

    return jax.tree_util.tree_map_with_path(one, state)


def ablations(cfg) -> list[tuple[str, int, int | None]]:
    """(component, layer, head) of every ablation: each attention, each head, each MLP or
    side memory."""
    out = []
    for layer in range(cfg.layers):
        out.append(("attention", layer, None))
        out += [("head", layer, h) for h in range(cfg.heads)]
        memory = cfg.method.side_memory and layer == cfg.memory_layer
        out.append(("memory" if memory else "mlp", layer, None))
    return out


def gate(cfg, component: str, layer: int, head: int | None, fill: np.ndarray) -> dict:
    """The gates of one ablation: the inputs (outputs) it removes get `fill`."""
    keep = np.zeros(fill.shape[0])
    if head is not None:
        size = cfg.width // cfg.heads
        keep = np.ones(fill.shape[0])
        keep[head * size : (head + 1) * size] = 0
    return {(layer, TARGETS[component]): (keep, fill)}


def ablation_rows(cfg, world, graphdef, params, entities, tokens) -> list[dict]:
    """Metrics after each zero and mean ablation."""
    g2, state = ablatable(graphdef, params)
    means = projection_means(graphdef, params, tokens)
    rows = []
    for component, layer, head in ablations(cfg):
        for method in ("zero", "mean"):
            mean = means[layer, TARGETS[component]]
            fill = np.zeros_like(mean) if method == "zero" else mean
            ablated = with_gates(state, gate(cfg, component, layer, head, fill))
            m = evaluate_run(cfg, world, g2, ablated, entities)
            row = {"component": component, "layer": layer, "head": head, "method": method}
            rows.append(row | kept(m))
    return rows


def group(names: tuple, memory_layers: frozenset = frozenset()) -> str:
    """The layer and component a parameter belongs to (embeddings, L0 attention, L1 mlp, L0
    memory: a side memory with the LayerNorm before it, in the layers of `memory_layers`)."""
    if names[0] != "blocks":
        return "embeddings" if names[0].endswith("embed") else "final norm"
    part = "attention" if names[2] in ("ln_attn", "qkv", "attn_out") else "mlp"
    if names[2] == "memory" or (names[2] == "ln_mlp" and names[1] in memory_layers):
        part = "memory"
    return f"L{names[1]} {part}"


@functools.partial(jax.jit, static_argnums=1)
def fact_gradient_norms(params, graphdef, tokens, loss_mask, value_mask) -> dict[str, jax.Array]:
    """Per sequence of tokens [M, L] and per group, the norm of its own loss gradient."""

    def one(t, lm, vm):
        grads = jax.grad(mean_loss)(params, graphdef, t[None], lm[None], vm[None])
        sums: dict[str, jax.Array] = {}
        flat = [(path_names(p), g) for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]]
        memory = frozenset(n[1] for n, _ in flat if n[0] == "blocks" and n[2] == "memory")
        for names, g in flat:
            key = group(names, memory)
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


def sample_entities(cfg, n_facts: int) -> np.ndarray:
    """A seeded, sorted sample of entities holding about n_facts facts (all if fewer)."""
    n = cfg.spec.n_entities
    m = min(n, max(1, n_facts // len(cfg.attribute_sizes)))
    return np.sort(streams.generator(cfg.seed, streams.PROBE_ENTITIES).choice(n, m, replace=False))


def served(cfg, facts: int | None):
    """The run config with its evaluated world resized to `facts` facts (None: as run); only
    a model trained on a protocol pool, which saw none of its world, may be served another."""
    if facts is None or facts == cfg.n_facts:
        return cfg
    if not cfg.tool_train_entities:
        raise ValueError(
            f"--facts {facts}: this run trained on its own world's entities, so a world of "
            "another size changes what it saw; give --facts only for runs trained on a "
            "protocol pool (recall-bench run --tool-train-entities K)"
        )
    return dataclasses.replace(cfg, n_facts=facts)


def probe_run(
    run_dir: str | Path,
    sample: int = 2048,
    out: str | Path | None = None,
    resume: bool = False,
    facts: int | None = None,
) -> dict[str, Any]:
    """Ablations, gradient profile and removal curves (a side memory: its rows) of the run
    saved in run_dir, on a sample of its facts, or with `facts` of a world of that many
    facts served through the store; one record written to out/probe.json (default: run_dir)."""
    source = saved.read_record(run_dir)
    path = Path(out or run_dir) / RECORD_NAME
    config = {"run": source["config"], "sample_facts": sample, "percents": list(PERCENTS)}
    config |= {} if facts is None else {"served_facts": facts}
    if path.exists():
        old = read_record(path)
        refuse_other(path, "a probe record", old.get("config", {}), config)
        if resume:
            return old
        raise ValueError(f"{path} already holds this probe: pass --resume to return it")
    trained, world, graphdef, params = load_run(run_dir)
    cfg = served(trained, facts)
    world = world if cfg is trained else make_fact_world(cfg.spec)
    entities = sample_entities(cfg, sample)
    seqs = cfg.method.render(world, entities)
    baseline = kept(evaluate_run(cfg, world, graphdef, params, entities))
    exact = metrics_exact(graphdef, params, seqs)
    memory = {}
    if cfg.method.side_memory:
        rows = memory_rows(cfg, world, graphdef, params, entities, seqs.tokens, baseline)
        memory = {"memory": rows}
    record = new_record(
        kind="probe",
        mode=cfg.mode,
        n_facts=cfg.n_facts,
        seed=cfg.seed,
        config=config,
        source={
            "folder": str(run_dir),
            "run_id": source["run_id"],
            "n_facts": trained.n_facts,
            "metrics": kept(source["metrics"]),
        },
        sample={"entities": len(entities), "facts": len(seqs.tokens), **baseline},
        ablation=ablation_rows(cfg, world, graphdef, params, entities, seqs.tokens),
        gradients=gradient_profile(graphdef, params, seqs, exact, cfg.seed),
        removal=removal_rows(cfg, world, graphdef, params, entities, seqs, baseline),
        **memory,
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
    """The ablation, gradient and removal tables of a probe record (and a side memory's)."""
    s = record["sample"]
    tool = record["mode"] == "in-tool"
    bits = "bits_delivered" if tool else "bits_memorized"  # in-tool: with the store's help
    header = "delivered" if tool else "bits"
    metrics = [Column("recall", "recall", ".4f"), Column(header, bits, ",.0f")]
    calls = [Column("call key", "call_key_accuracy", ".4f"), Column("copy", "copy_accuracy", ".4f")]
    metrics += [Column("unseen", "recall_unseen", ".4f"), *calls] if tool else []
    ablation = [Column("ablated", ablated), Column("method", "method"), *metrics]
    norms = [Column("gradient norm", "group")]
    norms += [Column("recalled", "recalled", ".4f"), Column("not rec.", "not_recalled", ".4f")]
    removal = [Column("removed", lambda r: f"{r['percent']:g}%", right=True)]
    removal += [Column("method", "method"), *metrics[:2]]
    tables = [
        f"{record['mode']}, {record['n_facts']} facts; probed on {s['facts']} facts: recall "
        f"{s['recall']:.4f}, {'bits delivered' if tool else 'bits'} {s[bits]:,.0f}",
        format_table(record["ablation"], ablation),
        format_table(record["gradients"], norms),
        format_table(record["removal"], removal),
    ]
    if "memory" in record:
        tables += memory_tables(record["memory"], metrics[:2])
    return "\n\n".join(tables)


def memory_tables(memory: dict, metrics: list[Column]) -> list[str]:
    """A side memory's reading (rows read, share of the read mass in the most-read rows) and
    its row-removal table."""
    shares = ", ".join(f"top {float(k):.0%}: {v:.3f}" for k, v in memory["top_share"].items())
    columns = [Column("rows removed", lambda r: f"{r['percent']:g}%", right=True)]
    columns += [Column("method", "method"), Column("rows", "rows", ",")]
    columns += [Column("read mass", "mass", ".3f"), *metrics]
    return [
        f"L{memory['layer']} memory: {memory['rows_read']:,} of {memory['rows']:,} rows read; "
        f"share of the read mass in the most-read rows: {shares}",
        format_table(memory["removal"], columns),
    ]
