"""One ensemble trained by two processes joined with jax.distributed (a local coordinator,
one CPU device each, collectives over gloo) equals, bit for bit, the same ensemble trained by
one process over two simulated devices: each device runs the same compiled program on the
same two models either way. (Against one device the vmapped program differs, K=4 per device
instead of 2, and so does the float reduction order: tests/test_sharding.py checks that
equivalence to 1e-4.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    from recall_bench import devices

    if sys.argv[1] == "distributed":
        devices.initialize()
    import jax
    import numpy as np

    from recall_bench.experiments.config import RunConfig, make_task
    from recall_bench.train import TrainConfig, train_models
    from recall_bench.worlds import make_fact_world

    cfgs = [RunConfig(n_facts=64, layers=1, width=16, heads=2, seed=s) for s in range(4)]
    tasks = [make_task(c, make_fact_world(c.spec)) for c in cfgs]
    train_cfg = TrainConfig(steps=50, batch_size=32, lr=1e-2, steps_per_call=25, eval_every=25)
    result = train_models(
        cfgs[0].model_config(), train_cfg, tasks, [c.seed for c in cfgs], progress=False
    )
    print(json.dumps({
        "process": [jax.process_index(), jax.process_count()],
        "devices": [jax.local_device_count(), jax.device_count()],
        "steps": result.steps,
        "history": result.history,
        "params": [np.asarray(leaf).ravel().tolist() for leaf in jax.tree.leaves(result.params)],
    }))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(how: str, devices: int, extra: dict, out: Path) -> subprocess.Popen:
    """The script in a fresh process writing to out.json (stdout) and out.log (stderr): not
    to pipes, where one full pipe would block its process in a collective or in the
    exit barrier of jax.distributed, and with it the other process."""
    env = {
        **os.environ,
        **extra,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    # No compilation cache (tests/conftest.py): the processes compile the same programs at the
    # same moment, and one would read an entry the other is still writing.
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, how],
        env=env,
        cwd=ROOT,
        stdout=out.with_suffix(".json").open("w"),
        stderr=out.with_suffix(".log").open("w"),
    )


def finish(proc: subprocess.Popen, out: Path) -> dict:
    try:
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, out.with_suffix(".log").read_text()[-3000:]
    return json.loads(out.with_suffix(".json").read_text().strip().splitlines()[-1])


def test_two_processes_train_one_ensemble_as_one_process_does(tmp_path):
    coordinator = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "JAX_NUM_PROCESSES": "2"}
    logs = [tmp_path / name for name in ("first", "second", "single")]
    procs = [
        start("distributed", 1, {**coordinator, "JAX_PROCESS_ID": str(i)}, logs[i]) for i in (0, 1)
    ]
    procs.append(start("single", 2, {}, logs[2]))
    first, second, single = (finish(p, log) for p, log in zip(procs, logs, strict=True))

    assert first["process"] == [0, 2] and second["process"] == [1, 2]
    assert first["devices"] == second["devices"] == [1, 2]  # one local, two global
    assert single["process"] == [0, 1] and single["devices"] == [2, 2]
    for run in (first, second):  # both processes hold every model's results, bit for bit
        assert run["steps"] == single["steps"] == [50] * 4
        assert run["history"] == single["history"]
        assert run["params"] == single["params"]
    assert [h["step"] for h in single["history"][0]] == [25, 50]
