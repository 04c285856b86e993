"""Random streams are named once (recall_bench/streams.py), with the integers every
committed record was drawn with."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from recall_bench import streams
from recall_bench.worlds import FactSpec, make_fact_world

PACKAGE = Path(streams.__file__).parent


def test_tags_keep_the_values_every_record_was_drawn_with() -> None:
    tags = {k: v for k, v in vars(streams).items() if k.isupper()}
    assert tags == {
        "WORLD_KEYS": 0,
        "WORLD_VALUES": 1,
        "TOKEN_WORLD": 2,
        "MONITOR_ROWS": 3,
        "RULE_EXCEPTIONS": 4,
        "SUITE_PROMPTS": 4,
        "STORE_SAMPLE": 4,
        "SUITE_ORDER": 5,
        "TEXT_WINDOWS": 6,
        "ZIPF_ORDER": 7,
        "CONSOLIDATION_ORDER": 8,
        "EDIT_TARGETS": 20,
        "PROBE_ENTITIES": 9,
        "PROBE_REMOVAL": 11,
        "PROBE_GRADIENTS": 13,
        "PROBE_MEMORY_ROWS": 15,
        "BATCH_OFFSET": 1_000_003,
        "HELD_OUT_OFFSET": 1 << 20,
        "PROTOCOL_OFFSET": 1 << 24,
        "OLD_FACTS_OFFSET": 1 << 25,
        "NEW_FACTS_OFFSET": 2 << 24,
        "CONSOLIDATION_OLD_OFFSET": 3 << 24,
        "CONSOLIDATION_BATCH_OFFSET": 2_000_003,
    }
    spec = FactSpec(n_entities=5, attribute_sizes=(64, 64), seed=7)
    values = np.random.default_rng([7, 1, 1]).integers(0, 64, 5)  # as drawn before the names
    np.testing.assert_array_equal(make_fact_world(spec).values[:, 1], values)


def test_no_module_but_streams_seeds_a_numpy_generator_with_a_tag() -> None:
    pattern = re.compile(r"default_rng\(\[|PRNGKey\([^)]*\+ *\d")
    found = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "streams.py" and pattern.search(p.read_text())
    ]
    assert found == []
