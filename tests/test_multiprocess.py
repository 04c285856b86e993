"""One ensemble trained by two processes joined with jax.distributed (a local coordinator,
one CPU device each, collectives over gloo) equals, bit for bit, the same ensemble trained by
one process over two simulated devices: each device runs the same compiled program on the
same two models either way. (Against one device the vmapped program differs, K=4 per device
instead of 2, and so does the float reduction order: tests/test_sharding.py checks that
equivalence to 1e-4.) The two processes then train it again with a checkpoint folder, are
stopped at step 25 by a SIGTERM that reaches only one of them, and resume from the checkpoint
both wrote: the resumed run ends bitwise as the uninterrupted one."""

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
    import signal
    import sys

    from recall_bench import devices

    if sys.argv[1] == "distributed":
        devices.initialize()
    import jax
    import numpy as np

    from recall_bench import train
    from recall_bench.experiments.config import RunConfig, make_task
    from recall_bench.resume import Interrupted
    from recall_bench.worlds import make_fact_world

    cfgs = [RunConfig(n_facts=64, layers=1, width=16, heads=2, seed=s) for s in range(4)]
    tasks = [make_task(c, make_fact_world(c.spec)) for c in cfgs]
    train_cfg = train.TrainConfig(
        steps=50, batch_size=32, lr=1e-2, steps_per_call=25, eval_every=25
    )
    model_cfg, seeds = cfgs[0].model_config(), [c.seed for c in cfgs]


    def outcome(result):
        leaves = jax.tree.leaves(result.params)
        return {
            "steps": result.steps,
            "history": result.history,
            "params": [np.asarray(leaf).ravel().tolist() for leaf in leaves],
        }


    result = train.train_models(model_cfg, train_cfg, tasks, seeds, progress=False)
    out = {
        "process": [jax.process_index(), jax.process_count()],
        "devices": [jax.local_device_count(), jax.device_count()],
        **outcome(result),
    }
    if sys.argv[1] == "distributed":  # stop at step 25 on a SIGTERM to process 1 alone
        decide = train.stop_decisions

        def stop_decisions(graphdef, params, tasks, cfg, meta, *rest):
            decide(graphdef, params, tasks, cfg, meta, *rest)
            if jax.process_index() == 1 and meta["step"] == 25:
                signal.raise_signal(signal.SIGTERM)

        train.stop_decisions = stop_decisions
        run = dict(progress=False, checkpoint_dir=sys.argv[2], checkpoint_every_s=1e9)
        try:
            train.train_models(model_cfg, train_cfg, tasks, seeds, **run)
        except Interrupted as stop:
            out["stopped"] = str(stop)
        train.stop_decisions = decide
        resumed = train.train_models(model_cfg, train_cfg, tasks, seeds, resume=True, **run)
        out["resumed"] = {**outcome(resumed), "from": [r["step"] for r in resumed.resumes]}
    print(json.dumps(out))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(how: str, devices: int, extra: dict, out: Path, checkpoints: Path) -> subprocess.Popen:
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
        [sys.executable, "-c", SCRIPT, how, str(checkpoints)],
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


def test_two_processes_train_one_ensemble_as_one_process_does_and_resume_it(tmp_path):
    coordinator = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "JAX_NUM_PROCESSES": "2"}
    logs, ckpt = [tmp_path / name for name in ("first", "second", "single")], tmp_path / "ckpt"
    procs = [
        start("distributed", 1, {**coordinator, "JAX_PROCESS_ID": str(i)}, logs[i], ckpt)
        for i in (0, 1)
    ]
    procs.append(start("single", 2, {}, logs[2], ckpt))
    first, second, single = (finish(p, log) for p, log in zip(procs, logs, strict=True))

    assert first["process"] == [0, 2] and second["process"] == [1, 2]
    assert first["devices"] == second["devices"] == [1, 2]  # one local, two global
    assert single["process"] == [0, 1] and single["devices"] == [2, 2]
    for run in (first, second):  # both processes hold every model's results, bit for bit
        assert run["steps"] == single["steps"] == [50] * 4
        assert run["history"] == single["history"]
        assert run["params"] == single["params"]
    assert [h["step"] for h in single["history"][0]] == [25, 50]

    for run in (first, second):  # both stopped at 25 though only process 1 got the signal
        assert run["stopped"].startswith("at step 25: checkpoint saved")
        resumed = run["resumed"]
        assert resumed["from"] == [25]
        assert resumed["steps"] == single["steps"]
        assert resumed["history"] == single["history"]
        assert resumed["params"] == single["params"]
    # the checkpoint of the stop, one orbax step into which every process wrote its shards
    assert sorted(p.name for p in ckpt.iterdir()) == ["25"]
    shards = {p.name for p in (ckpt / "25" / "state").iterdir() if p.name.startswith("ocdbt")}
    assert shards == {"ocdbt.process_0", "ocdbt.process_1"}
