"""Kill-and-resume with a real SIGKILL, and determinism."""

import json
import os
import signal
import subprocess
import sys
import time

ARGS = [
    "--mode",
    "in-weight",
    "--facts",
    "1024",
    "--layers",
    "1",
    "--width",
    "16",
    "--heads",
    "2",
    "--steps",
    "800",
    "--batch-size",
    "128",
    "--quiet",
]


def cli(out, *extra, wait=True):
    cmd = [sys.executable, "-m", "recall_bench.cli", "run", *ARGS, "--out", str(out), *extra]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def comparable(record):
    metrics = {k: v for k, v in record["metrics"].items() if not k.endswith("_s")}
    return metrics, record["train"]["steps"], record["train"]["history"]


def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    killed = tmp_path / "killed"
    proc = cli(killed, "--checkpoint-every", "0", wait=False)
    deadline = time.time() + 240
    ckpt = killed / "checkpoints"
    while time.time() < deadline:  # kill right after the first checkpoint lands
        if ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()):
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "record.json").exists(), "the run finished before it could be killed"

    again = cli(killed)  # without --resume: refuses, names the flag
    assert again.returncode == 2 and "--resume" in again.stderr

    resumed = cli(killed, "--resume", "--checkpoint-every", "0")
    assert resumed.returncode == 0, resumed.stderr
    straight = cli(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    a = json.loads((killed / "record.json").read_text())
    b = json.loads((tmp_path / "straight" / "record.json").read_text())
    assert comparable(a) == comparable(b)
    assert not (killed / "checkpoints").exists()  # removed once the record is written
