"""One in-tool model, trained once, evaluated against ever larger stores (10^4 to 10^6
facts) on samples of entities it never saw. Tool use should make recall independent of how
much the store holds: the model copies a key, it does not hold the facts. Each size is an
evaluation of the one cell trained by the cell engine, recorded by it (engine.finish)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from recall_bench import streams, tables
from recall_bench.experiments.config import RunConfig, make_task
from recall_bench.experiments.engine import Cell, Evaluation, finish, trained_models
from recall_bench.experiments.recording import write_summary
from recall_bench.identity import refuse_other
from recall_bench.records import read_json
from recall_bench.worlds import make_fact_world

SIZES = (10_000, 100_000, 1_000_000)
CONFIG = RunConfig(mode="in-tool", n_facts=10_000, layers=2, width=32, heads=4, steps=2000)


def run_store_scale(
    out: Path,
    sizes: tuple[int, ...] = SIZES,
    sample: int = 2000,
    store_kind: str = "sqlite",
    cfg: RunConfig = CONFIG,
    progress: bool = True,
    resume: bool = False,
    command: str | None = None,
) -> dict:
    """Train cfg once; for each store size, evaluate `sample` unseen entities' facts through
    a store holding that many facts. Writes one record per size and summary.json (with
    `command`, the command line that ran it; None from Python)."""
    out, t0 = Path(out), time.perf_counter()
    identity = {"config": dataclasses.asdict(cfg), "sizes": list(sizes), "sample": sample}
    identity["store"] = store_kind
    done = finished_summary(out, identity, resume)
    if done is not None:
        return done
    for size in sizes:
        if size // cfg.spec.n_attributes <= cfg.trained_entities():
            raise ValueError(
                f"store size {size} leaves no unseen entities beyond the "
                f"{cfg.trained_entities() * cfg.spec.n_attributes} trained facts: give sizes "
                f"above {cfg.n_facts}"
            )
    world = make_fact_world(cfg.spec)
    task = make_task(cfg, world)
    # the one model, trained as a cell (its record unwritten), then recorded at every size
    [(result, _, _)] = trained_models([Cell(cfg, task=lambda w: task)], progress)
    rows = []
    for size in sizes:
        evaluation = sample_unseen(cfg, size, sample, store_kind)
        out_dir = out / f"store-{size}"
        record = finish(cfg, world, task, result, 0, out_dir, evaluation=evaluation)
        metrics = record["metrics"]
        keys = ("recall", "recall_unseen", "call_valid", "copy_accuracy")
        rows.append({"store_facts": size, **{k: metrics[k] for k in keys}, **record["store"]})
        if progress:
            print(f"store of {size:,} facts: recall on unseen {metrics['recall_unseen']:.4f}")
    train = {
        "steps": result.steps[0],
        "stop_reason": result.stop_reason[0],
        "wall_s": result.wall_s,
    }
    wall_s = time.perf_counter() - t0
    return write_summary(
        out, "store_scale", cfg, command, wall_s, identity=identity, train=train, rows=rows
    )


def sample_unseen(cfg: RunConfig, size: int, sample: int, store_kind: str) -> Evaluation:
    """`sample` unseen entities of a world of `size` facts (its first entities are cfg's),
    looked up in a store of all of them."""
    n_entities = size // cfg.spec.n_attributes
    rng = streams.generator(cfg.seed, streams.STORE_SAMPLE, size)
    pool = np.arange(cfg.trained_entities(), n_entities)
    entities = np.sort(rng.choice(pool, min(sample, len(pool)), replace=False))
    info = {"store_facts": size, "entities": "unseen sample", "count": len(entities)}
    return Evaluation(n_entities, entities, store_kind, info)


def finished_summary(out: Path, identity: dict, resume: bool) -> dict | None:
    """The summary of a finished run of this identity in `out` (with resume); an earlier run
    of another identity, or any earlier run without resume, is refused."""
    path = out / "summary.json"
    if path.exists():
        summary = read_json(path)
        refuse_other(path, "a store-scale run", summary.get("identity", {}), identity)
        if resume:
            return summary
    if not resume and (path.exists() or any(out.glob("store-*/record.json"))):
        raise ValueError(
            f"{out} holds an earlier store-scale run: pass --resume to return it (or to rerun "
            "an unfinished one), or choose another --out"
        )
    return None


def format_table(summary: dict) -> str:
    columns = [("store facts", "store_facts", ","), ("recall", "recall", ".4f")]
    columns += [("calls ok", "call_valid", ".4f"), ("copy", "copy_accuracy", ".4f")]
    columns += [("build s", "build_s", ".2f"), ("lookup s", "lookup_s", ".4f")]
    return tables.format_table(summary["rows"], columns)
