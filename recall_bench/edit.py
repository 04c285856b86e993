"""Changing what a model knows: which facts change, how a method changes them, and the
triad the editing literature measures, on exact synthetic ground truth.

k facts chosen at random get a new value, never the old one. A method either writes the new
values into the store (in-tool: no weight moves) or into the weights (fine-tuning, ROME,
MEMIT: edit_weights.py). Then, by exact-match recall:

- efficacy: edited facts answer their new value (the prompt the edit used, key-first);
- generalization: edited facts answer it through the second phrasing (attribute-first);
- specificity: unedited facts the base model recalled still answer their old value, split
  into other attributes of edited entities (same_entity), facts of other entities with an
  edited fact's attribute whose key shares a symbol in place with its key (neighbour), and
  the rest (other).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from recall_bench import formats, streams
from recall_bench.cost import flops_per_token
from recall_bench.decode import greedy_decode
from recall_bench.experiments.evaluate import answered
from recall_bench.general import concat
from recall_bench.metrics import sequence_stats
from recall_bench.model import ModelConfig
from recall_bench.tool import Store
from recall_bench.train import Task
from recall_bench.worlds import FactWorld

GROUPS = ("same_entity", "neighbour", "other")
ARRAYS = ("tokens", "loss_mask", "value_mask")


@dataclasses.dataclass(frozen=True)
class EditSet:
    """k facts to change: entity [k], attribute [k], value [k] (new ids, each != the old)."""

    entity: np.ndarray
    attribute: np.ndarray
    value: np.ndarray

    @property
    def k(self) -> int:
        return len(self.entity)


def choose_edits(world: FactWorld, k: int, seed: int) -> EditSet:
    """k distinct facts drawn at random, each with a new value drawn uniformly from the others
    of its attribute. The k facts are the first k of one permutation of the seed: the edits
    of a smaller k are a subset of those of a larger one."""
    spec = world.spec
    if not 1 <= k <= spec.n_facts:
        raise ValueError(
            f"k = {k} edits: give 1 <= k <= {spec.n_facts}, the facts of the world "
            "(raise --facts for more)"
        )
    rng = streams.generator(seed, streams.EDIT_TARGETS)
    facts = np.sort(rng.permutation(spec.n_facts)[:k])
    sizes = np.tile(np.asarray(spec.attribute_sizes), spec.n_entities)
    shift = rng.integers(1, sizes)  # one per fact of the world, so subsets agree
    entity, attribute = np.divmod(facts, spec.n_attributes)
    old = world.values[entity, attribute]
    return EditSet(entity, attribute, (old + shift[facts]) % sizes[facts])


def edited_world(world: FactWorld, edits: EditSet) -> FactWorld:
    """The world with the edited facts' values replaced."""
    values = world.values.copy()
    values[edits.entity, edits.attribute] = edits.value
    return dataclasses.replace(world, values=values)


def edited_mask(world: FactWorld, edits: EditSet) -> np.ndarray:
    """[n_facts] whether each fact (entity-major) is edited."""
    mask = np.zeros(world.spec.n_facts, bool)
    mask[edits.entity * world.spec.n_attributes + edits.attribute] = True
    return mask


def specificity_groups(world: FactWorld, edits: EditSet) -> dict[str, np.ndarray]:
    """[n_facts] masks of the unedited facts in each GROUPS group (disjoint)."""
    spec = world.spec
    edited = edited_mask(world, edits).reshape(spec.n_entities, spec.n_attributes)
    entity_edited = edited.any(axis=1)
    near = np.zeros_like(edited)
    for a in np.unique(edits.attribute):
        keys = world.keys[edits.entity[edits.attribute == a]]
        for p in range(spec.key_length):
            near[:, a] |= np.isin(world.keys[:, p], keys[:, p])
    same = entity_edited[:, None] & ~edited
    neighbour = ~entity_edited[:, None] & near
    other = ~entity_edited[:, None] & ~near
    return {
        name: mask.reshape(-1) for name, mask in zip(GROUPS, (same, neighbour, other), strict=True)
    }


def edit_metrics(
    right: np.ndarray,
    right_second: np.ndarray,
    base_right: np.ndarray,
    edited: np.ndarray,
    groups: dict[str, np.ndarray],
) -> dict[str, float | int | None]:
    """The triad from per-fact booleans [n_facts]: right (answers the edited world's value,
    key-first), right_second (the same, attribute-first), base_right (the base model answered
    the original value, key-first), edited. Specificity counts only unedited facts the base
    model knew (efficacy_known: the edited facts it knew); a group with none is None."""

    def share(mask: np.ndarray) -> float | None:
        return float(right[mask].mean()) if mask.any() else None

    kept = base_right & ~edited
    out: dict[str, float | int | None] = {
        "efficacy": float(right[edited].mean()),
        # of the edited facts the base model knew: a store edit's is 1.0 by construction
        "efficacy_known": share(edited & base_right),
        "generalization": float(right_second[edited].mean()),
        "specificity": share(kept),
        "specificity_facts": int(kept.sum()),
    }
    for name, mask in groups.items():
        out[f"specificity_{name}"] = share(kept & mask)
        out[f"specificity_{name}_facts"] = int((kept & mask).sum())
    return out


def weight_answers(graphdef, params, world: FactWorld, order: str) -> np.ndarray:
    """[n_facts] whether the model's greedy answer (teacher-forced exact match, equivalent by
    induction) is the world's value, every fact prompted in `order`."""
    seqs = formats.render_in_weight(world, order=order)
    stats = sequence_stats(graphdef, params, seqs.tokens, seqs.loss_mask, seqs.value_mask)
    return np.asarray(stats["exact"])


def tool_answers(graphdef, params, world: FactWorld, order: str, store: Store) -> np.ndarray:
    """[n_facts] whether the model, decoding with `store` in the loop, answers the world's value."""
    spec = world.spec
    entity, attribute = formats.fact_index(spec)
    prompts = formats.prompt_tokens(world, entity, attribute, order)
    vocab = formats.Vocab.of(spec)
    decoded = greedy_decode(
        graphdef, params, prompts, vocab, spec.key_length, spec.value_length, store
    )
    return answered(decoded, formats.answer_tokens(world, entity, attribute))


def edit_store(store: Store, world: FactWorld, edits: EditSet) -> int:
    """Write the edits' new values into the store; the bytes of values written."""
    new = edited_world(world, edits)
    values = new.value_tokens()[edits.entity, edits.attribute]
    store.update(world.keys[edits.entity], edits.attribute, values)
    return int(values.size)  # one byte per stored value symbol


def edit_sequences(world: FactWorld, edits: EditSet) -> formats.Sequences:
    """The edited facts with their new values, key-first: what every weight method trains on."""
    return formats.weight_sequences(edited_world(world, edits), edits.entity, edits.attribute)


def finetune_task(
    world: FactWorld, edits: EditSet, replay: bool, general: formats.Sequences | None = None
) -> Task:
    """Fine-tuning data: the edited facts (new values), and with replay the unedited facts in
    both phrasings (old values), with `general` as many rows of general data (a base that
    learned them half and half), the edited rows repeated to make half of the rows; the
    monitor is the edited facts, so training stops when all of them answer the new value."""
    edited = edit_sequences(world, edits)
    bits = world.fact_bits()[edits.entity * world.spec.n_attributes + edits.attribute]
    train = edited
    if replay:
        keep = ~edited_mask(world, edits)
        entity, attribute = np.divmod(np.flatnonzero(keep), world.spec.n_attributes)
        old = [formats.weight_sequences(world, entity, attribute, o) for o in formats.ORDERS]
        if general is not None:
            rows = np.arange(2 * len(entity)) % len(general.tokens)
            old.append(formats.Sequences(*(getattr(general, f)[rows] for f in ARRAYS), 0))
        copies = -(-sum(len(o.tokens) for o in old) // edits.k)
        train = concat([*old, *[edited] * copies])
    return Task(train, edited, bits)


def sequence_flops(cfg: ModelConfig, length: int) -> int:
    """Matmul FLOPs of one forward pass over a sequence of `length` tokens (cost.py's count)."""
    return sum(flops_per_token(cfg, t) for t in range(length))


def changed_entries(before, after) -> int:
    """Parameter entries that differ (bitwise) between two parameter trees."""
    pairs = zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    return int(sum(np.sum(np.asarray(a) != np.asarray(b)) for a, b in pairs))
