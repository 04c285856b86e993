"""Random-token cells (Morris et al.): n_facts uniform random sequences of `length` tokens
over `vocab`, every token after the first a target, so each sequence carries
(length - 1) log2 vocab bits (design §3). Their held-out loss is taken on fresh sequences
from an independent stream; the uniform guess scores ln vocab. The engine trains them like
fact cells; token_task and token_record are their data and their record.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from recall_bench import formats, streams
from recall_bench.experiments.config import BaseRunConfig
from recall_bench.experiments.recording import make_record
from recall_bench.general import rows_of
from recall_bench.metrics import noise_floor, sequence_stats, summarize_in_weight
from recall_bench.model import ModelConfig, count_params
from recall_bench.train import Task, TrainResult
from recall_bench.worlds import TokenSpec, make_token_world, spec_hash

TOKENS = "random-tokens"
HELD_OUT_SEED = streams.HELD_OUT_OFFSET  # held-out sequences: an independent world


@dataclasses.dataclass(frozen=True)
class TokenRunConfig(BaseRunConfig):
    """A random-token cell; n_facts counts sequences (one sequence = one datum)."""

    mode: str = TOKENS
    layers: int = 1
    length: int = 16
    vocab: int = 64
    held_out: int = 512  # fresh sequences scored for the held-out loss

    def __post_init__(self) -> None:
        if self.mode != TOKENS:
            raise ValueError(f"TokenRunConfig mode must be {TOKENS!r}, got {self.mode!r}")
        self.spec  # noqa: B018 - validates n_facts, length and vocab
        self.model_config()

    @property
    def spec(self) -> TokenSpec:
        return TokenSpec(self.n_facts, self.length, self.vocab, self.seed)

    def model_config(self) -> ModelConfig:
        return self.model_shape(self.vocab, self.length)


def token_task(cfg: TokenRunConfig) -> Task:
    """All sequences train; up to monitor_facts of them decide when training stops."""
    train = formats.render_tokens(make_token_world(cfg.spec))
    limit = cfg.train_config().monitor_facts
    rows = streams.generator(cfg.seed, streams.MONITOR_ROWS).permutation(cfg.n_facts)[:limit]
    rows = np.sort(rows)
    return Task(train, rows_of(train, rows), np.full(len(rows), cfg.spec.bits_per_sequence))


def token_record(cfg: TokenRunConfig, task: Task, result: TrainResult, k: int) -> dict:
    """Bits memorized on the training sequences and loss on held-out ones, as a run record."""
    params, spec = result.model(k), cfg.spec
    n_params = count_params(params)
    seqs = task.train
    stats = sequence_stats(result.graphdef, params, seqs.tokens, seqs.loss_mask, seqs.value_mask)
    metrics = summarize_in_weight(
        stats,
        seqs.value_mask,
        np.full(spec.n_sequences, spec.bits_per_sequence),
        n_params["total"],
        n_params["non_embedding"],
    )
    held = formats.render_tokens(
        make_token_world(
            dataclasses.replace(spec, n_sequences=cfg.held_out, seed=cfg.seed + HELD_OUT_SEED)
        )
    )
    held_stats = sequence_stats(
        result.graphdef, params, held.tokens, held.loss_mask, held.value_mask
    )
    floor = noise_floor(
        held_stats["value_nll_bits"],
        np.full(cfg.held_out, spec.bits_per_sequence),
        metrics["bits_memorized"],
        spec.n_sequences,
    )
    floor["bits_per_param_corrected"] = floor["bits_memorized_corrected"] / n_params["total"]
    metrics.update(
        **floor,
        train_loss=float(stats["loss_sum"].sum() / seqs.loss_mask[:, 1:].sum()),
        held_out_loss=float(held_stats["loss_sum"].sum() / held.loss_mask[:, 1:].sum()),
        uniform_loss=math.log(cfg.vocab),
    )
    world = {
        "kind": TOKENS,
        "spec": dataclasses.asdict(spec),
        "hash": spec_hash(spec),
        "entropy_bits": spec.entropy_bits,
    }
    extra = {"bits_per_fact": spec.bits_per_sequence, "config": dataclasses.asdict(cfg)}
    return make_record(cfg, None, result, k, metrics, task, **extra, world=world)
