"""Where recall_bench's training chunk spends its time on this CPU: a jax profiler trace of
the compiled chunk (benchmarks/workers.JaxSetup, as train_models builds it), each XLA op's
time summed by kind, the kinds read from the optimized HLO (which fusions hold a dot).

Usage: python benchmarks/profile_chunk.py [--widths 64,128] [--seconds 3] [--dtype D]
       [--grad-transpose G] [--patch P] [--out benchmarks/profile.json]
XLA flags (XLA_FLAGS) apply as set in the environment: run it once per setting.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
from jax.profiler import ProfileData
from workers import JaxSetup, Workload

from recall_bench.records import environment, write_json_atomic

RUNNER = "ThunkExecutor::Execute"  # the executor's own span around the ops


def fusion_kinds(hlo: str) -> dict[str, str]:
    """Instruction name -> kind: "dot" for a dot or a fusion whose computation holds one,
    else "copy/transpose" or "other" (elementwise, reductions, sampling, ...)."""
    bodies, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"%?(\S+) .*\{$", line)
        if head and not line.startswith(" "):
            name, bodies[head.group(1)] = head.group(1), []
        elif name is not None:
            bodies[name].append(line)
    has_dot = {c for c, lines in bodies.items() if any(" dot(" in x for x in lines)}
    kinds = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = .*?(dot|fusion|copy|transpose)\(", line)
        if not m:
            continue
        called = re.search(r"calls=%(\S+?)[,\s]", line)
        if m.group(2) == "dot" or (called and called.group(1) in has_dot):
            kinds[m.group(1)] = "dot"
        elif m.group(2) in ("copy", "transpose") or m.group(1).startswith(("copy", "transpose")):
            kinds[m.group(1)] = "copy/transpose"
        else:
            kinds[m.group(1)] = "other"
    return kinds


def op_times(setup: JaxSetup, seconds: float) -> tuple[collections.Counter, float, int]:
    """(ns per op name over XLA's threads, wall seconds, steps) of a traced window."""
    folder = tempfile.mkdtemp(prefix="profile_chunk_")
    jax.profiler.start_trace(folder)
    start = time.perf_counter()
    window = setup.window(seconds)
    wall = time.perf_counter() - start
    jax.profiler.stop_trace()
    path = next(Path(folder).rglob("*.xplane.pb"))
    times: collections.Counter = collections.Counter()
    for plane in ProfileData.from_file(str(path)).planes:
        for line in plane.lines:
            if line.name.startswith("tf_XLAEigen"):
                for ev in line.events:
                    if ev.name != RUNNER:
                        times[ev.name] += ev.duration_ns
    return times, wall, window["steps"]


def profile(width: int, seconds: float, dtype: str, patch: str, grad_transpose: str) -> dict:
    """One width's op time by kind (ms per step, share) and its ten slowest ops."""
    workload = Workload(f"facts d{width} L2", width=width)
    setup = JaxSetup(workload, 1, 25, dtype, patch, grad_transpose)
    kinds = fusion_kinds(setup.chunk.as_text())
    setup.window(1.0)  # warm
    times, wall, steps = op_times(setup, seconds)
    by_kind: collections.Counter = collections.Counter()
    for op, ns in times.items():
        by_kind[kinds.get(op.split(":")[0], "other")] += ns
    total = sum(by_kind.values())
    return {
        "width": width,
        "steps": steps,
        "wall_ms_per_step": 1e3 * wall / steps,
        "op_ms_per_step": {k: v / 1e6 / steps for k, v in by_kind.items()},
        "share": {k: v / total for k, v in by_kind.items()},
        "dot_ops": sum(1 for k in kinds.values() if k == "dot"),
        "slowest": [
            [op, ns / 1e6 / steps, kinds.get(op, "other")] for op, ns in times.most_common(10)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="64,128")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dtype", default="float32", help="the model's dtype")
    parser.add_argument("--patch", default="", help="a benchmarks/patches.py PATCHES name")
    parser.add_argument("--grad-transpose", default="input", help="ModelConfig.grad_transpose")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/profile.json"))
    args = parser.parse_args()
    rows = [
        profile(int(w), args.seconds, args.dtype, args.patch, args.grad_transpose)
        for w in args.widths.split(",")
    ]
    for r in rows:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in sorted(r["share"].items()))
        print(f"d={r['width']}: {r['wall_ms_per_step']:.2f} ms/step wall; op time: {shares}")
        for op, ms, kind in r["slowest"]:
            print(f"    {op:<32} {ms:7.3f} ms/step  {kind}")
    result = {
        "rows": rows,
        "dtype": args.dtype,
        "patch": args.patch,
        "grad_transpose": args.grad_transpose,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "environment": environment(),
    }
    result["load_average"] = os.getloadavg()
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
