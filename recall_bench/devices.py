"""Where an ensemble's arrays live: over the devices of this process or, once
jax.distributed is initialized, of several (every process runs the same program and
jax.devices() lists all their devices); process 0 writes the records (docs/scaling.md)."""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize() -> None:
    """Join the processes named by JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID (or found by jax from a cluster's own variables, SLURM's say), with CPU
    collectives over gloo so that CPU processes can exchange arrays. Call before any other
    JAX work."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    n, i = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(
        num_processes=None if n is None else int(n), process_id=None if i is None else int(i)
    )


def is_lead() -> bool:
    """Whether this process writes outputs (process 0; the only one without jax.distributed)."""
    return jax.process_index() == 0


def agreed(value: int) -> int:
    """Process 0's value on every process (unchanged in one process): for decisions that
    read the local machine, such as its free memory, and that all processes must share."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def any_process(flag: bool) -> bool:
    """Whether `flag` holds on any process (itself in one process): a signal that reached
    only some processes must stop them all at the same step."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.process_allgather(np.array([flag])).any())


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier called `name` (nothing in one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def placement(k: int, batch_size: int) -> tuple[jax.sharding.Sharding | None, ...]:
    """How an ensemble of k models uses the devices of every process (jax.devices(): the
    local ones unless jax.distributed is initialized): (sharding of the stacked state and
    data, sharding of each batch's rows). The model axis is split when k divides evenly
    (each device trains its own models); otherwise, for one large model say, the state is
    replicated and each batch's rows are split (data parallel). One device: (None, None)."""
    devices = np.array(jax.devices())
    if len(devices) == 1:
        return None, None
    named = jax.sharding.NamedSharding
    if k % len(devices) == 0:
        mesh = jax.sharding.Mesh(devices, ("model",))
        return named(mesh, jax.sharding.PartitionSpec("model")), None
    if batch_size % len(devices) == 0:
        mesh = jax.sharding.Mesh(devices, ("batch",))
        return named(mesh, jax.sharding.PartitionSpec()), named(
            mesh, jax.sharding.PartitionSpec("batch")
        )
    return None, None


def place(tree, sharding: jax.sharding.Sharding | None):
    """tree on the devices as `sharding` says (None: left where it is). Across processes
    every process passes the same whole tree and keeps the shards of its own devices."""
    return tree if sharding is None else jax.device_put(tree, sharding)


def gathered(tree):
    """tree with every array whole on this process: unchanged in a single process; across
    processes (jax.distributed) each process gets every shard as a numpy array."""
    if jax.process_count() == 1:
        return tree
    return multihost_utils.process_allgather(tree, tiled=True)


def free_memory(device: jax.Device | None = None) -> int:
    """Bytes free on a device: its allocator's limit less what is in use where it reports
    them (GPU, TPU); the host's available memory otherwise (CPU)."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def model_bytes(n_params: int, batch: int, length: int, width: int, layers: int, rows: int) -> int:
    """A generous float32 estimate of one ensemble member's memory in a training chunk:
    parameters, gradients and two AdamW moments (16 bytes a parameter), the activations one
    step keeps for its backward pass (~16 vectors of width d per token and layer, plus
    attention scores), and its padded training tokens and loss mask."""
    activations = batch * length * layers * (16 * width + 4 * length)
    return 4 * (4 * n_params + activations + 2 * rows * length)


def ensemble_size(per_model: int, free: int, devices: int = 1, limit: int = 256) -> int:
    """How many same-shaped models to train in one program: as many as fit in half the
    `free` bytes of each of `devices` devices (the rest left to XLA's temporaries), at
    least 1, at most limit."""
    if per_model < 1 or free < 0 or devices < 1:
        raise ValueError(
            f"need per_model >= 1, free >= 0 bytes and devices >= 1, got {per_model}, {free}, "
            f"{devices}"
        )
    return max(1, min(limit, free // 2 // per_model * devices))
