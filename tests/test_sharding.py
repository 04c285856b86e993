"""Multi-device training on 4 simulated CPU devices: an ensemble of 4 is split over the
model axis, a single model over each batch's rows (devices.placement); both give the same
losses, recall, bits and parameters as on one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import numpy as np
    from recall_bench.experiments.run import RunConfig, make_task
    from recall_bench.train import TrainConfig, train_models
    from recall_bench.worlds import make_fact_world

    import sys
    from recall_bench import train
    for k in map(int, sys.argv[1:]):  # one ensemble size after another, in one process
        before = set(train._COMPILED)
        cfgs = [RunConfig(n_facts=64, layers=1, width=8, heads=2, seed=s) for s in range(k)]
        tasks = [make_task(c, make_fact_world(c.spec)) for c in cfgs]
        train_cfg = TrainConfig(steps=50, batch_size=32, lr=1e-2, steps_per_call=25, eval_every=25)
        result = train_models(
            cfgs[0].model_config(), train_cfg, tasks, [c.seed for c in cfgs], progress=False
        )
        leaves = jax.tree.leaves(result.params)
        shardings = [leaf.sharding for leaf in leaves]
        compiled = [c for key, c in train._COMPILED.items() if key not in before]
        print(json.dumps({
            "k": k,
            "devices": jax.device_count(),
            "param_devices": sorted({len(s.device_set) for s in shardings}),
            "shard_rows": sorted({shard.data.shape[0] for leaf in leaves
                                  for shard in leaf.addressable_shards}),
            "spec": sorted({repr(tuple(getattr(s, "spec", ()))) for s in shardings}),
            "steps": result.steps,
            "history": result.history,
            "params": [np.asarray(leaf).ravel().tolist() for leaf in leaves],
            "all_reduce": any("all-reduce" in c.as_text() for c in compiled),
        }))
    """
)


def start(devices: int) -> subprocess.Popen:
    """Ensembles of 4 and of 1 model trained on `devices` simulated devices, in one process
    (one start and import for both)."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "4", "1"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> dict[int, dict]:
    try:
        out, err = proc.communicate(timeout=600)  # two trainings in one process
    finally:
        proc.kill()  # never left running past a timeout
    assert proc.returncode == 0, err[-3000:]
    runs = [json.loads(line) for line in out.strip().splitlines()[-2:]]
    assert [run["k"] for run in runs] == [4, 1]
    return {run["k"]: run for run in runs}


@pytest.fixture(scope="module")
def runs() -> dict[int, dict[int, dict]]:
    """devices -> ensemble size -> what it trained: 4 devices and 1, both at once (half the
    wall time)."""
    procs = {n: start(n) for n in (4, 1)}
    return {n: finish(proc) for n, proc in procs.items()}


def test_sharded_ensemble_matches_one_device(runs):
    sharded, single = runs[4][4], runs[1][4]
    assert not sharded["all_reduce"]  # each device trains its own model

    assert sharded["devices"] == 4 and single["devices"] == 1
    # every parameter of the 4-model ensemble is split over the 4 devices, one model each
    assert sharded["param_devices"] == [4]
    assert sharded["shard_rows"] == [1]
    assert sharded["spec"] == ["('model',)"]
    assert single["param_devices"] == [1]

    assert_same_training(sharded, single, 4)


def assert_same_training(sharded: dict, single: dict, k: int) -> None:
    assert sharded["steps"] == single["steps"] == [50] * k
    for a, b in zip(sharded["history"], single["history"], strict=True):
        assert [h["step"] for h in a] == [h["step"] for h in b] == [25, 50]
        for ha, hb in zip(a, b, strict=True):
            assert ha["recall"] == hb["recall"]
            for key in ("loss", "bits", "monitor_loss"):
                np.testing.assert_allclose(ha[key], hb[key], rtol=1e-4, atol=1e-5)
    for pa, pb in zip(sharded["params"], single["params"], strict=True):
        np.testing.assert_allclose(pa, pb, rtol=1e-4, atol=1e-5)


def test_single_model_splits_its_batches_over_devices(runs):
    sharded, single = runs[4][1], runs[1][1]
    assert sharded["devices"] == 4
    # the state is replicated on all 4 devices and the gradients are summed across them
    assert sharded["param_devices"] == [4]
    assert sharded["spec"] == ["()"]
    assert sharded["all_reduce"] and not single["all_reduce"]
    assert_same_training(sharded, single, 1)
