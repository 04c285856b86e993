"""A finished run's saved model (`recall-bench run ... --save-model`): read it back with its
config and world, and evaluate it again exactly as the run did.

A run folder holds record.json (whose `config` rebuilds the world and the model) and
model/ (the final parameters, orbax). Quantization and probes start from here.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from recall_bench import records
from recall_bench.checkpoint import load_params
from recall_bench.experiments.config import RunConfig
from recall_bench.experiments.evaluate import evaluate
from recall_bench.model import GPT
from recall_bench.tool import build_store
from recall_bench.worlds import FactWorld, make_fact_world


def read_record(folder: str | Path) -> dict:
    """The record of the run in `folder` (upgraded to the current schema); a ValueError if
    there is none."""
    path = Path(folder) / "record.json"
    if not path.is_file():
        raise ValueError(f"{folder} holds no record.json: give the --out folder of a finished run")
    return records.read_record(path)


def load_run(folder: str | Path) -> tuple[RunConfig, FactWorld, Any, Any]:
    """(cfg, world, graphdef, params) of the run saved in `folder`; a ValueError saying what
    is missing if it holds no record or no saved model."""
    folder = Path(folder)
    record = read_record(folder)
    if not (folder / "model").is_dir():
        raise ValueError(
            f"{folder} holds no saved model ({folder / 'model'} is missing): rerun the run "
            "with --save-model"
        )
    cfg = RunConfig(**record["config"])
    return cfg, make_fact_world(cfg.spec), *restore_model(cfg, folder / "model")


def restore_model(cfg: RunConfig, path: str | Path) -> tuple[Any, Any]:
    """(graphdef, params) of cfg's model, its parameters read from `path` (save_params)."""
    # shapes only: no initialization to compile and run before the restore
    abstract = nnx.eval_shape(lambda: GPT(cfg.model_config(), nnx.Rngs(cfg.seed)))
    graphdef, like = nnx.split(abstract)
    return graphdef, load_params(path, like)


def evaluate_run(
    cfg: RunConfig, world: FactWorld, graphdef, params, entities: np.ndarray | None = None
) -> dict[str, float]:
    """The run's own evaluation (experiments/run.py `evaluate`) of `params` on the facts of
    `entities` (default: all); with a freshly built store of the run's kind, its bits
    under the in-tool names (records.IN_TOOL_NAMES), as in its record."""
    if not cfg.method.uses_store:
        return evaluate(cfg, world, graphdef, params, entities=entities)[0]
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(world, cfg.store, Path(tmp) / "store.sqlite")
        try:
            return evaluate(cfg, world, graphdef, params, store, entities)[0]
        finally:
            store.close()
