"""Sharded ensemble training: on 4 simulated CPU devices, train_models spreads the model axis
over the devices (shard_models) and gives the same losses, recall, bits and parameters as
the same ensemble on one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import numpy as np
    from recall_bench.experiments.run import RunConfig, make_task
    from recall_bench.train import TrainConfig, train_models
    from recall_bench.worlds import make_fact_world

    cfgs = [RunConfig(n_facts=64, layers=1, width=8, heads=2, seed=s) for s in range(4)]
    tasks = [make_task(c, make_fact_world(c.spec)) for c in cfgs]
    train_cfg = TrainConfig(steps=50, batch_size=32, lr=1e-2, steps_per_call=25, eval_every=25)
    result = train_models(
        cfgs[0].model_config(), train_cfg, tasks, [c.seed for c in cfgs], progress=False
    )
    leaves = jax.tree.leaves(result.params)
    shardings = [leaf.sharding for leaf in leaves]
    print(json.dumps({
        "devices": jax.device_count(),
        "param_devices": sorted({len(s.device_set) for s in shardings}),
        "shard_rows": sorted({shard.data.shape[0] for leaf in leaves
                              for shard in leaf.addressable_shards}),
        "spec": sorted({repr(tuple(getattr(s, "spec", ()))) for s in shardings}),
        "steps": result.steps,
        "history": result.history,
        "params": [np.asarray(leaf).ravel().tolist() for leaf in leaves],
    }))
    """
)


def start(devices: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_sharded_ensemble_matches_one_device():
    procs = {n: start(n) for n in (4, 1)}  # both at once: half the wall time
    sharded, single = finish(procs[4]), finish(procs[1])

    assert sharded["devices"] == 4 and single["devices"] == 1
    # every parameter of the 4-model ensemble is split over the 4 devices, one model each
    assert sharded["param_devices"] == [4]
    assert sharded["shard_rows"] == [1]
    assert sharded["spec"] == ["('model',)"]
    assert single["param_devices"] == [1]

    assert sharded["steps"] == single["steps"] == [50] * 4
    for a, b in zip(sharded["history"], single["history"], strict=True):
        assert [h["step"] for h in a] == [h["step"] for h in b] == [25, 50]
        for ha, hb in zip(a, b, strict=True):
            assert ha["recall"] == hb["recall"]
            for key in ("loss", "bits", "monitor_loss"):
                np.testing.assert_allclose(ha[key], hb[key], rtol=1e-4, atol=1e-5)
    for pa, pb in zip(sharded["params"], single["params"], strict=True):
        np.testing.assert_allclose(pa, pb, rtol=1e-4, atol=1e-5)
