"""Run every benchmark and write benchmarks/results.json (and the table in
benchmarks/README.md between its results markers).

Usage: python benchmarks/run_all.py [--quick] [--default-run] [--cell]
  --quick        one model size, fewer windows, 10^5-fact stores (about 2 minutes)
  --default-run  also time `recall-bench run` end to end (minutes; else the last measured
                 value is carried over from results.json, marked as such)
  --cell         also time one params-for-recall cell (4,096 facts, 95% recall)
  --tokens       add Morris et al.'s random-token shape (V=2048, S=64, 1 layer, d=32)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from recall_bench.records import environment, read_json, write_json_atomic

HERE = Path(__file__).resolve().parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def run_script(script: str, *args: str) -> dict[str, Any] | list:
    """Run benchmarks/<script> with --out to a temp file; its JSON."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
        print(f"== {script} {' '.join(args)}", flush=True)
        subprocess.run(
            [sys.executable, str(HERE / script), *args, "--out", str(out)], check=True, env=env
        )
        return json.loads(out.read_text())


def machine_load() -> dict[str, Any]:
    load1, load5, load15 = os.getloadavg()
    return {"load1": load1, "load5": load5, "load15": load15, "cpus": os.cpu_count()}


def table(results: dict[str, Any]) -> str:
    """The markdown tables of README.md."""
    env = results["environment"]
    load = results["load_before"], results["load_after"]
    lines = [
        f"Measured {results['created']} on {env['platform']}, {env['cpu_count']} CPUs "
        f"({results.get('cpu_model', '?')}), jax {env['jax']}, torch {results.get('torch')}, "
        f"commit {str(env['git_commit'])[:10]}{' (dirty)' if env['git_dirty'] else ''}; "
        f"load average {load[0]['load1']:.1f} before, {load[1]['load1']:.1f} after "
        f"({'quick' if results['quick'] else 'full'} mode). "
        f"Matmul peak (float32 1024x1024 jnp.dot, median of windows): "
        f"{results['matmul_peak_flops'] / 1e9:.1f} GFLOP/s.",
        "",
        "| model | params | recall_bench tok/s | torch tok/s (threads) | ratio | goal 1.5x "
        "| K=8 tok/s | K=8 / K=1 | K=8 / torch | goal 3x | FLOP/s % of peak (jax / torch) "
        "| compile s |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---|---:|",
    ]
    for r in results["throughput"]:
        ens = (
            f"{r['ensemble_tokens_per_s']:,.0f} | {r['ensemble_ratio']:.2f} | "
            f"{r['ensemble_vs_torch']:.2f} | {'met' if r['ensemble_vs_torch'] >= 3 else 'short'}"
            if "ensemble_k" in r
            else "- | - | - | -"
        )
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['recall_bench_tokens_per_s']:,.0f} | "
            f"{r['torch_tokens_per_s']:,.0f} ({r['torch_threads']}) | {r['ratio']:.2f} | "
            f"{'met' if r['ratio'] >= 1.5 else 'short'} | {ens} | "
            f"{100 * r['recall_bench_peak_fraction']:.0f}% / {100 * r['torch_peak_fraction']:.0f}%"
            f" | {r['compile_s']:.1f} |"
        )
    if results.get("variants"):
        lines += [
            "",
            "Variants (bench_train.py --variant), timed in the same rotation:",
            "",
            "| model | variant | K | tok/s | vs package (same K) | vs torch |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for v in results["variants"]:
            lines.append(
                f"| {v['model']} | {v['variant']} | {v.get('k', 1)} | {v['tokens_per_s']:,.0f} | "
                f"{v['vs_baseline']:.2f} | {v['vs_torch']:.2f} |"
            )
    lines += ["", "| store | facts | batch | lookups/s |", "|---|---:|---:|---:|"]
    for s in results["stores"]:
        lines.append(f"| {s['kind']} | {s['facts']:,} | {s['batch']:,} | {s['lookups_per_s']:,} |")
    d = results.get("default_run_s")
    lines.append("")
    if d is not None:
        note = (
            "" if results.get("default_run_measured_now") else " (carried over from an earlier run)"
        )
        lines.append(f"Default run (`recall-bench run`, 12 cells): {d:.0f} s{note}.")
    cell = results.get("params_for_recall_cell")
    if cell and cell.get("smallest"):
        b = cell["smallest"]
        lines.append(
            f"Params-for-recall cell (4,096 facts, 95% recall): width {b['width']} "
            f"({b['params']:,} params, recall {b['recall']:.3f}) found in {cell['wall_s']:.0f} s "
            f"over {len(cell['trials'])} trials, against about "
            f"{cell['published_recipe_s'] / 3600:.1f} h for the published recipe."
        )
    return "\n".join(lines)


def update_readme(text: str) -> None:
    readme = HERE / "README.md"
    if not readme.exists():
        return
    body = readme.read_text()
    if START in body and END in body:
        head, rest = body.split(START, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--default-run", action="store_true")
    parser.add_argument("--cell", action="store_true")
    parser.add_argument("--tokens", action="store_true", help="add the V=2048, S=64 shape")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md as it is")
    parser.add_argument(
        "--table-only", action="store_true", help="rewrite README.md's table from results.json"
    )
    args = parser.parse_args()
    if args.table_only:
        update_readme(table(read_json(args.out)))
        return
    start = time.perf_counter()
    load_before = machine_load()
    quick = ["--quick"] if args.quick else []
    extra = ["--tokens"] if args.tokens else []
    train = run_script("bench_train.py", *quick, *extra)
    stores = run_script("bench_stores.py", "--facts", "100000" if args.quick else "1000000")
    ttr: dict[str, Any] = {}
    if args.default_run or args.cell:
        flags = (["--default-run"] if args.default_run else []) + (["--cell"] if args.cell else [])
        ttr = run_script("bench_time_to_result.py", *flags)
    previous = read_json(args.out) if args.out.exists() else {}
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    results: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "throughput": train["throughput"],
        "ensemble": train["ensemble"],
        "variants": train["variants"],
        "matmul_peak_flops": train["matmul_peak_flops"],
        "stores": stores,
        "load_before": load_before,
        "load_after": machine_load(),
        "cpu_model": cpu_model(),
        "torch": torch_version,
        "environment": environment(),
    }
    if "default_run" in ttr:
        results.update(
            default_run_s=ttr["default_run"]["default_run_s"],
            default_run=ttr["default_run"],
            default_run_measured_now=True,
        )
    else:
        results.update(
            default_run_s=previous.get("default_run_s"),
            default_run=previous.get("default_run"),
            default_run_measured_now=False,
            default_run_measured_at=previous.get("default_run_measured_at")
            or previous.get("created"),
        )
    if "params_for_recall_cell" in ttr:
        results["params_for_recall_cell"] = ttr["params_for_recall_cell"]
    elif previous.get("params_for_recall_cell"):
        results["params_for_recall_cell"] = previous["params_for_recall_cell"]
    if results["default_run_measured_now"]:
        results["default_run_measured_at"] = results["created"]
    results["wall_s"] = time.perf_counter() - start
    write_json_atomic(args.out, results)
    text = table(results)
    print(text)
    if not args.no_readme:
        update_readme(text)
    print(f"wrote {args.out} in {results['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
