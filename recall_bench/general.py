"""The general-ability suite (docs/design.md §8): structured synthetic skills that the
facts never touch, written in the facts' vocabulary so one model can hold both.

    BOS MARKER data SEP answer EOS PAD...      loss on `answer EOS`

Data and answers are value-alphabet symbols; SEP and the task markers are the reserved
special ids 9..14. Skills: copy, reverse, sort (ascending), add (two `digits`-digit base-10
numbers -> their digitwise sum mod 10, no carries), brackets (a prefix over `( [ ) ]`
-> the closers that balance it, innermost first; empty when already balanced). Every skill's
sequences are padded to one width so they stack with fact sequences. Test prompts never occur
in training.

Optionally a text file (natural_text.py: byte by byte, two nibble symbols a byte), a path or
`stdlib:REL` (STDLIB_TEXT, CPython's pydoc topics, is on every machine without a download; its
sha256 goes in the record, as every text's does). Training windows start at random offsets in
the first (1 - text_held_out) of the bytes; held-out windows tile the rest without overlap. The
text is trained on with the suite but scored apart, in bits per byte: it is not in
general_accuracy, general_loss or the kl / tv means (those stay over the structured skills,
comparable with runs without a text), only in its own text_* numbers. Divergences from a base
model are in divergences.py.

Graded score (like HellaSwag's `acc`): each held-out prompt with its right answer and
`distractors` others (answers of other held-out prompts of the skill, all different), ranked by
the summed log-likelihood of `answer EOS`; ties share the credit, so a model indifferent to
the answer scores exactly chance, 1 / (distractors + 1). Retention is reported above chance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable

import numpy as np
from flax import nnx

from recall_bench import streams
from recall_bench.formats import BOS, EOS, PAD, Sequences, Vocab
from recall_bench.metrics import sequence_stats
from recall_bench.natural_text import (
    NIBBLES,
    TEXT_WINDOW,
    read_text,
    render_text,
    text_score,
    text_split,
)

SEP = 9
MARKERS = {"copy": 10, "reverse": 11, "sort": 12, "add": 13, "brackets": 14}
SKILLS = tuple(MARKERS)
BASE = 10  # addition digits are symbols 0..9
OPEN, CLOSE = (0, 1), (2, 3)  # bracket symbols: ( [ and ) ]
STDLIB_TEXT = "stdlib:pydoc_data/topics.py"  # ~0.75 MB of English prose shipped with CPython


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
    text_file: str | None = None  # a UTF-8 text file to learn and score in bits per byte
    text_held_out: float = 0.1  # share of its bytes, at its end, held out for scoring
    text_train_windows: int = 20000  # training windows from the rest
    text_sha256: str | None = dataclasses.field(default=None, init=False)  # set from the file
    text_bytes: int | None = dataclasses.field(default=None, init=False)  # its size
    distractors: int = 3  # wrong answers beside the right one in the graded score

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
        if not 0.0 < self.text_held_out < 1.0:
            raise ValueError(f"text_held_out must be in (0, 1), got {self.text_held_out}")
        if self.distractors < 1:
            raise ValueError(f"distractors must be >= 1, got {self.distractors}")
        if self.text_train_windows < 1:
            raise ValueError(f"text_train_windows must be >= 1, got {self.text_train_windows}")
        if self.text_file is not None:
            data = read_text(self.text_file, self.text_held_out)
            object.__setattr__(self, "text_sha256", hashlib.sha256(data).hexdigest())
            object.__setattr__(self, "text_bytes", len(data))

    def sizes(self, skill: str) -> tuple[int, int]:
        """(data symbols, longest answer) of a skill."""
        if skill == "add":
            return 2 * self.digits, self.digits
        if skill == "brackets":
            return self.bracket_length, self.bracket_length
        return self.length, self.length

    @property
    def width(self) -> int:
        """Tokens of every suite sequence: BOS MARKER data SEP answer EOS (or BOS TEXT
        nibbles), padded."""
        text = 2 + 2 * TEXT_WINDOW if self.text_file is not None else 0
        return max(text, *(4 + sum(self.sizes(s)) for s in self.skills))

    def alphabet(self, skill: str) -> int:
        return {"add": BASE, "brackets": 4}.get(skill, self.symbols)

    def key(self) -> dict:
        """Its settings; the text_* ones only with a text file and distractors only when not
        the default, so that keys and records made before they existed still match."""
        out = dataclasses.asdict(self)
        if self.text_file is None:
            out = {k: v for k, v in out.items() if not k.startswith("text_")}
        if self.distractors == 3:
            del out["distractors"]
        return out


@dataclasses.dataclass(frozen=True)
class Suite:
    """train: every skill's training sequences (and text windows), shuffled together; test:
    per structured skill; text: the held-out text windows, when the suite has a text;
    choices: per skill, each test prompt with its right answer then its distractors."""

    config: SuiteConfig
    train: Sequences
    test: dict[str, Sequences]
    text: Sequences | None = None
    choices: dict[str, Sequences] | None = None


def text_offsets(n_bytes: int, cfg: SuiteConfig) -> tuple[np.ndarray, np.ndarray]:
    """Start offsets of the training windows (random, seeded, inside the first part) and of the
    held-out windows (tiling the last part from its start, a short remainder dropped)."""
    split = text_split(n_bytes, cfg.text_held_out)
    rng = streams.generator(cfg.seed, streams.TEXT_WINDOWS)
    train = rng.integers(0, split - TEXT_WINDOW + 1, cfg.text_train_windows)
    held = np.arange(split, n_bytes - TEXT_WINDOW + 1, TEXT_WINDOW)
    return train, held


def load_text(cfg: SuiteConfig) -> bytes:
    """The suite's text file, checked against the hash its config recorded."""
    data = read_text(cfg.text_file, cfg.text_held_out)
    if hashlib.sha256(data).hexdigest() != cfg.text_sha256:
        raise ValueError(
            f"text file {cfg.text_file!r} changed after its config was made: make it again"
        )
    return data


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
    return render_answers(skill, data, answers(skill, data), vocab, width)


def render_answers(
    skill: str, data: np.ndarray, answer: np.ndarray, vocab: Vocab, width: int
) -> Sequences:
    """As render, with the given answers (-1 padded) in place of the right ones."""
    n, d = data.shape
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
    if cfg.text_file is not None:
        needed = max(needed, NIBBLES)
    if needed > vocab.value_alphabet:
        raise ValueError(
            f"the suite needs {needed} data symbols but the value alphabet has "
            f"{vocab.value_alphabet}: lower the suite's symbols or raise value_alphabet"
        )
    train, test, choices = [], {}, {}
    for i, skill in enumerate(cfg.skills):
        held = prompts(
            skill, streams.generator(cfg.seed, streams.SUITE_PROMPTS, i, 1), cfg.test_per_skill, cfg
        )
        data = prompts(
            skill,
            streams.generator(cfg.seed, streams.SUITE_PROMPTS, i, 0),
            cfg.train_per_skill,
            cfg,
        )
        seen = {row.tobytes() for row in held}
        data = data[[row.tobytes() not in seen for row in data]] if len(data) else data
        test[skill] = render(skill, held, vocab, cfg.width)
        choices[skill] = choice_sequences(skill, held, cfg.distractors, vocab, cfg.width)
        train.append(render(skill, data, vocab, cfg.width))
    text = None
    if cfg.text_file is not None:
        data = load_text(cfg)
        starts, held = text_offsets(len(data), cfg)
        train.append(render_text(data, starts, vocab, cfg.width))
        text = render_text(data, held, vocab, cfg.width)
    order = streams.generator(cfg.seed, streams.SUITE_ORDER).permutation(
        sum(len(s.tokens) for s in train)
    )
    merged = [np.concatenate([getattr(s, f) for s in train])[order] for f in _ARRAYS]
    return Suite(cfg, Sequences(*merged, prompt_length=0), test, text, choices)


def distractor_rows(answer: np.ndarray, k: int) -> np.ndarray:
    """[n, k] for each row, the next k rows after it (cyclically) whose answers differ from
    its own and from each other's: deterministic distractors."""
    keys = [row.tobytes() for row in answer]
    n = len(keys)
    out = np.empty((n, k), np.int64)
    for i in range(n):
        seen, chosen = {keys[i]}, []
        for j in (np.arange(i + 1, i + n) % n).tolist():
            if len(chosen) < k and keys[j] not in seen:
                seen.add(keys[j])
                chosen.append(j)
        if len(chosen) < k:
            raise ValueError(
                f"only {len(chosen)} distinct wrong answers for a {k}-distractor graded score: "
                "raise test_per_skill or lower distractors"
            )
        out[i] = chosen
    return out


def choice_sequences(skill: str, data: np.ndarray, k: int, vocab: Vocab, width: int) -> Sequences:
    """Rows [n * (k + 1)]: prompt i with its right answer (row i * (k + 1)), then with each of
    its k distractors."""
    answer = answers(skill, data)
    options = np.concatenate([np.arange(len(data))[:, None], distractor_rows(answer, k)], 1)
    rows = options.reshape(-1)
    return render_answers(skill, np.repeat(data, k + 1, axis=0), answer[rows], vocab, width)


def choice_accuracy(nll: np.ndarray) -> np.ndarray:
    """Per prompt, the credit of ranking by NLL [n, choices] (column 0 right): 1 when the right
    answer is the only most likely, 1/m when m answers tie for most likely, else 0."""
    best = nll.min(axis=1, keepdims=True)
    tied = (nll == best).sum(axis=1)
    return np.where(nll[:, 0] == best[:, 0], 1.0 / tied, 0.0)


def above_chance(accuracy: float, base_accuracy: float, chance: float) -> float:
    """Retention above chance, (acc - chance) / (acc_base - chance); NaN when the base is not
    above chance (nothing to retain)."""
    if not base_accuracy > chance:
        return math.nan
    return (accuracy - chance) / (base_accuracy - chance)


def kept(metrics: dict, base: dict, chance: float) -> dict[str, float | None]:
    """A model's general ability relative to its base's (score() dicts): exact accuracy as a
    ratio, the graded score above chance and, with a text, the change in bits per byte."""
    ratio = (
        metrics["general_accuracy"] / base["general_accuracy"] if base["general_accuracy"] else None
    )
    out = {
        "general_accuracy_kept": ratio,
        "general_mc_kept": above_chance(
            metrics["general_mc_accuracy"], base["general_mc_accuracy"], chance
        ),
    }
    if "text_bits_per_byte" in metrics:
        out["text_bits_per_byte_change"] = (
            metrics["text_bits_per_byte"] - base["text_bits_per_byte"]
        )
    return out


def graded_score(nll: Callable[[Sequences], np.ndarray], suite: Suite) -> dict[str, float]:
    """{skill}_mc_accuracy and their mean general_mc_accuracy, with `nll` giving each
    sequence's summed NLL of its loss tokens (the answer and EOS)."""
    out = {}
    for skill, seqs in suite.choices.items():
        scores = np.asarray(nll(seqs), np.float64).reshape(-1, suite.config.distractors + 1)
        out[f"{skill}_mc_accuracy"] = float(choice_accuracy(scores).mean())
    out["general_mc_accuracy"] = float(np.mean(list(out.values())))
    return out


_ARRAYS = ("tokens", "loss_mask", "value_mask")


def pad_to(seqs: Sequences, width: int) -> Sequences:
    """The same sequences right-padded with PAD (zero masks) to `width` tokens."""
    extra = ((0, 0), (0, width - seqs.tokens.shape[1]))
    return Sequences(*(np.pad(getattr(seqs, f), extra) for f in _ARRAYS), seqs.prompt_length)


def rows_of(seqs: Sequences, idx: np.ndarray) -> Sequences:
    """The rows `idx` of a sequence set (in that order, repeats kept)."""
    return Sequences(*(getattr(seqs, f)[idx] for f in _ARRAYS), seqs.prompt_length)


def concat(parts: list[Sequences]) -> Sequences:
    """Rows of several sequence sets, padded to the widest."""
    width = max(p.tokens.shape[1] for p in parts)
    padded = [pad_to(p, width) for p in parts]
    arrays = (np.concatenate([getattr(p, f) for p in padded]) for f in _ARRAYS)
    return Sequences(*arrays, parts[0].prompt_length)


def accuracy_name(skill: str) -> str:
    """The metric name of a skill's held-out exact match: skill_<skill>_accuracy, apart from
    the in-tool method's copy_accuracy (answers that copy the store's value)."""
    return f"skill_{skill}_accuracy"


def score(graphdef: nnx.GraphDef, params: nnx.State, suite: Suite) -> dict[str, float]:
    """Held-out exact-match accuracy (accuracy_name) and mean loss (nats/token) of each skill,
    and their means over skills: general_accuracy, general_loss; the graded score
    (graded_score); with a text, text_bits_per_byte and text_loss of its held-out windows."""
    out: dict[str, float] = {}
    for skill, seqs in suite.test.items():
        stats = sequence_stats(graphdef, params, seqs.tokens, seqs.loss_mask, seqs.value_mask)
        out[accuracy_name(skill)] = float(np.mean(stats["exact"]))
        out[f"{skill}_loss"] = float(stats["loss_sum"].sum() / seqs.loss_mask[:, 1:].sum())
    out["general_accuracy"] = float(np.mean([out[accuracy_name(s)] for s in suite.test]))
    out["general_loss"] = float(np.mean([out[f"{s}_loss"] for s in suite.test]))
    if suite.choices is not None:

        def nll(seqs: Sequences) -> np.ndarray:
            args = (seqs.tokens, seqs.loss_mask, seqs.value_mask)
            return sequence_stats(graphdef, params, *args)["loss_sum"]

        out.update(graded_score(nll, suite))
    if suite.text is not None:
        seqs = suite.text
        stats = sequence_stats(graphdef, params, seqs.tokens, seqs.loss_mask, seqs.value_mask)
        out.update(text_score(stats, seqs))
    return out
