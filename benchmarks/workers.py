"""Benchmark worker processes, so implementations can be timed in alternating windows.

Each implementation (recall_bench's JAX training, the PyTorch reference, a matmul) runs in
its own long-lived process with its own environment (thread counts, XLA flags, malloc
tunables). The parent sends one JSON command per line and reads one JSON reply per line; an
idle worker blocks on its stdin, so only the implementation being timed uses the CPU. Timing
A, B, A, B... in windows and taking medians lets a shared, loaded machine slow both alike.

Commands: {"cmd": "setup", "id": ..., "impl": "jax" | "torch", ...}, {"cmd": "window",
"id": ..., "seconds": s}, {"cmd": "peak", "n": 1024, "seconds": s}, {"cmd": "quit"}.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Workload:
    """One training shape. kind "facts": the in-weight fact task of experiments/run.py
    (n facts, loss on the answer); kind "tokens": n random sequences of `length` tokens over
    `vocab` (loss on every token after the first), Morris et al.'s capacity shape."""

    name: str
    kind: str = "facts"
    layers: int = 2
    width: int = 32
    heads: int = 4
    n: int = 4096
    batch: int = 256
    length: int = 64  # tokens only
    vocab: int = 2048  # tokens only
    lr: float = 1e-2


def load_data(w: Workload) -> dict[str, Any]:
    """Training arrays, model shape and FLOP counts of a workload (numpy only)."""
    import numpy as np

    from recall_bench import formats
    from recall_bench.experiments.run import RunConfig, make_task
    from recall_bench.model import ModelConfig
    from recall_bench.worlds import TokenSpec, make_fact_world, make_token_world

    if w.kind == "facts":
        cfg = RunConfig(n_facts=w.n, layers=w.layers, width=w.width, heads=w.heads, lr=w.lr)
        task = make_task(cfg, make_fact_world(cfg.spec))
        seqs, mc = task.train, cfg.model_config()
    else:
        seqs = formats.render_tokens(make_token_world(TokenSpec(w.n, w.length, w.vocab)))
        mc = ModelConfig(w.vocab, w.length, w.layers, w.width, w.heads)
    tokens, mask = seqs.tokens, seqs.loss_mask
    seq_len = tokens.shape[1]
    return {
        "tokens": tokens,
        "loss_mask": mask.astype(np.float32),
        "model": mc,
        "seq_len": seq_len,
        "tokens_per_step": w.batch * seq_len,  # every token of the sampled sequences
    }


def train_flops_per_step(w: Workload, model, seq_len: int, non_embedding: int) -> float:
    """Training FLOPs of one step: B (S-1) positions x [6 N + 12 L T d], N = matmul
    parameters (non-embedding, LayerNorms included, plus the V x d output projection of the
    tied embedding), T = S-1 attended positions, 12 L T d = forward QK^T and AV (4 T d per
    layer, full square as both implementations compute it) times 3 for the backward."""
    t = seq_len - 1
    n_matmul = non_embedding + model.vocab_size * model.width
    return w.batch * t * (6 * n_matmul + 12 * model.layers * t * model.width)


# ---------------------------------------------------------------- worker side


class JaxSetup:
    """recall_bench's own compiled training chunk (as train_models builds it) over K models."""

    def __init__(
        self,
        w: Workload,
        k: int,
        steps_per_call: int,
        dtype: str = "float32",
        patch: str = "",
        grad_transpose: str = "input",
    ):
        import jax
        import jax.numpy as jnp
        import numpy as np

        from recall_bench import devices, streams, train
        from recall_bench.model import count_params, init_model

        if patch:
            import patches

            patches.apply(patch)
        data = load_data(w)
        mc = dataclasses.replace(data["model"], dtype=dtype, grad_transpose=grad_transpose)
        cfg = train.TrainConfig(
            steps=3000,
            batch_size=w.batch,
            lr=w.lr,
            steps_per_call=steps_per_call,
            eval_every=steps_per_call,
        )
        seeds = list(range(k))
        graphdef, _ = init_model(mc, seeds[0])
        params = train.stack([init_model(mc, s)[1] for s in seeds])
        optimizer = train.make_optimizer(cfg)
        state = {
            "params": params,
            "opt_state": jax.vmap(optimizer.init)(params),
            "rng": jnp.stack([jax.random.PRNGKey(s + streams.BATCH_OFFSET) for s in seeds]),
        }
        state_sharding, batch_sharding = devices.placement(k, w.batch)
        self.state = devices.place(state, state_sharding)
        masks = np.stack([data["loss_mask"]] * k)
        self.data = train.device_data(np.stack([data["tokens"]] * k), masks, state_sharding)
        self.active = jnp.ones(k, bool)
        start = time.perf_counter()
        columns = train.loss_columns(masks)
        args = (*self.state.values(), *self.data, self.active)
        self.chunk = train.compiled_chunk(graphdef, optimizer, cfg, columns, batch_sharding, *args)
        self.compile_s = time.perf_counter() - start
        self.steps_per_call, self.k = steps_per_call, k
        counts = count_params(init_model(mc, 0)[1])
        self.info = {
            "compile_s": self.compile_s,
            "params": counts["total"],
            "tokens_per_step": data["tokens_per_step"],
            "flops_per_step": train_flops_per_step(w, mc, data["seq_len"], counts["non_embedding"]),
            "devices": len(jax.local_devices()),
        }
        self._run_call()  # first call: allocations, warm caches

    def _run_call(self) -> float:
        import numpy as np

        *new_state, losses = self.chunk(*self.state.values(), *self.data, self.active)
        self.state = dict(zip(self.state, new_state, strict=True))
        return float(np.asarray(losses)[:, -1].mean())  # synchronizes, as train_models does

    def window(self, seconds: float) -> dict[str, float]:
        start = time.perf_counter()
        calls = 0
        while True:
            loss = self._run_call()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        return {"steps": calls * self.steps_per_call * self.k, "seconds": elapsed, "loss": loss}


class TorchSetup:
    """The PyTorch eager reference (benchmarks/torch_reference.py), K models one after another."""

    def __init__(self, w: Workload, threads: int, fused: bool):
        import torch
        import torch_reference as ref

        torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        data = load_data(w)
        mc = data["model"]
        torch.manual_seed(0)
        start = time.perf_counter()
        model = ref.GPT(mc.vocab_size, mc.max_len, mc.layers, mc.width, mc.heads, mc.mlp_ratio)
        self.trainer = ref.Trainer(
            model, data["tokens"], data["loss_mask"], w.batch, w.lr, fused=fused, device=self.device
        )
        self.trainer.run(3)  # warm-up
        counts = ref.count_params(model)
        self.info = {
            "compile_s": time.perf_counter() - start,
            "params": counts["total"],
            "tokens_per_step": data["tokens_per_step"],
            "flops_per_step": train_flops_per_step(w, mc, data["seq_len"], counts["non_embedding"]),
            "threads": threads,
            "device": self.device,
        }
        self.threads = threads

    def window(self, seconds: float) -> dict[str, float]:
        import torch

        torch.set_num_threads(self.threads)
        start = time.perf_counter()
        steps = 0
        while True:
            loss = self.trainer.step()
            steps += 1
            if time.perf_counter() - start >= seconds:
                break
        loss = float(loss)  # waits for a GPU's queued steps before the clock stops
        return {"steps": steps, "seconds": time.perf_counter() - start, "loss": loss}


def matmul_window(n: int, seconds: float) -> dict[str, float]:
    """float32 [n, n] @ [n, n] with jnp.dot, repeated for `seconds`: FLOP/s."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    start = time.perf_counter()
    reps = 0
    while True:
        dot(a, b).block_until_ready()
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return {"flops_per_s": 2 * n**3 * reps / elapsed, "seconds": elapsed}


def worker_main() -> None:
    sys.path.insert(0, str(HERE))
    setups: dict[str, Any] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            cmd = msg["cmd"]
            if cmd == "quit":
                break
            if cmd == "setup":
                w = Workload(**msg["workload"])
                if msg["impl"] == "jax":
                    setup = JaxSetup(
                        w,
                        msg.get("k", 1),
                        msg.get("steps_per_call", 25),
                        msg.get("dtype", "float32"),
                        msg.get("patch", ""),
                        msg.get("grad_transpose", "input"),
                    )
                else:
                    setup = TorchSetup(w, msg.get("threads", 1), msg.get("fused", True))
                setups[msg["id"]] = setup
                reply = setup.info
            elif cmd == "window":
                reply = setups[msg["id"]].window(msg["seconds"])
            elif cmd == "peak":
                reply = matmul_window(msg.get("n", 1024), msg["seconds"])
            elif cmd == "drop":
                setups.pop(msg["id"], None)
                reply = {}
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception as exc:  # reported to the parent, which raises
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


# ---------------------------------------------------------------- parent side


class Worker:
    """A worker process with its own environment; call() sends a command, returns the reply."""

    def __init__(self, name: str, env: dict[str, str] | None = None, cpus: str | None = None):
        self.name = name
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE), str(HERE.parent), full_env.get("PYTHONPATH")) if p
        )
        prefix = ["taskset", "-c", cpus] if cpus else []  # restrict to these CPUs
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-u", str(HERE / "workers.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=full_env,
        )

    def call(self, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited (code {self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"worker {self.name}: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError):
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


if __name__ == "__main__":
    worker_main()
