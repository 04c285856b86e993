"""Orbax checkpoints of array state plus a JSON sidecar of Python metadata.

Orbax writes each step into a temporary folder and renames it when complete, so a process
killed mid-save never leaves a checkpoint that restores as valid. Saves are waited for
before `save` returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """The checkpoints of one run in `folder` (absolute path), keeping the latest `keep`."""

    def __init__(self, folder: str | Path, keep: int = 2):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{folder} is a file, not a folder: choose another output folder")
        self.manager = ocp.CheckpointManager(
            self.folder.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=keep)
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        self.manager.wait_until_finished()

    def meta(self, step: int) -> dict:
        """The metadata of `step` alone (read before the state, to check what it holds)."""
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return out["meta"]

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state shaped like `like`, meta) of `step` (default: the latest)."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return out["state"], out["meta"]

    def close(self) -> None:
        self.manager.close()


def save_params(path: str | Path, params: Any) -> None:
    """Write one parameter tree (e.g. a base model) to `path`, atomically."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(Path(path).absolute(), params, force=True)
    checkpointer.wait_until_finished()


def load_params(path: str | Path, like: Any) -> Any:
    """Read a parameter tree written by save_params, shaped like `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return ocp.StandardCheckpointer().restore(Path(path).absolute(), abstract)
