"""The general-ability suite (DESIGN.md invariant 8): structured synthetic skills that the
facts never touch, written in the facts' vocabulary so one model can hold both.

    BOS MARKER data SEP answer EOS PAD...      loss on `answer EOS`

Data and answers are value-alphabet symbols; SEP and the task markers are the reserved
special ids 9..15. Skills: copy, reverse, sort (ascending), add (two `digits`-digit base-10
numbers -> their digitwise sum mod 10, no carries), brackets (a prefix over `( [ ) ]`
-> the closers that balance it, innermost first; empty when already balanced). Every skill's
sequences are padded to one width so they stack with fact sequences. Test prompts never occur
in training.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from recall_bench.formats import BOS, EOS, PAD, Sequences, Vocab
from recall_bench.metrics import kl_tv, sequence_stats
from recall_bench.model import apply

SEP = 9
MARKERS = {"copy": 10, "reverse": 11, "sort": 12, "add": 13, "brackets": 14}
SKILLS = tuple(MARKERS)
BASE = 10  # addition digits are symbols 0..9
OPEN, CLOSE = (0, 1), (2, 3)  # bracket symbols: ( [ and ) ]


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    skills: tuple[str, ...] = SKILLS
    length: int = 6  # data symbols of copy / reverse / sort
    symbols: int = 16  # their alphabet: the first `symbols` value symbols
    digits: int = 3  # digits of each addend
    bracket_length: int = 8  # symbols of a bracket prefix
    train_per_skill: int = 20000
    test_per_skill: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "skills", tuple(self.skills))
        unknown = sorted(set(self.skills) - set(SKILLS))
        if unknown or not self.skills:
            raise ValueError(f"skills must be a non-empty subset of {SKILLS}, got {self.skills}")
        for name in ("length", "symbols", "digits", "bracket_length", "test_per_skill"):
            if getattr(self, name) < 1:
                raise ValueError(f"suite {name} must be >= 1, got {getattr(self, name)}")
        if self.train_per_skill < 0:
            raise ValueError(f"train_per_skill must be >= 0, got {self.train_per_skill}")

    def sizes(self, skill: str) -> tuple[int, int]:
        """(data symbols, longest answer) of a skill."""
        if skill == "add":
            return 2 * self.digits, self.digits
        if skill == "brackets":
            return self.bracket_length, self.bracket_length
        return self.length, self.length

    @property
    def width(self) -> int:
        """Tokens of every suite sequence: BOS MARKER data SEP answer EOS, padded."""
        return max(4 + sum(self.sizes(s)) for s in self.skills)

    def alphabet(self, skill: str) -> int:
        return {"add": BASE, "brackets": 4}.get(skill, self.symbols)


@dataclasses.dataclass(frozen=True)
class Suite:
    """train: every skill's training sequences, shuffled together; test: per skill."""

    config: SuiteConfig
    train: Sequences
    test: dict[str, Sequences]


def bracket_prompts(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    """[n, length] random bracket prefixes: open when balanced, else open or close the top."""
    data = np.empty((n, length), np.int64)
    stack = np.zeros((n, length), np.int64)
    depth = np.zeros(n, np.int64)
    rows = np.arange(n)
    for t in range(length):
        opens = (depth == 0) | (rng.random(n) < 0.5)
        kind = rng.integers(0, 2, n)
        top = stack[rows, np.maximum(depth - 1, 0)]
        data[:, t] = np.where(opens, kind, top + 2)
        stack[rows, depth] = np.where(opens, kind, stack[rows, depth])
        depth += np.where(opens, 1, -1)
    return data


def prompts(skill: str, rng: np.random.Generator, n: int, cfg: SuiteConfig) -> np.ndarray:
    """[n, data symbols] random prompt data of a skill."""
    if skill == "brackets":
        return bracket_prompts(rng, n, cfg.bracket_length)
    return rng.integers(0, cfg.alphabet(skill), (n, cfg.sizes(skill)[0]))


def answers(skill: str, data: np.ndarray) -> np.ndarray:
    """[n, answer symbols] the right answer to each prompt; -1 pads a shorter answer."""
    if skill == "copy":
        return data.copy()
    if skill == "reverse":
        return data[:, ::-1].copy()
    if skill == "sort":
        return np.sort(data, axis=1)
    if skill == "add":
        d = data.shape[1] // 2
        return (data[:, :d] + data[:, d:]) % BASE
    if skill == "brackets":
        out = np.full(data.shape, -1, np.int64)
        for r, row in enumerate(data):
            stack: list[int] = []
            for s in row:
                if s in OPEN:
                    stack.append(int(s))
                else:
                    stack.pop()
            out[r, : len(stack)] = np.asarray(stack[::-1], np.int64) + 2
        return out
    raise ValueError(f"unknown skill {skill!r}: use one of {SKILLS}")


def render(skill: str, data: np.ndarray, vocab: Vocab, width: int) -> Sequences:
    """BOS MARKER data SEP answer EOS, padded with PAD to `width`; loss on `answer EOS`."""
    n, d = data.shape
    answer = answers(skill, data)
    length = (answer >= 0).sum(axis=1)
    p = d + 3
    tokens = np.full((n, width), PAD, np.int32)
    tokens[:, 0], tokens[:, 1], tokens[:, p - 1] = BOS, MARKERS[skill], SEP
    tokens[:, 2 : p - 1] = data + vocab.value_offset
    cols = np.arange(answer.shape[1])
    tokens[:, p : p + answer.shape[1]] = np.where(answer >= 0, answer + vocab.value_offset, PAD)
    tokens[np.arange(n), p + length] = EOS
    value_mask = np.zeros((n, width), np.float32)
    value_mask[:, p : p + answer.shape[1]] = cols < length[:, None]
    loss_mask = value_mask.copy()
    loss_mask[np.arange(n), p + length] = 1.0
    return Sequences(tokens, loss_mask, value_mask, p)


def make_suite(cfg: SuiteConfig, vocab: Vocab) -> Suite:
    """Train and held-out test sequences of every skill, a pure function of cfg."""
    needed = max(cfg.alphabet(s) for s in cfg.skills)
    if needed > vocab.value_alphabet:
        raise ValueError(
            f"the suite needs {needed} data symbols but the value alphabet has "
            f"{vocab.value_alphabet}: lower the suite's symbols or raise value_alphabet"
        )
    train, test = [], {}
    for i, skill in enumerate(cfg.skills):
        held = prompts(skill, np.random.default_rng([cfg.seed, 4, i, 1]), cfg.test_per_skill, cfg)
        data = prompts(skill, np.random.default_rng([cfg.seed, 4, i, 0]), cfg.train_per_skill, cfg)
        seen = {row.tobytes() for row in held}
        data = data[[row.tobytes() not in seen for row in data]] if len(data) else data
        test[skill] = render(skill, held, vocab, cfg.width)
        train.append(render(skill, data, vocab, cfg.width))
    order = np.random.default_rng([cfg.seed, 5]).permutation(sum(len(s.tokens) for s in train))
    merged = [np.concatenate([getattr(s, f) for s in train])[order] for f in _ARRAYS]
    return Suite(cfg, Sequences(*merged, prompt_length=0), test)


_ARRAYS = ("tokens", "loss_mask", "value_mask")


def pad_to(seqs: Sequences, width: int) -> Sequences:
    """The same sequences right-padded with PAD (zero masks) to `width` tokens."""
    extra = ((0, 0), (0, width - seqs.tokens.shape[1]))
    return Sequences(*(np.pad(getattr(seqs, f), extra) for f in _ARRAYS), seqs.prompt_length)


def concat(parts: list[Sequences]) -> Sequences:
    """Rows of several sequence sets, padded to the widest."""
    width = max(p.tokens.shape[1] for p in parts)
    padded = [pad_to(p, width) for p in parts]
    arrays = (np.concatenate([getattr(p, f) for p in padded]) for f in _ARRAYS)
    return Sequences(*arrays, parts[0].prompt_length)


def score(graphdef: nnx.GraphDef, params: nnx.State, suite: Suite) -> dict[str, float]:
    """Held-out exact-match accuracy and mean loss (nats/token) of each skill, and their
    means over skills: general_accuracy, general_loss."""
    out: dict[str, float] = {}
    for skill, seqs in suite.test.items():
        stats = sequence_stats(graphdef, params, seqs.tokens, seqs.loss_mask, seqs.value_mask)
        out[f"{skill}_accuracy"] = float(np.mean(stats["exact"]))
        out[f"{skill}_loss"] = float(stats["loss_sum"].sum() / seqs.loss_mask[:, 1:].sum())
    out["general_accuracy"] = float(np.mean([out[f"{s}_accuracy"] for s in suite.test]))
    out["general_loss"] = float(np.mean([out[f"{s}_loss"] for s in suite.test]))
    return out


_logits = jax.jit(apply, static_argnums=0)


def divergence(
    base_graphdef: nnx.GraphDef,
    base_params: nnx.State,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    suite: Suite,
) -> dict[str, float]:
    """Mean per-token KL(base || new) (nats) and TV distance of the next-token distributions
    at the answer positions of each skill's held-out prompts, and their means over skills
    (the new model may have another graph, e.g. an added memory)."""
    out: dict[str, float] = {}
    for skill, seqs in suite.test.items():
        tokens = seqs.tokens[:, :-1]
        kl, tv = kl_tv(
            _logits(base_graphdef, base_params, tokens),
            _logits(graphdef, params, tokens),
            seqs.loss_mask[:, 1:],
        )
        out[f"{skill}_kl"], out[f"{skill}_tv"] = float(kl), float(tv)
    out["kl"] = float(np.mean([out[f"{s}_kl"] for s in suite.test]))
    out["tv"] = float(np.mean([out[f"{s}_tv"] for s in suite.test]))
    return out
