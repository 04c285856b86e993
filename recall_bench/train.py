"""Training: a functional AdamW step over split NNX state, many steps per compiled call
(lax.scan), several same-shaped models at once (vmap over a stacked ensemble axis), and the
stopping rule (recall target, plateau, or budget).

Every model of an ensemble is trained exactly as it would be alone: its own init seed, its
own batch stream, and its updates frozen once it has stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from recall_bench import streams
from recall_bench.checkpoint import Checkpoints
from recall_bench.devices import agreed, any_process, gathered, place, placement
from recall_bench.formats import Task
from recall_bench.model import ModelConfig, apply, init_model
from recall_bench.optimizer import TrainConfig, make_optimizer
from recall_bench.progress import Progress
from recall_bench.records import environment
from recall_bench.resume import (
    Interrupted,
    deferred_interrupts,
    restore_or_start,
    training_identity,
)
from recall_bench.stopping import (
    FirstPass,
    check_progress,
    is_check,
    last_step,
    plateaued,
    progress_fields,
)

STATE_KEYS = ("params", "opt_state", "rng")  # the loop state, in make_train_chunk's order


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
    graphdef: nnx.GraphDef
    params: nnx.State  # stacked: leading axis = model
    steps: list[int]
    stop_reason: list[str]  # "recall" | "plateau" | "budget"
    history: list[list[dict]]  # per model: {step, loss, recall, bits} at each check
    wall_s: float
    compile_s: float
    env: dict  # code and machine the training started on (records.environment)
    resumes: list[dict]  # per resume: the step it resumed from and the code it ran on

    def model(self, k: int) -> nnx.State:
        return take(self.params, k)


def take(stacked, k: int):
    """Model k of a stacked ensemble tree."""
    return jax.tree.map(lambda x: x[k], stacked)


def loss_columns(loss_mask: np.ndarray) -> tuple[int, int]:
    """(start, stop) of the target columns where any sequence has loss: the only positions
    whose logits training needs (in-weight facts: 3 of 8)."""
    mask = np.asarray(loss_mask)[..., 1:]
    cols = np.flatnonzero(mask.reshape(-1, mask.shape[-1]).any(0))
    return (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, mask.shape[-1])


def masked_loss(graphdef, params, tokens, loss_mask, columns: tuple[int, int] | None = None):
    """Mean next-token cross-entropy (nats) over the loss-masked targets; with columns, the
    logits are computed only there (every loss-masked target must lie inside)."""
    logits = apply(graphdef, params, tokens[:, :-1], columns)
    targets, mask = tokens[:, 1:], loss_mask[:, 1:]
    if columns is not None:
        targets, mask = targets[:, columns[0] : columns[1]], mask[:, columns[0] : columns[1]]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def train_step(graphdef, optimizer, params, opt_state, batch, columns=None) -> tuple:
    """One AdamW step of one model on one batch (tokens, loss_mask) of the masked loss:
    (new params, new optimizer state, loss)."""
    loss, grads = jax.value_and_grad(masked_loss, argnums=1)(graphdef, params, *batch, columns)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def make_train_chunk(
    graphdef,
    optimizer,
    cfg: TrainConfig,
    columns: tuple[int, int] | None = None,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> Callable:
    """A compiled call running cfg.steps_per_call train_steps on every model of an ensemble.

    (params, opt_state, rng, tokens, loss_mask, n_rows, active) -> (params, opt_state,
    rng, losses [K, steps]); batches come from the first n_rows rows of tokens (the rest is
    padding, see padded_rows). Models with active=False keep their state unchanged. With
    batch_sharding, each batch's rows are split over the devices (see placement).
    """

    def one_step(carry, _, tokens, loss_mask, n_rows, active):
        params, opt_state, rng = carry
        rng, sample = jax.random.split(rng)
        idx = jax.random.randint(sample, (cfg.batch_size,), 0, n_rows)
        batch = (tokens[idx], loss_mask[idx])
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        new_params, new_opt_state, loss = train_step(
            graphdef, optimizer, params, opt_state, batch, columns
        )
        keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(active, new, old))
        return (keep(new_params, params), keep(new_opt_state, opt_state), rng), loss

    def chunk(params, opt_state, rng, tokens, loss_mask, n_rows, active):
        body = functools.partial(
            one_step, tokens=tokens, loss_mask=loss_mask, n_rows=n_rows, active=active
        )
        (params, opt_state, rng), losses = jax.lax.scan(
            body, (params, opt_state, rng), None, length=cfg.steps_per_call
        )
        return params, opt_state, rng, losses

    return jax.jit(jax.vmap(chunk), donate_argnums=(0, 1, 2))


MIN_ROWS = 1 << 14


def padded_rows(n: int) -> int:
    """Rows of the padded training arrays: max(MIN_ROWS, next power of two). Runs whose
    fact counts share a bucket share one compiled training chunk."""
    return max(MIN_ROWS, 1 << (n - 1).bit_length())


def device_data(
    tokens: np.ndarray, loss_mask: np.ndarray, sharding: jax.sharding.Sharding | None
) -> tuple[jax.Array, ...]:
    """Stacked training arrays [K, rows, len] padded to padded_rows and placed with
    `sharding`, and each model's true row count: (tokens, loss_mask, n_rows)."""
    k, n = tokens.shape[:2]
    pad = ((0, 0), (0, padded_rows(n) - n), (0, 0))
    arrays = (np.pad(tokens, pad), np.pad(loss_mask, pad), np.full(k, n, np.int32))
    return tuple(place(jnp.asarray(a), sharding) for a in arrays)


_COMPILED: dict = {}  # (graphdef, cfg, columns, batch sharding, argument layout) -> chunk


def compiled_chunk(
    graphdef, optimizer, cfg: TrainConfig, columns, batch_sharding, *args
) -> Callable:
    """make_train_chunk compiled for these arguments; later runs of the same model, training
    config, loss columns and padded data shape in this process reuse it."""
    shapes = [(a.shape, a.dtype, a.sharding) for a in jax.tree.leaves(args)]
    key = (graphdef, cfg, columns, batch_sharding, *shapes)
    if key not in _COMPILED:
        chunk = make_train_chunk(graphdef, optimizer, cfg, columns, batch_sharding)
        _COMPILED[key] = chunk.lower(*args).compile()
    return _COMPILED[key]


def stack(trees: list) -> nnx.State:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def train_models(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    tasks: list[Task],
    seeds: list[int],
    progress: bool = True,
    init_params: list[nnx.State] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_every_s: float = 30.0,
    first_pass: FirstPass | None = None,
    batch_offset: int = streams.BATCH_OFFSET,
) -> TrainResult:
    """Train one model per task (same shapes), all in one vmapped compiled loop, starting
    from init_params (one per task) or a fresh initialization from each seed, on batches drawn
    by PRNGKey(seed + batch_offset). Each model stops on its monitor's recall target, a
    plateau or the budget, or, with first_pass, at its first evaluation (step 0 included) that
    passes first_pass's target, or at its last evaluation.

    With checkpoint_dir, the whole loop state is saved at progress checks (at most every
    checkpoint_every_s seconds) and when SIGINT or SIGTERM arrives; resume=True continues
    from the latest one (of the same identity) and ends exactly as an uninterrupted run. Under
    jax.distributed every process saves and restores its own shards (one orbax checkpoint).
    """
    if len(tasks) != len(seeds):
        raise ValueError("one seed per task")
    shapes = {t.train.tokens.shape for t in tasks}
    if len(shapes) != 1:
        raise ValueError(f"ensemble tasks must share one data shape, got {sorted(shapes)}")
    if first_pass is not None:
        first_pass.check_steps(cfg)
    k = len(tasks)
    graphdef, _ = init_model(model_cfg, seeds[0])
    params = stack(init_params or [init_model(model_cfg, s)[1] for s in seeds])
    optimizer = make_optimizer(cfg)
    state = {
        "params": params,
        "opt_state": jax.vmap(optimizer.init)(params),
        "rng": jnp.stack([jax.random.PRNGKey(s + batch_offset) for s in seeds]),
    }
    state = place(state, placement(k, cfg.batch_size)[0])  # a checkpoint restores into it
    identity = training_identity(model_cfg, cfg, tasks, seeds, init_params)
    if batch_offset != streams.BATCH_OFFSET:  # another batch stream: a checkpoint of another run
        identity["batch_offset"] = batch_offset
    meta = {
        "step": 0,
        "steps": [0] * k,
        "stop_reason": ["budget"] * k,
        "active": [True] * k,
        "history": [[] for _ in range(k)],
        "wall_s": 0.0,
        "env": environment(),
        "resumes": [],
        "identity": identity,
    }
    with deferred_interrupts() as interrupts, contextlib.ExitStack() as stack_:
        checkpoints = None
        if checkpoint_dir is not None:
            checkpoints = Checkpoints(checkpoint_dir)
            stack_.callback(checkpoints.close)
            state, meta = restore_or_start(checkpoints, checkpoint_dir, state, meta, resume)
        return train_loop(
            graphdef, optimizer, cfg, tasks, state, meta, progress, checkpoints,
            checkpoint_every_s, interrupts, first_pass,
        )  # fmt: skip


def train_loop(
    graphdef,
    optimizer,
    cfg: TrainConfig,
    tasks: list[Task],
    state: dict,
    meta: dict,
    progress: bool,
    checkpoints: Checkpoints | None,
    checkpoint_every_s: float,
    interrupts: list[int],
    first_pass: FirstPass | None = None,
) -> TrainResult:
    """Run compiled chunks until every model has stopped (stop_decisions), saving the loop
    state to `checkpoints` now and then, and before leaving on an interrupt."""
    active = np.array(meta["active"], bool)
    data, chunk, on_device, compile_s = compile_loop(graphdef, optimizer, cfg, tasks, state, active)

    def decide(losses) -> None:
        params = gathered(state["params"])
        stop_decisions(graphdef, params, tasks, cfg, meta, losses, active, first_pass)

    if first_pass is not None and meta["step"] == 0 and is_check(0, cfg, first_pass):
        decide(None)  # the start is evaluated too
    bar = Progress(last_step(cfg, first_pass), meta["step"], "train", progress)
    t0 = time.perf_counter() - meta["wall_s"]
    last_save = time.perf_counter()

    def save() -> None:
        meta.update(active=active.tolist(), wall_s=time.perf_counter() - t0)
        checkpoints.save(meta["step"], state, meta)

    while active.any():
        *new_state, losses = chunk(
            *(state[k] for k in STATE_KEYS), *data, on_device(jnp.asarray(active))
        )
        state = dict(zip(STATE_KEYS, new_state, strict=True))
        meta["step"] += cfg.steps_per_call
        losses = np.asarray(gathered(losses))
        check_finite(losses[active], meta["step"], checkpoints)
        fields = None
        if is_check(meta["step"], cfg, first_pass):
            decide(losses)
            shown = int(np.flatnonzero(active)[0]) if active.any() else 0
            if progress:
                fields = progress_fields(meta["history"][shown], cfg, tasks[shown])
            due = time.perf_counter() - last_save >= checkpoint_every_s
            if checkpoints is not None and agreed(int(due)):  # all save or none
                save()
                last_save = time.perf_counter()
        bar.update(cfg.steps_per_call, fields)
        if any_process(bool(interrupts)) and active.any():  # a signal to one stops all
            bar.close()
            raise interrupted(meta["step"], checkpoints, save)
    bar.close()
    jax.block_until_ready(state["params"])
    return TrainResult(
        graphdef,
        gathered(state["params"]),
        meta["steps"],
        meta["stop_reason"],
        meta["history"],
        time.perf_counter() - t0,
        compile_s,
        meta["env"],
        meta["resumes"],
    )


def compile_loop(graphdef, optimizer, cfg: TrainConfig, tasks: list[Task], state, active):
    """(data, chunk, on_device, compile_s): the stacked training data (tokens, loss_mask,
    n_rows) placed like the state (already placed by train_models), the compiled chunk, the
    function that places the active flags like the state, and the seconds compiling took."""
    state_sharding, batch_sharding = placement(len(tasks), cfg.batch_size)
    masks = np.stack([t.train.loss_mask for t in tasks])
    data = device_data(np.stack([t.train.tokens for t in tasks]), masks, state_sharding)
    on_device = functools.partial(place, sharding=state_sharding)
    t0 = time.perf_counter()
    chunk = compiled_chunk(
        graphdef,
        optimizer,
        cfg,
        loss_columns(masks),
        batch_sharding,
        *(state[k] for k in STATE_KEYS),
        *data,
        on_device(jnp.asarray(active)),
    )
    return data, chunk, on_device, time.perf_counter() - t0


def interrupted(step: int, checkpoints: Checkpoints | None, save: Callable) -> Interrupted:
    """The Interrupted to raise at `step`, after saving the loop state when there is a
    checkpoint folder to save it in."""
    if checkpoints is None:
        return Interrupted(f"at step {step} (no output folder: nothing saved)")
    save()
    return Interrupted(
        f"at step {step}: checkpoint saved in {checkpoints.folder}; continue with --resume"
    )


def check_finite(losses: np.ndarray, step: int, checkpoints: Checkpoints | None) -> None:
    """A TrainingDiverged naming the last good checkpoint if any active model's loss is not
    finite."""
    bad = losses[~np.isfinite(losses)]
    if bad.size:
        latest = None if checkpoints is None else checkpoints.latest_step()
        kept = "" if latest is None else f"; the last good checkpoint (step {latest}) is kept"
        raise TrainingDiverged(
            f"loss became {bad[0]} by step {step}: lower the learning rate (--lr) or use "
            f"float32{kept}"
        )


def stop_decisions(
    graphdef,
    params,
    tasks: list[Task],
    cfg: TrainConfig,
    meta: dict,
    losses,
    active,
    first_pass: FirstPass | None = None,
) -> None:
    """A progress check of every active model (losses None: before the first step): record it
    in meta's history and stop the model (in `active`) on the recall target, a plateau, or the
    end of the budget; with first_pass, its evaluation and target (if any) and last step, and
    no plateau rule."""
    step = meta["step"]
    evaluations = None if first_pass is None else first_pass.measure(params, step)
    target = cfg.target_recall if first_pass is None else first_pass.target
    for m in np.flatnonzero(active):
        loss = None if losses is None else float(losses[m].mean())
        if evaluations is None:
            check = {**check_progress(graphdef, take(params, m), tasks[m]), "step": step}
            check["loss"] = loss
        else:
            check = {"step": step, "loss": loss, **evaluations[m]}
        meta["history"][m].append(check)
        meta["steps"][m] = step
        entropy = float(tasks[m].monitor_bits.sum())
        if target is not None and check["recall"] >= target:
            meta["stop_reason"][m], active[m] = "recall", False
        elif first_pass is None and plateaued(meta["history"][m], cfg, entropy):
            meta["stop_reason"][m], active[m] = "plateau", False
        elif step >= last_step(cfg, first_pass):
            active[m] = False
