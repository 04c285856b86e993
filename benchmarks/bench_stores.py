"""Build time and lookup throughput of the memory and SQLite fact stores.

Usage: python benchmarks/bench_stores.py [--facts 1000000] [--out benchmarks/stores.json]
Writes one JSON row per (kind, batch): {kind, facts, batch, lookups_per_s, build_s}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from recall_bench.records import write_json_atomic
from recall_bench.tables import format_table
from recall_bench.tool import OK, build_store, world_facts
from recall_bench.worlds import FactSpec, make_fact_world


def lookups_per_s(store, keys: np.ndarray, attributes: np.ndarray, batch: int, calls: int) -> float:
    """Lookups per second over `calls` lookup calls of `batch` random existing facts each."""
    rng = np.random.default_rng(1)
    picks = [rng.integers(0, len(keys), batch) for _ in range(calls)]
    store.lookup(keys[picks[0]], attributes[picks[0]])  # warm caches and statements
    start = time.perf_counter()
    for rows in picks:
        result = store.lookup(keys[rows], attributes[rows])
        if not (result.status == OK).all():
            raise RuntimeError(f"{store.kind} store missed a fact: {result.errors}")
    return batch * calls / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--attributes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/stores.json"))
    args = parser.parse_args()

    spec = FactSpec(
        n_entities=args.facts // args.attributes, attribute_sizes=(4096,) * args.attributes
    )
    world = make_fact_world(spec)
    keys, attributes, _ = world_facts(world)
    # (batch, calls): single lookups and large batches
    shapes = [(1, 2000), (4096, 50)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for kind in ("memory", "sqlite"):
            start = time.perf_counter()
            store = build_store(world, kind, Path(folder) / "facts.sqlite")
            build_s = time.perf_counter() - start
            for batch, calls in shapes:
                rate = lookups_per_s(store, keys, attributes, batch, calls)
                rows.append(
                    {
                        "kind": kind,
                        "facts": spec.n_facts,
                        "batch": batch,
                        "lookups_per_s": round(rate),
                        "build_s": round(build_s, 3),
                    }
                )
            store.close()

    columns = [("kind", "kind"), ("facts", "facts"), ("batch", "batch")]
    columns += [("lookups/s", "lookups_per_s", ","), ("build s", "build_s", ".2f")]
    print(format_table(rows, columns))
    write_json_atomic(args.out, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
