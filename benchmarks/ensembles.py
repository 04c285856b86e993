"""Ensembles measured: model-steps/s of K same-shaped models trained in one program
(recall_bench's compiled chunk, vmapped over the stacked state, the model axis over the
devices) at K = 1, 8, 64, 256, and the FLOP/s they reach as a fraction of a matmul peak
timed in the same run, beside the K that devices.ensemble_size picks from free memory.

Usage: python benchmarks/ensembles.py [--ks 1,8,64,256] [--window 2] [--out FILE]
Every window of K models is followed by a matmul window (float32 1024x1024 jnp.dot), so a
shared machine's load moves both; ratios are what to read, from one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from workers import JaxSetup, Workload, matmul_window

from recall_bench.devices import ensemble_size, free_memory, model_bytes
from recall_bench.records import environment, write_json_atomic
from recall_bench.tables import format_table

HERE = Path(__file__).resolve().parent
# the smallest shape of the published in-tool grid's range, 1 layer to keep K=256 short
SHAPE = Workload("facts d16 L1", layers=1, width=16, heads=2, n=1024, batch=64)


def measure(k: int, window: float, steps_per_call: int) -> dict:
    """One compiled chunk of k models: compile time and the model-steps/s of a window."""
    setup = JaxSetup(SHAPE, k, steps_per_call)
    run = setup.window(window)
    rate = run["steps"] / run["seconds"]
    return {
        "k": k,
        "compile_s": setup.compile_s,
        "model_steps_per_s": rate,
        "flops_per_s": rate * setup.info["flops_per_step"],
        "info": setup.info,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,8,64,256")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per timed window")
    parser.add_argument("--steps-per-call", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "ensembles.json")
    args = parser.parse_args()
    rows, peaks = [], []
    started = time.time()
    for k in (int(x) for x in args.ks.split(",")):
        rows.append(measure(k, args.window, args.steps_per_call))
        peaks.append(matmul_window(1024, args.window)["flops_per_s"])
    peak = statistics.median(peaks)
    one = rows[0]["model_steps_per_s"]
    info = rows[0]["info"]
    per_model = model_bytes(info["params"], SHAPE.batch, info["tokens_per_step"] // SHAPE.batch,
                            SHAPE.width, SHAPE.layers, 16_384)  # fmt: skip
    free = free_memory()
    picked = ensemble_size(per_model, free, info["devices"])
    print(f"{SHAPE.name}: {info['params']:,} params, batch {SHAPE.batch}; matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s (median of {len(peaks)})")  # fmt: skip
    for r in rows:
        r.update(vs_k1=r["model_steps_per_s"] / one, peak_fraction=r["flops_per_s"] / peak)
    columns = [("K", "k"), ("model-steps/s", "model_steps_per_s", ",.0f")]
    columns += [("vs K=1", "vs_k1", ".2f"), ("of peak", "peak_fraction", ".1%")]
    print(format_table(rows, [*columns, ("compile s", "compile_s", ".1f")]))
    print(f"ensemble_size: {per_model / 1e6:.1f} MB per model, {free / 2**30:.1f} GiB free "
          f"-> K = {picked}")  # fmt: skip
    result = {
        "shape": SHAPE.__dict__,
        "steps_per_call": args.steps_per_call,
        "window_s": args.window,
        "matmul_peak_flops": peak,
        "matmul_windows": peaks,
        "rows": rows,
        "ensemble_size": {"per_model_bytes": per_model, "free_bytes": free, "k": picked},
        "wall_s": time.time() - started,
        "env": environment(),
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
