"""Old knowledge (docs/design.md §8): a second set of facts a base model learns in its weights
before any new facts arrive, so that what later training costs it can be counted in recall
and bits, like any other fact set.

The old facts are a world of the run's spec with a seed of its own (the run's seed plus
OLD_SEED), rendered in-weight. Its keys and a new world's are drawn independently, so they
coincide only by chance (about n_old * N / key_space entities); key_overlap counts them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recall_bench import formats, streams
from recall_bench.experiments.config import RunConfig
from recall_bench.formats import Sequences
from recall_bench.metrics import bits_memorized
from recall_bench.worlds import FactWorld, make_fact_world

OLD_SEED = streams.OLD_FACTS_OFFSET  # the old facts' world seed: the run's seed plus this


def old_world(cfg: RunConfig, seed: int) -> FactWorld:
    """cfg.n_facts old facts, of cfg's spec, drawn with their own seed."""
    return make_fact_world(dataclasses.replace(cfg.spec, seed=seed + OLD_SEED))


def old_rows(world: FactWorld) -> Sequences:
    """Every old fact, rendered in-weight (`key attribute -> value EOS`)."""
    return formats.render(world, "in-weight")


def old_scores(stats: dict[str, np.ndarray], world: FactWorld) -> dict[str, float]:
    """old_recall (teacher-forced exact match, which greedy decoding reproduces) and old_bits
    (bits memorized, clipped per fact) from the sequence stats of old_rows(world)."""
    return {
        "old_recall": float(np.mean(stats["exact"])),
        "old_bits": bits_memorized(stats["value_nll_bits"], world.fact_bits()),
    }


def key_overlap(old: FactWorld, new: FactWorld) -> int:
    """Entities of `new` whose key the old world also has (with other values, by chance)."""
    keys = {k.tobytes() for k in old.keys}
    return int(sum(k.tobytes() in keys for k in new.keys))
