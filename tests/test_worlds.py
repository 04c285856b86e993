import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recall_bench.worlds import (
    FactSpec,
    SpecError,
    TokenSpec,
    load_fact_world,
    make_fact_world,
    make_token_world,
    save_fact_world,
    spec_hash,
)


def test_same_spec_and_seed_give_identical_arrays():
    spec = FactSpec(n_entities=500, attribute_sizes=(4096, 1000))
    a, b = make_fact_world(spec), make_fact_world(spec)
    np.testing.assert_array_equal(a.keys, b.keys)
    np.testing.assert_array_equal(a.values, b.values)
    c = make_fact_world(FactSpec(n_entities=500, attribute_sizes=(4096, 1000), seed=1))
    assert not np.array_equal(a.keys, c.keys)
    assert spec_hash(spec) == spec_hash(FactSpec(n_entities=500, attribute_sizes=[4096, 1000]))
    assert spec_hash(spec) != spec_hash(c.spec)


def test_keys_unique_values_in_range():
    world = make_fact_world(FactSpec(n_entities=5000, attribute_sizes=(7, 4096), key_length=3))
    assert len(np.unique(world.keys, axis=0)) == 5000
    assert world.keys.min() >= 0 and world.keys.max() < 64
    assert world.values[:, 0].max() < 7 and world.values[:, 1].max() < 4096
    digits = world.value_tokens()
    np.testing.assert_array_equal(digits[..., 0] * 64 + digits[..., 1], world.values)


def test_worlds_are_prefix_consistent():
    small = make_fact_world(FactSpec(n_entities=1000))
    large = make_fact_world(FactSpec(n_entities=100_000))
    np.testing.assert_array_equal(large.keys[:1000], small.keys)
    np.testing.assert_array_equal(large.values[:1000], small.values)


def test_entropy_is_exact_for_mixed_value_spaces():
    spec = FactSpec(n_entities=10, attribute_sizes=(4096, 1000, 2))
    assert spec.n_facts == 30
    expected = 10 * (12 + math.log2(1000) + 1)
    assert spec.entropy_bits == pytest.approx(expected, rel=1e-12)
    assert spec.bits_per_fact == pytest.approx(expected / 30, rel=1e-12)
    world = make_fact_world(spec)
    assert world.fact_bits().sum() == pytest.approx(expected, rel=1e-12)


def test_key_space_too_small_is_a_clear_error():
    with pytest.raises(SpecError, match="key space"):
        FactSpec(n_entities=17, key_length=2, key_alphabet=4)
    make_fact_world(FactSpec(n_entities=16, key_length=2, key_alphabet=4))  # exactly full


def test_value_space_must_fit_the_value_tokens():
    with pytest.raises(SpecError, match=r"attribute_sizes\[0\]"):
        FactSpec(n_entities=10, attribute_sizes=(5000,))


def test_save_and_load_round_trip(tmp_path):
    world = make_fact_world(FactSpec(n_entities=300, attribute_sizes=(4096, 10), seed=3))
    path = save_fact_world(world, tmp_path / "world.npz")
    loaded = load_fact_world(path)
    assert loaded.spec == world.spec
    np.testing.assert_array_equal(loaded.keys, world.keys)
    np.testing.assert_array_equal(loaded.values, world.values)
    assert [p.name for p in tmp_path.iterdir()] == ["world.npz"]


def test_token_world_entropy():
    spec = TokenSpec(n_sequences=8, length=64, vocab=2048)
    assert spec.bits_per_sequence == 63 * 11
    tokens = make_token_world(spec)
    assert tokens.shape == (8, 64) and tokens.max() < 2048
    np.testing.assert_array_equal(tokens, make_token_world(spec))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(-3, 300),
    sizes=st.lists(st.integers(-2, 5000), min_size=0, max_size=3),
    key_length=st.integers(-1, 4),
    key_alphabet=st.integers(-1, 8),
)
def test_spec_validation_never_crashes(n, sizes, key_length, key_alphabet):
    try:
        spec = FactSpec(
            n_entities=n,
            attribute_sizes=tuple(sizes),
            key_length=key_length,
            key_alphabet=key_alphabet,
        )
    except SpecError as err:
        assert str(err)
        return
    world = make_fact_world(spec)
    assert len(np.unique(world.keys, axis=0)) == n
