"""Kill-and-resume with a real SIGKILL, and determinism."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import recall_bench.cli

ARGS = [
    "--mode",
    "in-weight",
    "--facts",
    "256",
    "--layers",
    "1",
    "--width",
    "16",
    "--heads",
    "2",
    "--steps",
    "400",
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


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run's record (in this process: only the stopped runs need their own)."""
    out = tmp_path_factory.mktemp("straight")
    assert recall_bench.cli.main(["run", *ARGS, "--out", str(out)]) == 0
    return json.loads((out / "record.json").read_text())


def test_sigint_saves_a_checkpoint_and_resumes_to_the_same_metrics(tmp_path, straight):
    """Ctrl-C long before the first timed checkpoint (an hour) still saves one; --resume
    continues from it and ends exactly as the uninterrupted run."""
    out = tmp_path / "interrupted"
    proc = cli(out, "--checkpoint-every", "3600", wait=False)
    deadline = time.time() + 240
    while not (out / "checkpoints").exists() and time.time() < deadline:
        time.sleep(0.02)  # the folder exists once training has started
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err.decode() and not (out / "record.json").exists()
    step = int(err.decode().split("at step ")[1].split(":")[0])
    assert 0 < step < 400
    resumed = cli(out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {step}" in resumed.stderr
    assert comparable(json.loads((out / "record.json").read_text())) == comparable(straight)


def test_killed_run_resumes_to_the_same_metrics(tmp_path, straight, capsys):
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

    # without --resume: refuses, names the flag (in this process: it refuses before training)
    assert recall_bench.cli.main(["run", *ARGS, "--out", str(killed)]) == 2
    assert "--resume" in capsys.readouterr().err

    resumed = cli(killed, "--resume", "--checkpoint-every", "0")
    assert resumed.returncode == 0, resumed.stderr
    a, b = json.loads((killed / "record.json").read_text()), straight
    assert comparable(a) == comparable(b)
    assert not (killed / "checkpoints").exists()  # removed once the record is written
    assert b["train"]["resumes"] == []
    [note] = a["train"]["resumes"]
    assert 0 < note["step"] < 400 and note["git_commit"] == a["env"]["git_commit"]


def test_a_resumed_run_records_the_code_it_started_on_and_each_resume(tmp_path, monkeypatch):
    """A run resumed on newer code keeps its starting env and lists where it resumed."""
    import recall_bench.resume as resume
    import recall_bench.train as train
    from recall_bench.experiments.run import RunConfig, make_task
    from recall_bench.worlds import make_fact_world

    def code(commit):
        env = {"git_commit": commit, "git_dirty": False, "device_kind": "cpu", "jax": "0"}
        monkeypatch.setattr(train, "environment", lambda: env)
        monkeypatch.setattr(resume, "environment", lambda: env)

    cfg = RunConfig(mode="in-weight", n_facts=64, layers=1, width=16, heads=2, steps=20)
    task = make_task(cfg, make_fact_world(cfg.spec))
    args = (cfg.model_config(), train.TrainConfig(steps=20, batch_size=32), [task], [0])
    code("start")
    first = train.train_models(
        *args, progress=False, checkpoint_dir=tmp_path / "c", checkpoint_every_s=0
    )
    assert first.env["git_commit"] == "start" and first.resumes == []
    code("later")  # the run's last checkpoint, resumed on newer code
    again = train.train_models(*args, progress=False, checkpoint_dir=tmp_path / "c", resume=True)
    assert again.env["git_commit"] == "start"
    assert again.resumes == [
        {
            "step": first.steps[0],
            "git_commit": "later",
            "git_dirty": False,
            "device_kind": "cpu",
            "jax": "0",
        }
    ]
