"""Training throughput of recall_bench against the PyTorch eager reference, the ensemble
speed-up, and achieved FLOP/s as a fraction of this machine's matmul peak.

Each implementation runs in its own worker process (benchmarks/workers.py); the parent
times them in alternating windows (jax K=1, torch, jax K=8, matmul, then the next round in a
rotated order) and reports medians, so a loaded machine slows all of them alike.

Usage: python benchmarks/bench_train.py [--quick] [--out benchmarks/train.json]
       [--variant 'name;spc=50;k=8;dtype=bfloat16-mixed;grad_transpose=narrower;patch=flat;...']
       (extra JAX configurations, timed alongside: benchmarks/patches.py holds the patches)

tokens/s counts every token of the sampled sequences (batch x sequence length) per model;
an ensemble's tokens/s sums its K models. compile_s is the one-time XLA compile of the
chunk (reported apart, not in the windows).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from workers import Worker, Workload

from recall_bench.records import environment, write_json_atomic

SIZES = [
    Workload("facts d32 L2", width=32),
    Workload("facts d64 L2", width=64),
    Workload("facts d128 L2", width=128),
]
TOKENS = Workload("tokens V2048 S64 d32 L1", kind="tokens", layers=1, width=32, n=512, batch=64)


@dataclasses.dataclass
class Variant:
    """An extra JAX configuration: worker environment and setup options."""

    name: str
    env: dict[str, str]
    options: dict[str, Any]
    cpus: str | None = None

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, *items = text.split(";")
        env, options, cpus = {}, {}, None
        for item in items:
            key, value = item.split("=", 1)
            if key == "spc":
                options["steps_per_call"] = int(value)
            elif key == "k":
                options["k"] = int(value)
            elif key in ("dtype", "patch", "grad_transpose"):  # model settings; a patch name
                options[key] = value
            elif key == "cpus":
                cpus = value
            else:
                env[key] = value
        return cls(name, env, options, cpus)


def median_rate(windows: list[dict], per_step: float) -> float:
    return statistics.median(w["steps"] * per_step / w["seconds"] for w in windows)


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = SIZES[:1] if args.quick else SIZES + ([TOKENS] if args.tokens else [])
    if args.only:
        names = args.only.split(",")
        sizes = [w for w in [*SIZES, TOKENS] if w.name in names]
    ensemble_sizes = {w.name for w in (sizes[:1] if args.quick else sizes[:2])}
    variants = [Variant.parse(v) for v in args.variant]
    jax_w = Worker("jax")
    torch_w = Worker("torch")
    variant_ws = {v.name: Worker(v.name, v.env, v.cpus) for v in variants}
    workers = [jax_w, torch_w, *variant_ws.values()]
    rows, variant_rows, peaks = [], [], []
    try:
        for w in sizes:
            wl = dataclasses.asdict(w)
            info = {"jax": jax_w.call(cmd="setup", id="k1", impl="jax", workload=wl)}
            # the reference gets its best thread count on this machine, now
            probes = {}
            for threads in args.torch_threads:
                torch_w.call(
                    cmd="setup", id=f"t{threads}", impl="torch", workload=wl, threads=threads
                )
                probes[threads] = median_rate(
                    [torch_w.call(cmd="window", id=f"t{threads}", seconds=args.window)], 1.0
                )
            best = max(probes, key=probes.get)
            info["torch"] = torch_w.call(
                cmd="setup", id="t", impl="torch", workload=wl, threads=best
            )
            members: list[tuple[str, Worker, str]] = [("jax", jax_w, "k1"), ("torch", torch_w, "t")]
            if w.name in ensemble_sizes:
                info["jax_k"] = jax_w.call(cmd="setup", id="kk", impl="jax", workload=wl, k=args.k)
                members.append(("jax_k", jax_w, "kk"))
            mine = [v for v in variants if v.options.get("k", 1) == 1 or w.name in ensemble_sizes]
            for v in mine:
                info[v.name] = variant_ws[v.name].call(
                    cmd="setup", id="v", impl="jax", workload=wl, **v.options
                )
                members.append((v.name, variant_ws[v.name], "v"))
            members.append(("peak", jax_w, ""))
            windows: dict[str, list[dict]] = {m[0]: [] for m in members}
            for r in range(args.repeats):
                shift = r % len(members)
                for name, worker, sid in members[shift:] + members[:shift]:
                    if name == "peak":
                        windows[name].append(
                            worker.call(cmd="peak", n=1024, seconds=args.window / 2)
                        )
                    else:
                        windows[name].append(worker.call(cmd="window", id=sid, seconds=args.window))
            peak = statistics.median(x["flops_per_s"] for x in windows["peak"])
            peaks.extend(x["flops_per_s"] for x in windows["peak"])
            tps = info["jax"]["tokens_per_step"]
            fps = info["jax"]["flops_per_step"]
            jax_rate = median_rate(windows["jax"], tps)
            torch_rate = median_rate(windows["torch"], tps)
            row = {
                "model": w.name,
                "workload": wl,
                "params": info["jax"]["params"],
                "torch_params": info["torch"]["params"],
                "tokens_per_step": tps,
                "recall_bench_tokens_per_s": jax_rate,
                "torch_tokens_per_s": torch_rate,
                "ratio": jax_rate / torch_rate,
                "compile_s": info["jax"]["compile_s"],
                "torch_threads": info["torch"]["threads"],
                "torch_device": info["torch"].get("device", "cpu"),
                "torch_thread_probe_steps_per_s": probes,
                "train_flops_per_step": fps,
                "recall_bench_flops_per_s": jax_rate / tps * fps,
                "torch_flops_per_s": torch_rate / tps * fps,
                "matmul_peak_flops": peak,
                "recall_bench_peak_fraction": jax_rate / tps * fps / peak,
                "torch_peak_fraction": torch_rate / tps * fps / peak,
                "windows": len(windows["jax"]),
                "jax_window_spread": spread(windows["jax"], tps),
                "torch_window_spread": spread(windows["torch"], tps),
            }
            if "jax_k" in windows:
                k_rate = median_rate(windows["jax_k"], tps)
                row.update(
                    ensemble_k=args.k,
                    ensemble_tokens_per_s=k_rate,
                    ensemble_compile_s=info["jax_k"]["compile_s"],
                    ensemble_ratio=k_rate / jax_rate,
                    ensemble_vs_torch=k_rate / torch_rate,
                )
            rows.append(row)
            for v in mine:
                v_rate = median_rate(windows[v.name], tps)
                v_k = v.options.get("k", 1)
                base = jax_rate if v_k == 1 else median_rate(windows.get("jax_k", []), tps)
                variant_rows.append(
                    {
                        "model": w.name,
                        "variant": v.name,
                        "env": v.env,
                        "cpus": v.cpus,
                        "options": v.options,
                        "tokens_per_s": v_rate,
                        "k": v_k,
                        "vs_baseline": v_rate / base,
                        "vs_torch": v_rate / torch_rate,
                        "compile_s": info[v.name]["compile_s"],
                    }
                )
            drops = [(jax_w, "k1"), (jax_w, "kk"), (torch_w, "t")]
            drops += [(torch_w, f"t{t}") for t in args.torch_threads]
            drops += [(variant_ws[v.name], "v") for v in mine]
            for worker, sid in drops:
                worker.call(cmd="drop", id=sid)
            print_row(row)
    finally:
        for worker in workers:
            worker.close()
    return {
        "throughput": rows,
        "ensemble": [
            {
                "model": r["model"],
                "k": r["ensemble_k"],
                "ratio": r["ensemble_ratio"],
                "vs_torch": r["ensemble_vs_torch"],
                "tokens_per_s": r["ensemble_tokens_per_s"],
            }
            for r in rows
            if "ensemble_k" in r
        ],
        "variants": variant_rows,
        "matmul_peak_flops": statistics.median(peaks),
        "settings": {"window_s": args.window, "repeats": args.repeats, "quick": args.quick},
    }


def spread(windows: list[dict], per_step: float) -> list[float]:
    """min and max tokens/s over the windows."""
    rates = [w["steps"] * per_step / w["seconds"] for w in windows]
    return [min(rates), max(rates)]


def print_row(r: dict) -> None:
    ens = (
        f"  K={r['ensemble_k']}: {r['ensemble_tokens_per_s']:>9,.0f} tok/s "
        f"({r['ensemble_ratio']:.2f}x K=1, {r['ensemble_vs_torch']:.2f}x torch)"
        if "ensemble_k" in r
        else ""
    )
    print(
        f"{r['model']:<24} {r['params']:>8,} params  jax {r['recall_bench_tokens_per_s']:>9,.0f}"
        f"  torch[{r['torch_threads']}t] {r['torch_tokens_per_s']:>9,.0f} tok/s  "
        f"ratio {r['ratio']:.2f}  peak frac {r['recall_bench_peak_fraction']:.3f}/"
        f"{r['torch_peak_fraction']:.3f}  compile {r['compile_s']:.1f}s{ens}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one size, fewer windows")
    parser.add_argument("--window", type=float, default=None, help="seconds per window")
    parser.add_argument("--repeats", type=int, default=None, help="windows per implementation")
    parser.add_argument("--k", type=int, default=8, help="ensemble size")
    parser.add_argument("--tokens", action="store_true", help="add the V=2048, S=64 shape")
    parser.add_argument("--only", help="comma-separated workload names, e.g. 'facts d64 L2'")
    parser.add_argument(
        "--torch-threads",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2],
        help="thread counts probed for torch (best is used)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="extra JAX config 'name;spc=N;k=K;dtype=D;grad_transpose=G;patch=P;cpus=0;ENV=V...'",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/train.json"))
    args = parser.parse_args()
    args.window = args.window or (1.5 if args.quick else 2.0)
    args.repeats = args.repeats or (3 if args.quick else 5)
    start = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - start
    result["environment"] = environment()
    write_json_atomic(args.out, result)
    print(
        f"matmul peak {result['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; wrote {args.out} "
        f"in {result['wall_s']:.0f} s",
        file=sys.stderr,
    )
    for v in result["variants"]:
        print(
            f"variant {v['variant']:<16} {v['model']:<24} {v['tokens_per_s']:>9,.0f} tok/s "
            f"({v['vs_baseline']:.2f}x baseline, {v['vs_torch']:.2f}x torch)"
        )


if __name__ == "__main__":
    main()
