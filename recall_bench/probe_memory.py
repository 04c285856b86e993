"""Where a side memory (pkm.py) keeps its facts: which value rows the facts' sequences read,
how concentrated that reading is, and recall after zeroing the most-read rows against as
many rows drawn at random from those read. (The memory layer's own zero and mean ablation
is in probe.py, beside the other components'.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recall_bench import streams
from recall_bench.probe_removal import kept, path_names
from recall_bench.saved import evaluate_run

ROW_PERCENTS = (0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0)  # of the rows read
TOP_SHARES = (0.01, 0.1)  # the read mass of the top 1% and 10% of the rows read


class ReadRecording(nnx.Module):
    """A product-key memory that also keeps, in `sink`, every (row, weight) it reads (the
    softmax weight of each of its top-k rows per head and position; eager use only)."""

    def __init__(self, memory, sink: list):
        self.memory = memory
        self.sink = sink

    def __call__(self, x: jax.Array) -> jax.Array:
        scores, rows = self.memory.lookup(x)
        self.sink.append((rows.ravel(), jax.nn.softmax(scores, axis=-1).ravel()))
        return self.memory(x)


def read_mass(graphdef, params, tokens: np.ndarray, layer: int) -> np.ndarray:
    """Per value row of the memory in block `layer`, the summed softmax weight it is read
    with over every head and position of `tokens[:, :-1]`."""
    return np.asarray(_read_mass(graphdef, params, jnp.asarray(tokens[:, :-1]), layer))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _read_mass(graphdef, params, tokens: jax.Array, layer: int) -> jax.Array:
    model = nnx.merge(graphdef, params)
    block, sink = model.blocks[layer], []
    size = block.memory.value_table.shape[0]
    block.memory = ReadRecording(block.memory, sink)
    model(tokens)
    ((rows, weights),) = sink
    return jnp.zeros(size, jnp.float32).at[rows].add(weights)


def without_rows(params, layer: int, rows: np.ndarray):
    """`params` with the given value rows of block `layer`'s memory set to zero."""

    def zeroed(path, x):
        names = path_names(path)
        if names[:3] == ("blocks", layer, "memory") and names[-1] == "value_table":
            out = np.array(x)
            out[rows] = 0
            return out
        return x

    return jax.tree_util.tree_map_with_path(zeroed, params)


def memory_rows(cfg, world, graphdef, params, entities, tokens, baseline: dict) -> dict:
    """How the sampled facts read the memory, and the metrics after zeroing the top-p% of
    the rows they read (by read mass) against a random p% of them."""
    layer = cfg.memory_layer
    mass = read_mass(graphdef, params, tokens, layer)
    read = np.flatnonzero(mass > 0)
    orders = {
        "most_read": read[np.argsort(-mass[read], kind="stable")],
        "random": streams.generator(cfg.seed, streams.PROBE_MEMORY_ROWS).permutation(read),
    }
    total = float(mass.sum())
    top = orders["most_read"]
    removal = []
    for percent in ROW_PERCENTS:
        k = round(percent / 100 * read.size)
        for method, order in orders.items():
            rows = order[:k]
            if k == 0:
                m = baseline
            else:
                m = evaluate_run(cfg, world, graphdef, without_rows(params, layer, rows), entities)
            share = float(mass[rows].sum()) / total
            removal.append({"percent": percent, "method": method, "rows": k, "mass": share})
            removal[-1] |= kept(m)
    return {
        "layer": layer,
        "rows": int(mass.size),
        "rows_read": int(read.size),
        "top_share": {
            f"{s:g}": float(mass[top[: max(1, round(s * read.size))]].sum()) / total
            for s in TOP_SHARES
        },
        "removal": removal,
    }
