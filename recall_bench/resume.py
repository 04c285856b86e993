"""Stopping and resuming training safely: the identity a checkpoint carries (a run under
another identity is refused), SIGINT / SIGTERM turned into a checkpoint then an exit, and the
choice between a fresh start and the latest checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import signal
import sys
import threading
from typing import TYPE_CHECKING

import jax
import numpy as np
from flax import nnx

from recall_bench.checkpoint import Checkpoints
from recall_bench.identity import refuse_other, resolved
from recall_bench.model import ModelConfig
from recall_bench.optimizer import TrainConfig
from recall_bench.records import clean_json, environment

if TYPE_CHECKING:
    from recall_bench.formats import Task


def training_identity(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    tasks: list[Task],
    seeds: list[int],
    init_params: list[nnx.State] | None = None,
) -> dict:
    """What decides a training run's outcome: the model and training configs, the seeds, and
    digests of the data and of any initial parameters. A checkpoint carries it, and resuming
    under another identity is refused."""
    data = hashlib.sha256()
    for t in tasks:
        for a in (t.train.tokens, t.train.loss_mask, t.monitor.tokens, t.monitor.loss_mask):
            data.update(np.ascontiguousarray(a).tobytes())
        data.update(np.ascontiguousarray(t.monitor_bits, np.float64).tobytes())
    identity = {
        "model": dataclasses.asdict(model_cfg),
        "train": dataclasses.asdict(cfg),
        "seeds": list(seeds),
        "data_sha256": data.hexdigest()[:16],
    }
    if init_params is not None:
        init = hashlib.sha256()
        for leaf in jax.tree.leaves(init_params):
            init.update(np.asarray(leaf).tobytes())
        identity["init_sha256"] = init.hexdigest()[:16]
    return clean_json(identity)


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM (after saving a checkpoint, when it has a folder)."""


@contextlib.contextmanager
def deferred_interrupts():
    """SIGINT and SIGTERM only note a request while training runs, so the loop can save a
    checkpoint at the end of the current call; a second signal interrupts at once."""
    requested: list[int] = []

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def note(text: str) -> None:
    """A one-line notice on stderr (resume and interruption), shown even without progress."""
    print(text, file=sys.stderr)


def restore_or_start(
    checkpoints: Checkpoints, folder, state: dict, meta: dict, resume: bool
) -> tuple[dict, dict]:
    """The loop state to start from: the latest checkpoint in `folder` with resume (refused
    if its identity differs), else the fresh `state` and `meta`."""
    latest = checkpoints.latest_step()
    if latest is None:
        if resume:
            note(f"no checkpoint in {folder}; starting fresh")
        return state, meta
    if not resume:
        raise ValueError(
            f"{folder} already holds checkpoints: pass --resume to continue that run, or "
            "choose another output folder"
        )
    saved = checkpoints.meta(latest)
    if "identity" in saved:
        refuse_other(folder, "a checkpoint", with_defaults(saved["identity"]), meta["identity"])
    try:
        state, saved = checkpoints.restore(state, latest)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"the checkpoint in {folder} does not fit this run ({type(err).__name__}): it was "
            "made by another configuration or version; choose another output folder"
        ) from None
    note(f"resuming from step {saved['step']}")
    saved["resumes"] = [*saved.get("resumes", []), resume_note(saved["step"])]
    saved.setdefault("env", environment())  # older checkpoints: the resuming code's
    saved["identity"] = meta["identity"]
    return state, saved


def with_defaults(identity: dict) -> dict:
    """A saved identity whose training config takes today's defaults for the fields it
    predates (the AdamW constants, ...): a checkpoint made before them is still this run's."""
    train = identity.get("train")
    if not isinstance(train, dict):
        return identity
    return {**identity, "train": clean_json(resolved(train, TrainConfig))}


def resume_note(step: int) -> dict:
    """Where a run resumed and on what code and device, for its record's provenance."""
    env = environment()
    return {"step": step, **{k: env[k] for k in ("git_commit", "git_dirty", "device_kind", "jax")}}
