"""One run: a fact model of any method (or a random-token model) trained, evaluated and
recorded by the cell engine (engine.py); a finished record of the same config is returned,
one of another config refused (recall_bench/identity.py).

The engine's entry points are also importable from here under the names experiments and
tests have always used (train_group, finish, make_record, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recall_bench.experiments.config import RunConfig, make_task
from recall_bench.experiments.engine import (
    Cell,
    Config,
    finish,
    group_key,
    run_cells,
    train_group,
)
from recall_bench.experiments.evaluate import evaluate
from recall_bench.experiments.recording import holds_config, make_record, train_info

__all__ = [
    "RunConfig",
    "evaluate",
    "finish",
    "group_key",
    "holds_config",
    "make_record",
    "make_task",
    "run",
    "train_group",
    "train_info",
]


def run(
    cfg: Config,
    out_dir: str | Path | None = None,
    progress: bool = True,
    resume: bool = False,
    checkpoint_every_s: float = 30.0,
    save_model: bool = False,
) -> dict[str, Any]:
    """Train and evaluate one configuration; write record.json (and traces.npz) to out_dir,
    checkpointing into out_dir/checkpoints meanwhile (removed once the record is written);
    with save_model, also the final parameters to out_dir/model (saved.load_run reads them)."""
    out = None if out_dir is None else Path(out_dir)
    checkpoints = None if out is None else out / "checkpoints"
    cell = Cell(cfg, out)
    [record] = run_cells(
        [cell], progress, lambda group: checkpoints, resume, checkpoint_every_s, save_model
    )
    return record
