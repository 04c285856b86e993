import math

import jax.numpy as jnp
import numpy as np
import pytest

from recall_bench.metrics import (
    bits_memorized,
    kl_tv,
    sequence_stats,
    stats_from_logits,
    summarize_in_weight,
)
from recall_bench.model import ModelConfig, apply, init_model


def logits_for(probs_of_target, vocab=4, target=1):
    """Logits whose softmax gives `p` to `target` and the rest spread evenly."""
    out = []
    for p in probs_of_target:
        row = np.full(vocab, (1 - p) / (vocab - 1))
        row[target] = p
        out.append(np.log(row))
    return np.array(out, np.float32)


def test_bits_memorized_by_hand():
    # Three facts of 12 bits, two value tokens each (positions 1 and 2; position 3 is EOS).
    # fact A: p = 1/2 and 1/4 -> NLL 1 + 2 = 3 bits -> 9 bits memorized
    # fact B: p = 1/64 and 1/64 -> NLL 12 bits -> 0
    # fact C: p = 1/256 and 1/256 -> NLL 16 bits > 12 -> clipped to 0 (never -4)
    probs = {"A": (0.5, 0.25), "B": (1 / 64, 1 / 64), "C": (1 / 256, 1 / 256)}
    tokens = np.array([[0, 1, 1, 1]] * 3)
    logits = np.stack([logits_for([*p, 0.9], vocab=512) for p in probs.values()])
    value_mask = np.array([[0, 1, 1, 0]] * 3, np.float32)
    loss_mask = np.array([[0, 1, 1, 1]] * 3, np.float32)
    stats = stats_from_logits(jnp.asarray(logits), tokens, loss_mask, value_mask)
    nll = np.asarray(stats["value_nll_bits"])
    np.testing.assert_allclose(nll, [3.0, 12.0, 16.0], rtol=1e-5)
    assert bits_memorized(nll, np.full(3, 12.0)) == pytest.approx(9.0, rel=1e-5)
    # clipping is per fact, not per token: A's second token alone costs 2 bits but counts
    assert bits_memorized(np.array([13.0, 11.0]), np.array([12.0, 12.0])) == pytest.approx(1.0)
    assert np.asarray(stats["value_correct"]).tolist() == [2, 2, 2]  # still each argmax


def test_exact_means_every_loss_token_is_the_argmax():
    tokens = np.array([[0, 1, 1], [0, 1, 1]])
    logits = np.stack([logits_for([0.9, 0.9]), logits_for([0.9, 0.1])])
    mask = np.array([[0, 1, 1]] * 2, np.float32)
    stats = stats_from_logits(jnp.asarray(logits), tokens, mask, mask)
    assert np.asarray(stats["exact"]).tolist() == [True, False]


def test_kl_and_tv_by_hand():
    p = np.array([[0.5, 0.25, 0.25]])
    q = np.array([[0.25, 0.25, 0.5]])
    kl, tv = kl_tv(jnp.log(p)[None], jnp.log(q)[None], jnp.ones((1, 1)))
    # KL = 0.5 ln 2 + 0 + 0.25 ln 0.5 = 0.25 ln 2; TV = 0.5 (0.25 + 0 + 0.25) = 0.25
    assert kl == pytest.approx(0.25 * math.log(2), rel=1e-5)
    assert tv == pytest.approx(0.25, rel=1e-5)
    kl0, tv0 = kl_tv(jnp.log(p)[None], jnp.log(p)[None], jnp.ones((1, 1)))
    assert kl0 == pytest.approx(0.0, abs=1e-7) and tv0 == pytest.approx(0.0, abs=1e-7)


def test_streamed_stats_equal_one_block():
    """Blocks of 3 rows (a ragged last block) give the same stats as one block of all."""
    from recall_bench.experiments.run import RunConfig, make_task
    from recall_bench.metrics import sequence_stats
    from recall_bench.model import init_model
    from recall_bench.worlds import make_fact_world

    cfg = RunConfig(n_facts=40, layers=1, width=16, heads=2)
    seqs = make_task(cfg, make_fact_world(cfg.spec)).train
    graphdef, params = init_model(cfg.model_config(), 0)
    args = (graphdef, params, seqs.tokens, seqs.loss_mask, seqs.value_mask)
    whole, streamed = sequence_stats(*args, block=40), sequence_stats(*args, block=3)
    for key, value in whole.items():
        np.testing.assert_allclose(streamed[key], value, rtol=1e-6, err_msg=key)


def test_evaluation_blocks_bound_the_logits():
    """Morris's shape (V=2048, S=64): the default block keeps logits under the budget."""
    from recall_bench import metrics
    from recall_bench.model import ModelConfig, init_model

    graphdef, params = init_model(
        ModelConfig(vocab_size=2048, max_len=64, layers=1, width=32, heads=4), 0
    )
    tokens = np.zeros((4096, 64), np.int32)
    rows = metrics.rows_per_block(graphdef, params, tokens)
    assert rows * 63 * 2048 <= metrics.LOGITS_PER_BLOCK and rows >= 128


def test_noise_floor_of_a_model_that_saw_nothing_is_about_all_it_holds():
    """A model trained on one world "memorizes" bits of another world it never saw (per-fact
    clipping keeps its lucky guesses); the floor measured on unseen entities takes them off."""
    import dataclasses

    from recall_bench.experiments.config import RunConfig, make_task
    from recall_bench.experiments.evaluate import noise_floor_metrics
    from recall_bench.formats import render
    from recall_bench.metrics import bits_memorized, sequence_stats
    from recall_bench.train import train_models
    from recall_bench.worlds import make_fact_world

    cfg = RunConfig(n_facts=512, layers=1, width=16, heads=2, steps=300, attribute_sizes=(64,))
    world = make_fact_world(cfg.spec)
    result = train_models(
        cfg.model_config(), cfg.train_config(), [make_task(cfg, world)], [0], progress=False
    )
    graphdef, params = result.graphdef, result.model(0)
    unseen_cfg = dataclasses.replace(cfg, seed=1)  # another world: nothing of it was trained
    unseen = make_fact_world(unseen_cfg.spec)
    seqs = render(unseen, "in-weight")
    stats = sequence_stats(graphdef, params, seqs.tokens, seqs.loss_mask, seqs.value_mask)
    bits = bits_memorized(stats["value_nll_bits"], unseen.fact_bits())
    assert bits > 20  # the positive bias of clipping per fact
    floor = noise_floor_metrics(unseen_cfg, unseen, graphdef, params, bits)
    assert floor["noise_floor_bits_per_fact"] * 512 == pytest.approx(bits, rel=0.25)
    assert floor["bits_memorized_corrected"] < 0.25 * bits
    seqs = render(world, "in-weight")  # the trained world: most of what it holds is real
    stats = sequence_stats(graphdef, params, seqs.tokens, seqs.loss_mask, seqs.value_mask)
    held = bits_memorized(stats["value_nll_bits"], world.fact_bits())
    trained = noise_floor_metrics(cfg, world, graphdef, params, held)
    assert trained["bits_memorized_corrected"] > 0.9 * held > 10 * bits


def reference_kl_tv(p_logits, q_logits, mask):
    """KL(p || q) and TV per position in float64, averaged over the masked positions."""
    p_logits, q_logits = (np.asarray(x, np.float64) for x in (p_logits, q_logits))
    p = np.exp(p_logits - p_logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.exp(q_logits - q_logits.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    tv = 0.5 * np.abs(p - q).sum(-1)
    return (kl * mask).sum() / mask.sum(), (tv * mask).sum() / mask.sum()


def test_kl_and_tv_over_rows_positions_and_a_mask():
    """2 rows x 3 positions x 5 tokens (no axis of the same length), 4 masked-in positions;
    logits in bfloat16 are scored in float32; an empty mask gives 0, not NaN."""
    rng = np.random.default_rng(0)
    p, q = rng.normal(size=(2, 2, 3, 5)) * 3
    mask = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    kl, tv = kl_tv(jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32), jnp.asarray(mask))
    want_kl, want_tv = reference_kl_tv(p, q, mask)
    assert kl == pytest.approx(want_kl, rel=1e-5) and tv == pytest.approx(want_tv, rel=1e-5)
    assert kl > 0.1 and 0.1 < tv < 1.0
    p16, q16 = jnp.asarray(p, jnp.bfloat16), jnp.asarray(q, jnp.bfloat16)
    kl, tv = kl_tv(p16, q16, jnp.asarray(mask))
    want_kl, want_tv = reference_kl_tv(p16.astype(jnp.float32), q16.astype(jnp.float32), mask)
    assert kl == pytest.approx(want_kl, rel=1e-5) and tv == pytest.approx(want_tv, rel=1e-5)
    assert kl_tv(jnp.asarray(p), jnp.asarray(q), jnp.zeros((2, 3))) == (0.0, 0.0)


def test_sequence_stats_in_blocks_equal_one_pass():
    """Blocks (the last one padded) give the stats of one teacher-forced pass, row by row."""
    cfg = ModelConfig(vocab_size=12, max_len=6, layers=1, width=8, heads=2)
    graphdef, params = init_model(cfg, 0)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 12, (7, 6)).astype(np.int32)
    loss_mask = (rng.random((7, 6)) < 0.7).astype(np.float32)
    value_mask = loss_mask * (rng.random((7, 6)) < 0.6)
    logits = apply(graphdef, params, jnp.asarray(tokens[:, :-1]))
    whole = stats_from_logits(logits, tokens, loss_mask, value_mask)
    for block in (3, 7, 4096):
        got = sequence_stats(graphdef, params, tokens, loss_mask, value_mask, block=block)
        assert set(got) == {"exact", "value_correct", "value_nll_bits", "loss_sum"}
        for key, value in got.items():
            assert value.shape == (7,), key
            np.testing.assert_allclose(value, whole[key], rtol=1e-5, err_msg=key)


def test_stats_from_logits_by_hand():
    """Row 0 right everywhere; row 1 wrong on its second value token; the masks decide
    which positions count (the first token is never a target)."""
    tokens = np.array([[0, 1, 2, 3], [0, 1, 2, 3]])
    logits = np.full((2, 3, 4), np.log(0.1), np.float32)
    logits[0, [0, 1, 2], [1, 2, 3]] = np.log(0.7)  # p(target) = 0.7 at every position
    logits[1, [0, 1, 2], [1, 0, 3]] = np.log(0.7)  # position 2's target 2 gets 0.1
    loss_mask = np.array([[1, 0, 1, 1]] * 2, np.float32)  # column 0 is dropped
    value_mask = np.array([[0, 0, 1, 1]] * 2, np.float32)
    stats = {
        k: np.asarray(v)
        for k, v in stats_from_logits(logits, tokens, loss_mask, value_mask).items()
    }
    assert stats["exact"].tolist() == [True, False]
    assert stats["value_correct"].tolist() == [2, 1]
    nll7, nll1 = -np.log(0.7 / 1.0), -np.log(0.1 / 1.0)
    np.testing.assert_allclose(
        stats["value_nll_bits"], [2 * nll7 / math.log(2), (nll7 + nll1) / math.log(2)], rtol=1e-5
    )
    np.testing.assert_allclose(stats["loss_sum"], [2 * nll7, nll7 + nll1], rtol=1e-5)
    assert stats["value_nll_bits"].dtype == np.float32
    loss_mask[:, 1] = 1  # now position 1 (target 1 of row 0 and 1 of row 1) counts too
    stats = stats_from_logits(logits, tokens, loss_mask, value_mask)
    np.testing.assert_allclose(stats["loss_sum"], [3 * nll7, 2 * nll7 + nll1], rtol=1e-5)


def test_summarize_in_weight_by_hand():
    stats = {
        "exact": np.array([True, False, True, False]),
        "value_correct": np.array([2, 1, 2, 0]),
        "value_nll_bits": np.array([1.0, 13.0, 0.5, 20.0]),
    }
    value_mask = np.array([[0, 1, 1, 0]] * 4, np.float32)
    out = summarize_in_weight(stats, value_mask, np.full(4, 12.0), 100, 50)
    assert out == {
        "recall": 0.5,
        "token_accuracy": 5 / 8,
        "bits_memorized": 22.5,  # 11 + 0 + 11.5 + 0
        "bits_per_param": 0.225,
        "bits_per_param_non_embedding": 0.45,
        "value_nll_bits": 8.625,
    }
