"""A plain PyTorch eager twin of recall_bench's model, data sampling and optimizer, used only
as the speed reference of bench_train.py.

Model (recall_bench/model.py): pre-LN GPT, learned absolute positions, tied input/output
embeddings, Linear layers without bias, LayerNorm with bias (eps 1e-6 as in Flax), GELU
(tanh approximation, jax.nn.gelu's default) MLP, causal softmax attention scaled 1/sqrt(dh).
Training (recall_bench/train.py): a batch sampled uniformly with replacement from the training
sequences every step, masked mean cross-entropy on the loss mask (the answer tokens),
global-norm gradient clipping, AdamW (b1 0.9, b2 0.98, eps 1e-8) under optax's
warmup_cosine_decay_schedule(0, lr, warmup, budget, end_value=0.05 lr).

Usage: python benchmarks/torch_reference.py [--facts 4096] [--width 32] [--steps 200]
(trains one model on the in-weight fact task and prints the loss and the step rate).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6  # flax.nnx.LayerNorm's default epsilon


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.ln_attn = nn.LayerNorm(width, eps=LN_EPS)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.attn_out = nn.Linear(width, width, bias=False)
        self.ln_mlp = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp_in = nn.Linear(width, mlp_ratio * width, bias=False)
        self.mlp_out = nn.Linear(mlp_ratio * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_out(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_out(F.gelu(self.mlp_in(self.ln_mlp(x)), approximate="tanh"))


class GPT(nn.Module):
    """tokens [B, T] long -> logits [B, T, vocab] float32."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        layers: int = 2,
        width: int = 32,
        heads: int = 4,
        mlp_ratio: int = 4,
    ):
        super().__init__()
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Embedding(max_len, width)
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio) for _ in range(layers)])
        self.ln_final = nn.LayerNorm(width, eps=LN_EPS)
        # Flax's initializers: embeddings N(0, 1/width); Linear kernels LeCun normal.
        for emb in (self.token_embed, self.pos_embed):
            nn.init.normal_(emb.weight, std=1.0 / math.sqrt(width))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=1.0 / math.sqrt(module.in_features))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embed(tokens) + self.pos_embed(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x) @ self.token_embed.weight.T


def count_params(model: nn.Module) -> dict[str, int]:
    """Same convention as recall_bench.model.count_params."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.token_embed.weight.numel() + model.pos_embed.weight.numel()
    return {"total": total, "non_embedding": total - embed}


def warmup_cosine(step: int, warmup: int, budget: int, end_fraction: float = 0.05) -> float:
    """Multiplier of the peak lr at `step`: optax.warmup_cosine_decay_schedule(0, 1, ...)."""
    if step < warmup:
        return step / warmup
    progress = min((step - warmup) / max(budget - warmup, 1), 1.0)
    return end_fraction + (1 - end_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """One model, its AdamW state and its batch stream over a fixed set of sequences."""

    def __init__(
        self,
        model: GPT,
        tokens: np.ndarray,
        loss_mask: np.ndarray,
        batch_size: int,
        lr: float = 1e-2,
        budget: int = 3000,
        warmup: int = 50,
        weight_decay: float = 0.0,
        grad_clip: float = 1.0,
        seed: int = 0,
        fused: bool = True,
        device: str = "cpu",
    ):
        self.model = model.to(device)
        self.device = device
        self.tokens = torch.as_tensor(tokens, dtype=torch.long, device=device)
        self.loss_mask = torch.as_tensor(loss_mask, dtype=torch.float32, device=device)
        self.batch_size = batch_size
        self.grad_clip = grad_clip
        self.generator = torch.Generator().manual_seed(seed)
        kind = {"fused": True} if fused else {"foreach": True}
        self.optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=lr,
            betas=(0.9, 0.98),
            eps=1e-8,
            weight_decay=weight_decay,
            **kind,
        )
        warmup = min(warmup, budget - 1)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_cosine(s, warmup, budget)
        )

    def step(self) -> torch.Tensor:
        idx = torch.randint(0, len(self.tokens), (self.batch_size,), generator=self.generator)
        idx = idx.to(self.device, non_blocking=True)
        tokens, mask = self.tokens[idx], self.loss_mask[idx, 1:]
        logits = self.model(tokens[:, :-1])
        nll = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
        loss = (nll * mask.flatten()).sum() / mask.sum().clamp_min(1.0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
        self.optimizer.step()
        self.schedule.step()
        return loss.detach()

    def run(self, steps: int) -> float:
        """`steps` optimizer steps; the last loss."""
        loss = torch.zeros(())
        for _ in range(steps):
            loss = self.step()
        return float(loss)


def main() -> None:
    from recall_bench.experiments.run import RunConfig, make_task
    from recall_bench.worlds import make_fact_world

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=int, default=4096)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    cfg = RunConfig(n_facts=args.facts, width=args.width, layers=args.layers)
    task = make_task(cfg, make_fact_world(cfg.spec))
    mc = cfg.model_config()
    torch.manual_seed(cfg.seed)
    model = GPT(mc.vocab_size, mc.max_len, mc.layers, mc.width, mc.heads, mc.mlp_ratio)
    trainer = Trainer(model, task.train.tokens, task.train.loss_mask, args.batch_size, cfg.lr)
    start = time.perf_counter()
    loss = trainer.run(args.steps)
    seconds = time.perf_counter() - start
    print(
        f"{count_params(model)['total']:,} params, {args.steps} steps in {seconds:.1f} s "
        f"({args.steps / seconds:.0f} steps/s), final loss {loss:.3f}"
    )


if __name__ == "__main__":
    main()
