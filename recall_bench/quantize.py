"""Post-training quantization of a saved run, re-evaluated: how many memorized bits survive
storing the weights in b bits (Allen-Zhu & Li 2024: int8 keeps ≈ 2 bits/param, int4 ≈ 0.7).

Scheme: symmetric round-to-nearest with one float32 scale per output channel, integer
levels -(2^(b-1) - 1) .. 2^(b-1) - 1 (2 bits: -1, 0, 1), scale = max |w| of the channel /
(2^(b-1) - 1), dequantized back to the parameter dtype and evaluated in it. Every weight
matrix is quantized, embeddings included: a Linear kernel [in, out] gets a scale per output
column; a table (token and position embeddings, which are also the tied output projection
with one output channel per token row; a product-key memory's keys and values) a scale per
row. LayerNorm scales and biases (the only 1-D parameters; linears have no bias) stay
as trained. Two references are evaluated beside the integer widths: the model as trained and
its weights rounded to bfloat16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from recall_bench import saved
from recall_bench.identity import refuse_other
from recall_bench.model import count_params
from recall_bench.records import (
    IN_TOOL_ROW_NAMES,
    delivered_names,
    new_record,
    read_record,
    write_json_atomic,
)
from recall_bench.saved import evaluate_run, load_run
from recall_bench.tables import Column, format_table

RECORD_NAME = "quantization.json"
SCHEME = (
    "post-training, symmetric round-to-nearest (half to even), one float32 scale per output "
    "channel (Linear kernel [in, out]: per column; embedding and memory tables: per row), "
    "levels -(2^(b-1)-1)..2^(b-1)-1, dequantized to the parameter dtype"
)
QUANTIZED = "every weight matrix, embeddings included (token table = tied output projection)"
KEPT = "LayerNorm scales and biases (1-D), as trained (float32 unless the run was bfloat16)"
TRAIN_FIELDS = ("steps", "stop_reason", "exposures_per_fact")
TOOL_METRICS = ("recall_trained", "recall_unseen", "call_valid", "call_key_accuracy")


def reduce_axis(name: str) -> int:
    """The axis a channel's scale is taken over: the input axis of a Linear kernel [in, out]
    (one scale per output column), else the last axis (one scale per table row)."""
    return 0 if name == "kernel" else -1


def quantize_dequantize(w: jax.Array, bits: int, axis: int) -> jax.Array:
    """w rounded to `bits`-bit symmetric integers with one scale per channel (the max |w|
    over `axis`), and scaled back; an all-zero channel stays zero."""
    if not 2 <= bits <= 16:
        raise ValueError(f"quantization width must be 2..16 bits, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    w32 = w.astype(jnp.float32)
    amax = jnp.max(jnp.abs(w32), axis=axis, keepdims=True)
    scale = jnp.where(amax > 0, amax / qmax, 1.0)
    q = jnp.clip(jnp.round(w32 / scale), -qmax, qmax)
    return (q * scale).astype(w.dtype)


def leaf_name(path) -> str:
    """The parameter's field name (kernel, embedding, value_table, ...) from a tree path."""
    return [k.key for k in path if hasattr(k, "key")][-1]


def quantize_params(params, bits: int | str) -> tuple[Any, dict[str, float]]:
    """(params with every matrix quantized to `bits`, or rounded to bfloat16 for
    "bfloat16", stats): stats holds the relative weight error ‖Wq − W‖ / ‖W‖ over all
    matrices, and the bits needed to store the model (integers, channel scales, kept
    parameters at their dtype's width)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves, err, norm, stored = [], 0.0, 0.0, 0
    for path, w in flat:
        if w.ndim < 2:
            leaves.append(w)
            stored += w.size * w.dtype.itemsize * 8
            continue
        axis = reduce_axis(leaf_name(path))
        if bits == "bfloat16":
            wq = w.astype(jnp.bfloat16).astype(w.dtype)
            stored += w.size * 16
        else:
            wq = quantize_dequantize(w, bits, axis)
            stored += w.size * bits + (w.size // w.shape[axis]) * 32
        w64 = np.asarray(w, np.float64)
        err += float(np.sum((np.asarray(wq, np.float64) - w64) ** 2))
        norm += float(np.sum(w64**2))
        leaves.append(wq)
    stats = {"relative_weight_error": (err / norm) ** 0.5, "storage_bits": stored}
    return jax.tree_util.tree_unflatten(treedef, leaves), stats


def width_row(cfg, world, graphdef, params, bits: int | str, n_params: int) -> dict:
    """One row of the table: the metrics of the model at one width."""
    if bits == "trained":
        q, stats = params, {"relative_weight_error": 0.0}
        width = 16 if cfg.dtype == "bfloat16" else 32
        stats["storage_bits"] = n_params * width
    else:
        q, stats = quantize_params(params, bits)
        width = 16 if bits == "bfloat16" else bits
    m = evaluate_run(cfg, world, graphdef, q)
    tool = cfg.mode == "in-tool"  # its bits are delivered with the store's help
    held = m["bits_delivered" if tool else "bits_memorized"]
    row = {
        "width": bits if isinstance(bits, str) else f"int{bits}",
        "weight_bits": width,
        "recall": m["recall"],
        "token_accuracy": m["token_accuracy"],
        "bits_memorized": held,
        "bits_per_param": held / n_params,
        "bits_per_weight_bit": held / (n_params * width),
        **stats,
    }
    row.update({k: m[k] for k in TOOL_METRICS if k in m})
    return delivered_names(row, IN_TOOL_ROW_NAMES) if tool else row


def quantize_run(
    run_dir: str | Path,
    widths: tuple[int, ...],
    out: str | Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Quantize the run saved in run_dir to each width, re-evaluate, and write one record
    with a row per width (references first) to out/quantization.json (default: run_dir).
    An existing record is never overwritten; with resume, one of the same config is
    returned as is."""
    for b in widths:
        if not 2 <= b <= 8:
            raise ValueError(f"--bits takes widths from 2 to 8, got {b}")
    run_dir = Path(run_dir)
    source = saved.read_record(run_dir)
    path = Path(out or run_dir) / RECORD_NAME
    config = {"run": source["config"], "bits": list(widths), "scheme": SCHEME}
    if path.exists():
        old = read_record(path)
        refuse_other(path, "a quantization record", old.get("config", {}), config)
        if resume:
            return old
        raise ValueError(
            f"{path} already holds this quantization: pass --resume to return it, or remove "
            "it to redo it"
        )
    cfg, world, graphdef, params = load_run(run_dir)
    counts = count_params(params, cfg.model_config())
    refs = ["trained"] if cfg.dtype == "bfloat16" else ["trained", "bfloat16"]
    rows = [width_row(cfg, world, graphdef, params, b, counts["total"]) for b in [*refs, *widths]]
    record = new_record(
        kind="quantization",
        mode=cfg.mode,
        n_facts=cfg.n_facts,
        bits_per_fact=world.spec.bits_per_fact,
        seed=cfg.seed,
        config=config,
        source={
            "folder": str(run_dir),
            "run_id": source["run_id"],
            "config_hash": source.get("config_hash"),
            "git_commit": source["env"].get("git_commit"),
            "git_dirty": source["env"].get("git_dirty"),
            "train": {k: source["train"][k] for k in TRAIN_FIELDS},
        },
        world={"entropy_bits": world.spec.entropy_bits},
        params=counts,
        quantization={"scheme": SCHEME, "quantized": QUANTIZED, "kept": KEPT},
        widths=rows,
    )
    write_json_atomic(path, record)
    return record


def format_record(record: dict) -> str:
    """The per-width table of a quantization record (in-tool: bits delivered, and recall on
    unseen entities)."""
    tool = record["mode"] == "in-tool"
    name = IN_TOOL_ROW_NAMES.get if tool else lambda key: key
    bits = ("delivered", "deliv./param") if tool else ("bits", "bits/param")
    columns = [Column("width", "width"), Column("recall", "recall", ".4f")]
    columns += [Column(bits[0], name("bits_memorized"), ",.0f")]
    columns += [Column(bits[1], name("bits_per_param"), ".3f")]
    columns += [Column("per w.bit", name("bits_per_weight_bit"), ".4f")]
    columns += [Column("w.err", "relative_weight_error", ".4f")]
    columns += [Column("unseen", "recall_unseen", ".4f")] if tool else []
    title = (
        f"{record['mode']}, {record['n_facts']} facts, {record['params']['total']:,} params "
        f"(entropy {record['world']['entropy_bits']:,.0f} bits)"
    )
    return title + "\n" + format_table(record["widths"], columns)
