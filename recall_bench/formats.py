"""Token layout and the rendering of facts as training sequences with loss masks.

One vocabulary serves every mode: 16 reserved special tokens, one token per attribute,
the key alphabet and the value alphabet. Its size depends on the spec's alphabets and
attribute count, never on the number of facts (docs/design.md §1).

In-weight:  BOS key ATTR | value EOS                       loss on `value EOS`
            (order "attribute-first": BOS ATTR key | value EOS, a second phrasing of
            the same fact, for the edit protocol's generalization test)
In-tool:    BOS key ATTR | CALL key ATTR CALL_END RESULT value RESULT_END value EOS
            loss on `CALL key ATTR CALL_END` and on the final `value EOS`; never on the
            tool's returned tokens `RESULT value RESULT_END` (invariant 4).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recall_bench.worlds import FactSpec, FactWorld

PAD, BOS, EOS, CALL, CALL_END, RESULT, RESULT_END, NOT_FOUND, ERROR = range(9)
N_SPECIAL = 16  # 9..15 are reserved for the general-ability suite's task markers
ORDERS = ("key-first", "attribute-first")  # a prompt: BOS key ATTR, or BOS ATTR key


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Token ids of a fact spec: specials, attributes, key symbols, value symbols."""

    n_attributes: int
    key_alphabet: int
    value_alphabet: int

    @classmethod
    def of(cls, spec: FactSpec) -> Vocab:
        return cls(spec.n_attributes, spec.key_alphabet, spec.value_alphabet)

    @property
    def attr_offset(self) -> int:
        return N_SPECIAL

    @property
    def key_offset(self) -> int:
        return self.attr_offset + self.n_attributes

    @property
    def value_offset(self) -> int:
        return self.key_offset + self.key_alphabet

    @property
    def size(self) -> int:
        return self.value_offset + self.value_alphabet


@dataclasses.dataclass(frozen=True)
class Sequences:
    """Rendered facts. tokens: [N, L] int32; loss_mask: [N, L] float32, 1 where tokens[:, t]
    is a target predicted from tokens[:, :t]; value_mask: [N, L] 1 on the answer's value
    tokens (the span whose NLL counts for bits memorized); prompt_length: tokens given."""

    tokens: np.ndarray
    loss_mask: np.ndarray
    value_mask: np.ndarray
    prompt_length: int


@dataclasses.dataclass(frozen=True)
class Task:
    """What one model trains on, and which facts decide when it has learned them."""

    train: Sequences
    monitor: Sequences
    monitor_bits: np.ndarray  # entropy of each monitored sequence, in bits


def fact_index(spec: FactSpec, entities: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(entity, attribute) of every fact of the given entities, entity-major."""
    entities = np.arange(spec.n_entities) if entities is None else np.asarray(entities)
    entity = np.repeat(entities, spec.n_attributes)
    attribute = np.tile(np.arange(spec.n_attributes), len(entities))
    return entity, attribute


def prompt_tokens(
    world: FactWorld, entity: np.ndarray, attribute: np.ndarray, order: str = "key-first"
) -> np.ndarray:
    """[N, 1 + key_length + 1]: BOS, key symbols, attribute token (order "attribute-first":
    BOS, attribute token, key symbols)."""
    if order not in ORDERS:
        raise ValueError(f"unknown prompt order {order!r}: use one of {ORDERS}")
    vocab = Vocab.of(world.spec)
    bos = np.full((len(entity), 1), BOS)
    key = world.keys[entity] + vocab.key_offset
    attr = (attribute + vocab.attr_offset)[:, None]
    parts = [bos, key, attr] if order == "key-first" else [bos, attr, key]
    return np.concatenate(parts, axis=1).astype(np.int32)


def answer_tokens(world: FactWorld, entity: np.ndarray, attribute: np.ndarray) -> np.ndarray:
    """[N, value_length] value symbols of each fact."""
    return (world.value_tokens()[entity, attribute] + Vocab.of(world.spec).value_offset).astype(
        np.int32
    )


def call_tokens(world: FactWorld, entity: np.ndarray, attribute: np.ndarray) -> np.ndarray:
    """[N, key_length + 3]: CALL key ATTR CALL_END, the call a model should write."""
    prompt = prompt_tokens(world, entity, attribute)
    n = len(entity)
    return np.concatenate(
        [np.full((n, 1), CALL), prompt[:, 1:], np.full((n, 1), CALL_END)], axis=1
    ).astype(np.int32)


def result_tokens(values: np.ndarray) -> np.ndarray:
    """[N, value_length + 2]: RESULT value RESULT_END, what the harness writes back."""
    n = len(values)
    return np.concatenate(
        [np.full((n, 1), RESULT), values, np.full((n, 1), RESULT_END)], axis=1
    ).astype(np.int32)


def render_in_weight(
    world: FactWorld, entities: np.ndarray | None = None, order: str = "key-first"
) -> Sequences:
    """prompt | value EOS, loss on the answer only."""
    return weight_sequences(world, *fact_index(world.spec, entities), order)


def weight_sequences(
    world: FactWorld, entity: np.ndarray, attribute: np.ndarray, order: str = "key-first"
) -> Sequences:
    """render_in_weight of the facts (entity[i], attribute[i])."""
    prompt = prompt_tokens(world, entity, attribute, order)
    value = answer_tokens(world, entity, attribute)
    eos = np.full((len(entity), 1), EOS, dtype=np.int32)
    tokens = np.concatenate([prompt, value, eos], axis=1)
    p, v = prompt.shape[1], value.shape[1]
    loss = np.zeros(tokens.shape, np.float32)
    loss[:, p:] = 1.0
    value_mask = np.zeros(tokens.shape, np.float32)
    value_mask[:, p : p + v] = 1.0
    return Sequences(tokens, loss, value_mask, p)


def render_in_tool(
    world: FactWorld, entities: np.ndarray | None = None, order: str = "key-first"
) -> Sequences:
    """prompt | call result answer EOS, loss on the call and the answer, never the result.
    The call names key then attribute whatever the prompt's order."""
    entity, attribute = fact_index(world.spec, entities)
    prompt = prompt_tokens(world, entity, attribute, order)
    call = call_tokens(world, entity, attribute)
    value = answer_tokens(world, entity, attribute)
    result = result_tokens(value)
    eos = np.full((len(entity), 1), EOS, dtype=np.int32)
    tokens = np.concatenate([prompt, call, result, value, eos], axis=1)
    p, c, r, v = prompt.shape[1], call.shape[1], result.shape[1], value.shape[1]
    loss = np.zeros(tokens.shape, np.float32)
    loss[:, p : p + c] = 1.0
    loss[:, p + c + r :] = 1.0
    value_mask = np.zeros(tokens.shape, np.float32)
    value_mask[:, p + c + r : p + c + r + v] = 1.0
    return Sequences(tokens, loss, value_mask, p)


def render(
    world: FactWorld, mode: str, entities: np.ndarray | None = None, order: str = "key-first"
) -> Sequences:
    if mode == "in-weight":
        return render_in_weight(world, entities, order)
    if mode == "in-tool":
        return render_in_tool(world, entities, order)
    raise ValueError(f"unknown mode {mode!r}: use 'in-weight' or 'in-tool'")


def render_tokens(tokens: np.ndarray) -> Sequences:
    """Random-token sequences: every token after the first is a target and counts for bits."""
    mask = np.ones(tokens.shape, np.float32)
    mask[:, 0] = 0.0
    return Sequences(tokens.astype(np.int32), mask, mask.copy(), 1)


def max_length(spec: FactSpec) -> int:
    """Length of the longest rendered sequence (the in-tool one); the model's position table."""
    return 1 + 2 * (spec.key_length + 1) + 2 + (spec.value_length + 2) + spec.value_length + 1
