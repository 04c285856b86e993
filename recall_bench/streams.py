"""Random streams, named once. Every seeded draw is numpy's default_rng([seed, TAG, ...])
of a tag below, a JAX key of seed + BATCH_OFFSET, or a world seeded seed + an offset below;
no other file writes these integers. They are fixed: changing one changes every world,
split or sample drawn from it (and the golden records).

Tag 4 is shared by three streams, told apart by what follows it (an attribute index, a
skill index and 0/1, a store size); the values are kept so that every number stays as it was.
"""

from __future__ import annotations

import numpy as np

WORLD_KEYS = 0  # fact worlds: the entity keys (of spec.seed)
WORLD_VALUES = 1  # fact worlds: the values, then the attribute index
TOKEN_WORLD = 2  # random-token worlds: the sequences
MONITOR_ROWS = 3  # the training rows the stopping rule watches (in-weight, random tokens)
RULE_EXCEPTIONS = 4  # structured worlds: which values are exceptions, then the attribute index
SUITE_PROMPTS = 4  # general suite: then the skill index, then 0 (train) or 1 (test)
STORE_SAMPLE = 4  # store-scale: then the store size; the entities evaluated at that size
SUITE_ORDER = 5  # general suite: the order of the merged training rows
TEXT_WINDOWS = 6  # general suite: where the text file's training windows start
ZIPF_ORDER = 7  # joint protocol: which fact gets which Zipf rank
CONSOLIDATION_ORDER = 8  # consolidation: then the mixture part; the order of its rows
EDIT_TARGETS = 20  # edits: which facts change, and their new values
PROBE_ENTITIES = 9  # probe: the sampled entities
PROBE_REMOVAL = 11  # probe: the order of the random weight removal
PROBE_GRADIENTS = 13  # probe: the facts whose gradient norms are averaged
PROBE_MEMORY_ROWS = 15  # probe: the order of the random removal of side-memory rows

BATCH_OFFSET = 1_000_003  # training batches: jax.random.PRNGKey(seed + BATCH_OFFSET)
HELD_OUT_OFFSET = 1 << 20  # random-token held-out sequences: a world of seed + this
PROTOCOL_OFFSET = 1 << 24  # the in-tool protocol pool: a world of seed + this
OLD_FACTS_OFFSET = 1 << 25  # tool-base: the base's old facts, a world of seed + this
NEW_FACTS_OFFSET = (
    2 << 24
)  # consolidation: the new facts (equal to OLD_FACTS_OFFSET; another experiment)
CONSOLIDATION_OLD_OFFSET = 3 << 24  # consolidation: the base's old facts
CONSOLIDATION_BATCH_OFFSET = 2_000_003  # consolidation: jax.random.PRNGKey(seed + this)


def generator(seed: int, tag: int, *more: int) -> np.random.Generator:
    """numpy's generator of one named stream: default_rng([seed, tag, *more])."""
    return np.random.default_rng([seed, tag, *more])
