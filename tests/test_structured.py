"""Structured worlds: values follow a rule on the key except with probability rule_alpha."""

import hashlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recall_bench.cli import main
from recall_bench.experiments.run import RunConfig, run
from recall_bench.experiments.sweep import group_name, parse_sweep
from recall_bench.worlds import FactSpec, SpecError, make_fact_world, spec_hash

# (spec, spec_hash, sha256 of keys and values) of worlds built before rule_alpha existed
BEFORE = [
    (FactSpec(n_entities=1000), "48157cfd9e847b41", "5661e47a3a6df58e"),
    (
        FactSpec(n_entities=300, attribute_sizes=(4096, 10), seed=3),
        "e4b6babdeeda3f06",
        "cb6c238583f09f17",
    ),
]


def arrays_hash(world) -> str:
    return hashlib.sha256(world.keys.tobytes() + world.values.tobytes()).hexdigest()[:16]


@pytest.mark.parametrize(("spec", "hashed", "arrays"), BEFORE)
def test_default_worlds_and_hashes_are_unchanged(spec, hashed, arrays):
    assert spec.rule_alpha is None
    assert spec_hash(spec) == hashed
    assert arrays_hash(make_fact_world(spec)) == arrays


def test_alpha_one_draws_the_random_worlds_values():
    """Exceptions take the random world's own uniform draws, so alpha = 1 is that world."""
    random = make_fact_world(FactSpec(n_entities=500, attribute_sizes=(4096, 10)))
    every = make_fact_world(FactSpec(n_entities=500, attribute_sizes=(4096, 10), rule_alpha=1))
    np.testing.assert_array_equal(every.values, random.values)
    assert spec_hash(every.spec) != spec_hash(random.spec)


def test_alpha_zero_every_value_is_the_rule():
    spec = FactSpec(n_entities=2000, attribute_sizes=(4096, 4096, 10), rule_alpha=0)
    world = make_fact_world(spec)
    np.testing.assert_array_equal(world.values, world.rule_values())
    assert world.follows_rule().all()
    digits = world.value_tokens()  # the rule by hand, where the value space is all digit pairs
    for a in (0, 1):
        for j in (0, 1):
            np.testing.assert_array_equal(digits[:, a, j], (world.keys[:, (a + j) % 4] + a) % 64)
    assert world.values[:, 2].max() < 10
    assert spec.entropy_bits == 0 and not world.fact_bits().any()


def test_half_exceptions_at_alpha_half_and_prefix_consistency():
    n = 20_000
    world = make_fact_world(FactSpec(n_entities=n, rule_alpha=0.5))
    rate = 1 - world.follows_rule().mean()
    expected = 0.5 * (1 - 1 / 4096)  # an exception equals the rule's value 1 time in 4096
    assert abs(rate - expected) < 5 * math.sqrt(0.25 / n)
    small = make_fact_world(FactSpec(n_entities=1000, rule_alpha=0.5))
    np.testing.assert_array_equal(world.keys[:1000], small.keys)
    np.testing.assert_array_equal(world.values[:1000], small.values)


def test_entropy_and_fact_bits_by_hand():
    """4 values, alpha 0.5: the rule's value has P = 0.5 + 0.5/4 = 0.625, each other 0.125."""
    spec = FactSpec(n_entities=200, attribute_sizes=(4,), value_length=1, rule_alpha=0.5)
    per_fact = -0.625 * math.log2(0.625) + 3 * 0.125 * 3
    assert spec.attribute_bits[0] == pytest.approx(per_fact, rel=1e-12)
    assert spec.entropy_bits == pytest.approx(200 * per_fact, rel=1e-12)
    world = make_fact_world(spec)
    follows = world.follows_rule()[:, 0]
    expected = np.where(follows, -math.log2(0.625), 3.0)
    np.testing.assert_allclose(world.fact_bits(), expected, rtol=1e-12)
    assert 0 < follows.sum() < 200
    full = FactSpec(n_entities=10, attribute_sizes=(4096, 1000), rule_alpha=1.0)
    np.testing.assert_allclose(full.attribute_bits, [12, math.log2(1000)], rtol=1e-12)


@settings(max_examples=80, deadline=None)
@given(
    alpha=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not 0 <= x <= 1),
        st.integers().filter(lambda x: x not in (0, 1)),
        st.booleans(),
        st.text(max_size=4),
    )
)
def test_invalid_alpha_is_a_spec_error(alpha):
    with pytest.raises(SpecError, match="rule_alpha"):
        FactSpec(n_entities=10, rule_alpha=alpha)


@settings(max_examples=30, deadline=None)
@given(alpha=st.floats(0, 1))
def test_valid_alpha_builds(alpha):
    world = make_fact_world(FactSpec(n_entities=50, attribute_sizes=(4096, 3), rule_alpha=alpha))
    follows = world.follows_rule()
    bits = world.fact_bits().reshape(50, 2)
    for a, size in enumerate((4096, 3)):
        p_rule, p_other = 1 - alpha + alpha / size, alpha / size
        with np.errstate(divide="ignore"):  # p_other is 0 at alpha 0: no exception exists
            want = np.where(follows[:, a], -np.log2(p_rule), -np.log2(p_other))
        np.testing.assert_allclose(bits[:, a], want, rtol=1e-9, atol=1e-12)


def test_cli_and_sweep_reject_alpha_outside_0_1(capsys):
    code = main(["run", "--mode", "in-weight", "--facts", "64", "--rule-alpha", "1.5"])
    assert code == 2 and "rule_alpha" in capsys.readouterr().err
    grid = {"grid": [{"mode": "in-weight", "rule_alpha": [0.1, 0.5], "n_facts": 64}]}
    names = {group_name(c) for c in parse_sweep(grid, "s").cells}
    assert names == {"in-weight-a0.1-n64-L2-d32-float32", "in-weight-a0.5-n64-L2-d32-float32"}
    with pytest.raises(ValueError, match="rule_alpha"):
        parse_sweep({"grid": [{"mode": "in-weight", "rule_alpha": 2}]}, "s")


def test_one_layer_model_learns_the_rule_and_answers_it_for_unseen_entities():
    """16 values of one token: chance is 1/16; the rule is one attention hop (copy key[0])."""
    cfg = RunConfig(
        mode="in-weight",
        n_facts=512,
        layers=1,
        width=16,
        heads=2,
        steps=300,
        attribute_sizes=(16,),
        key_length=3,
        key_alphabet=16,
        value_length=1,
        value_alphabet=16,
        rule_alpha=0.0,
    )
    m = run(cfg, progress=False)["metrics"]
    assert m["held_out_facts"] == 512
    assert m["held_out_rule_accuracy"] > 0.5
    assert m["held_out_accuracy"] == m["held_out_rule_accuracy"]  # alpha 0: the rule is the truth
    assert m["recall_rule"] == m["recall"] and m["recall_exceptions"] is None
    assert m["bits_memorized_exceptions"] == 0 == m["bits_memorized"]  # no exceptions, 0 bits
