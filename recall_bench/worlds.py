"""Synthetic worlds: fact worlds (entity keys -> attribute values) and random-token worlds.

A world is a pure function of its spec (seed included). Keys and values are sequences of
tokens from fixed alphabets, so the vocabulary, and hence the parameter count, never depends
on the number of facts (docs/design.md §1). Values are uniform and independent, so each
fact carries exactly log2 |value space| bits (invariant 2).

A structured world (FactSpec.rule_alpha = a) replaces independence by a rule: each value is
rule(key) with probability 1 - a, else uniform (see rule_values). Its facts then carry
-log2 P(value | key, rule) bits each, far less for a rule-following fact than for an exception.

Worlds are prefix-consistent: the first N entities of a world with M > N entities and the
same seed are exactly the world with N entities. A model trained on a small world can
therefore be evaluated against a store built from a much larger one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from recall_bench import streams

_KEY_CHUNK = 1 << 16  # keys are drawn from the rng in fixed-size chunks (prefix consistency)
_MAX_SPACE = 1 << 62


class SpecError(ValueError):
    """A world spec that cannot be built; the message says which field and what to do."""


@dataclasses.dataclass(frozen=True)
class FactSpec:
    """A fact world: n_entities keys, each with one value per attribute.

    attribute_sizes[a] is the number of possible values of attribute a; a value is written
    as value_length tokens over value_alphabet symbols, so each size must fit in
    value_alphabet ** value_length. rule_alpha (None: fully random) makes a structured world:
    each value is rule_values' value with probability 1 - rule_alpha, else uniform.
    """

    n_entities: int
    attribute_sizes: tuple[int, ...] = (4096,)
    key_length: int = 4
    key_alphabet: int = 64
    value_length: int = 2
    value_alphabet: int = 64
    seed: int = 0
    rule_alpha: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "attribute_sizes", tuple(int(s) for s in self.attribute_sizes))
        if self.rule_alpha is not None:
            alpha = self.rule_alpha
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
                raise SpecError(f"rule_alpha must be a number in [0, 1] or None, got {alpha!r}")
            if not 0.0 <= alpha <= 1.0:
                raise SpecError(f"rule_alpha = {alpha} must be in [0, 1] (the exception rate)")
            object.__setattr__(self, "rule_alpha", float(alpha))
        for name in ("n_entities", "key_length", "key_alphabet", "value_length", "value_alphabet"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise SpecError(f"{name} must be a positive integer, got {value!r}")
        if not self.attribute_sizes:
            raise SpecError("attribute_sizes is empty: give at least one attribute size")
        capacity = self.value_alphabet**self.value_length
        for a, size in enumerate(self.attribute_sizes):
            if size < 2 or size > capacity:
                raise SpecError(
                    f"attribute_sizes[{a}] = {size} must be in [2, value_alphabet**value_length"
                    f" = {capacity}]; raise value_length or value_alphabet"
                )
        if self.key_space > _MAX_SPACE:
            raise SpecError(f"key space {self.key_alphabet}**{self.key_length} is too large")
        if self.n_entities > self.key_space:
            raise SpecError(
                f"n_entities = {self.n_entities} exceeds the key space "
                f"key_alphabet**key_length = {self.key_space}: raise key_length or key_alphabet"
            )

    @property
    def key_space(self) -> int:
        return self.key_alphabet**self.key_length

    @property
    def n_attributes(self) -> int:
        return len(self.attribute_sizes)

    @property
    def n_facts(self) -> int:
        return self.n_entities * self.n_attributes

    @property
    def attribute_bits(self) -> np.ndarray:
        """Exact entropy of one fact of each attribute, in bits (given the rule, if any)."""
        sizes = np.asarray(self.attribute_sizes, dtype=np.float64)
        if self.rule_alpha is None:
            return np.log2(sizes)
        hit, miss = self.rule_fact_bits
        other = self.rule_alpha / sizes  # probability of each of the size - 1 other values
        return (1.0 - self.rule_alpha + other) * hit + (sizes - 1) * other * np.where(
            other > 0, miss, 0.0
        )

    @property
    def rule_fact_bits(self) -> tuple[np.ndarray, np.ndarray]:
        """Per attribute, -log2 P(value | key, rule) of a value equal to the rule's and of
        any other value (inf when rule_alpha = 0: no other value can occur)."""
        sizes = np.asarray(self.attribute_sizes, dtype=np.float64)
        alpha = self.rule_alpha
        with np.errstate(divide="ignore"):
            return -np.log2(1.0 - alpha + alpha / sizes), -np.log2(alpha / sizes)

    @property
    def bits_per_fact(self) -> float:
        """Mean entropy of a fact, in bits."""
        return float(self.attribute_bits.mean())

    @property
    def entropy_bits(self) -> float:
        """Total information content of the world, in bits."""
        return float(self.n_entities * self.attribute_bits.sum())

    def with_entities(self, n_entities: int) -> FactSpec:
        return dataclasses.replace(self, n_entities=n_entities)


@dataclasses.dataclass(frozen=True)
class FactWorld:
    """keys: [E, key_length] symbols; values: [E, A] value ids in [0, attribute_sizes[a])."""

    spec: FactSpec
    keys: np.ndarray
    values: np.ndarray

    def value_tokens(self) -> np.ndarray:
        """[E, A, value_length] base-value_alphabet digits of each value, most significant first."""
        powers = self.spec.value_alphabet ** np.arange(self.spec.value_length - 1, -1, -1)
        return (self.values[..., None] // powers) % self.spec.value_alphabet

    def rule_values(self) -> np.ndarray:
        """[E, A] the rule's value of every fact (what a model that learned only the rule says)."""
        return rule_values(self.spec, self.keys)

    def follows_rule(self) -> np.ndarray:
        """[E, A] whether each value equals the rule's (an exception may coincide with it)."""
        return self.values == self.rule_values()

    def fact_bits(self) -> np.ndarray:
        """[E * A] information of each fact in bits, in fact order (entity-major): log2 of the
        value space, or in a structured world -log2 P(value | key, rule), whose mean over
        worlds is spec.attribute_bits."""
        if self.spec.rule_alpha is None:
            return np.tile(self.spec.attribute_bits, self.spec.n_entities)
        hit, miss = self.spec.rule_fact_bits
        return np.where(self.follows_rule(), hit, miss).reshape(-1)


@dataclasses.dataclass(frozen=True)
class TokenSpec:
    """A random-token world: n_sequences sequences of `length` tokens uniform over `vocab`."""

    n_sequences: int
    length: int = 64
    vocab: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_sequences", "length", "vocab"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise SpecError(f"{name} must be a positive integer, got {value!r}")
        if self.length < 2 or self.vocab < 2:
            raise SpecError("length and vocab must be at least 2")

    @property
    def bits_per_sequence(self) -> float:
        """(S - 1) log2 V: the first token is given."""
        return (self.length - 1) * math.log2(self.vocab)

    @property
    def entropy_bits(self) -> float:
        return self.n_sequences * self.bits_per_sequence


def spec_fields(spec: FactSpec | TokenSpec) -> dict:
    """The spec's fields, less those left None: an optional field added later never changes
    how older specs are stored or hashed."""
    return {k: v for k, v in dataclasses.asdict(spec).items() if v is not None}


def spec_hash(spec: FactSpec | TokenSpec) -> str:
    """A short stable hash of a spec (its kind and every field that is set)."""
    payload = json.dumps({"kind": type(spec).__name__, **spec_fields(spec)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _unique_prefix(rng: np.random.Generator, n: int, space: int) -> np.ndarray:
    """The first n distinct integers of a uniform stream over [0, space), in stream order."""
    stream = np.empty(0, dtype=np.int64)
    while True:
        stream = np.concatenate([stream, rng.integers(0, space, _KEY_CHUNK, dtype=np.int64)])
        _, first = np.unique(stream, return_index=True)
        if len(first) >= n:
            return stream[np.sort(first)[:n]]


def rule_values(spec: FactSpec, keys: np.ndarray) -> np.ndarray:
    """[E, A] rule(key): value digit j of attribute a is key symbol (a + j) mod key_length plus
    a, mod value_alphabet; the digits' number is then taken mod the attribute's size."""
    a = np.arange(spec.n_attributes)[:, None]
    j = np.arange(spec.value_length)[None, :]
    digits = (keys[:, (a + j) % spec.key_length].astype(np.int64) + a) % spec.value_alphabet
    powers = spec.value_alphabet ** np.arange(spec.value_length - 1, -1, -1, dtype=np.int64)
    return (digits @ powers) % np.asarray(spec.attribute_sizes, dtype=np.int64)


def make_fact_world(spec: FactSpec) -> FactWorld:
    """Build the world of a spec: unique random keys and uniform independent values; in a
    structured world each value is replaced by the rule's with probability 1 - rule_alpha."""
    key_ids = _unique_prefix(
        streams.generator(spec.seed, streams.WORLD_KEYS), spec.n_entities, spec.key_space
    )
    powers = spec.key_alphabet ** np.arange(spec.key_length - 1, -1, -1, dtype=np.int64)
    keys = ((key_ids[:, None] // powers) % spec.key_alphabet).astype(np.int32)
    values = np.stack(
        [
            streams.generator(spec.seed, streams.WORLD_VALUES, a).integers(0, size, spec.n_entities)
            for a, size in enumerate(spec.attribute_sizes)
        ],
        axis=1,
    ).astype(np.int64)
    if spec.rule_alpha is not None:
        exception = np.stack(
            [
                streams.generator(spec.seed, streams.RULE_EXCEPTIONS, a).random(spec.n_entities)
                < spec.rule_alpha
                for a in range(spec.n_attributes)
            ],
            axis=1,
        )
        values = np.where(exception, values, rule_values(spec, keys))
    return FactWorld(spec=spec, keys=keys, values=values)


def make_token_world(spec: TokenSpec) -> np.ndarray:
    """[n_sequences, length] uniform random tokens."""
    rng = streams.generator(spec.seed, streams.TOKEN_WORLD)
    return rng.integers(0, spec.vocab, (spec.n_sequences, spec.length)).astype(np.int32)


def save_fact_world(world: FactWorld, path: str | Path) -> Path:
    """Write a world to an .npz file atomically (spec as JSON beside the arrays)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    spec_json = json.dumps(spec_fields(world.spec))
    np.savez(tmp, keys=world.keys, values=world.values, spec=np.asarray(spec_json))
    os.replace(tmp, path)
    return path


def load_fact_world(path: str | Path) -> FactWorld:
    """Read a world written by save_fact_world and check it matches its spec."""
    with np.load(path, allow_pickle=False) as data:
        spec = FactSpec(**json.loads(str(data["spec"])))
        world = FactWorld(spec=spec, keys=data["keys"], values=data["values"])
    if world.keys.shape != (spec.n_entities, spec.key_length) or world.values.shape != (
        spec.n_entities,
        spec.n_attributes,
    ):
        raise SpecError(f"{path}: arrays do not match the stored spec; rebuild the world")
    return world
