"""The general suite: generators are deterministic, answers are right, test prompts are held
out, and KL/TV match values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recall_bench import general
from recall_bench.formats import BOS, EOS, PAD, Vocab
from recall_bench.metrics import kl_tv

VOCAB = Vocab(1, 64, 64)
SMALL = general.SuiteConfig(train_per_skill=300, test_per_skill=40)

data_rows = st.integers(1, 20).flatmap(
    lambda n: st.lists(st.lists(st.integers(0, 9), min_size=6, max_size=6), min_size=n, max_size=n)
)


def test_kl_tv_by_hand():
    # position 0: p = (1/2, 1/4, 1/4), q = (1/4, 1/2, 1/4):
    #   KL = 1/2 ln 2 + 1/4 ln(1/2) = 1/4 ln 2; TV = (1/4 + 1/4) / 2 = 1/4
    # position 1: p = (1/3, 1/3, 1/3), q = (1/2, 1/4, 1/4):
    #   KL = 1/3 (ln(2/3) + 2 ln(4/3)) = 1/3 ln(32/27); TV = (1/6 + 1/12 + 1/12) / 2 = 1/6
    # position 2 differs wildly but is masked out.
    p = np.log([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3], [0.98, 0.01, 0.01]]])
    q = np.log([[[0.25, 0.5, 0.25], [0.5, 0.25, 0.25], [0.01, 0.01, 0.98]]]) + 7.0  # shift-free
    kl, tv = kl_tv(p, q, np.array([[1.0, 1.0, 0.0]]))
    assert kl == pytest.approx((0.25 * math.log(2) + math.log(32 / 27) / 3) / 2, rel=1e-5)
    assert tv == pytest.approx((1 / 4 + 1 / 6) / 2, rel=1e-5)
    assert kl_tv(p, p, np.ones((1, 3))) == pytest.approx((0.0, 0.0), abs=1e-7)


def test_suite_is_deterministic_and_held_out():
    a, b = general.make_suite(SMALL, VOCAB), general.make_suite(SMALL, VOCAB)
    np.testing.assert_array_equal(a.train.tokens, b.train.tokens)
    np.testing.assert_array_equal(a.train.loss_mask, b.train.loss_mask)
    for skill in SMALL.skills:
        np.testing.assert_array_equal(a.test[skill].tokens, b.test[skill].tokens)
    other = general.make_suite(general.SuiteConfig(train_per_skill=300, seed=1), VOCAB)
    assert not np.array_equal(a.train.tokens, other.train.tokens)
    assert a.train.tokens.shape[1] == SMALL.width <= 20  # fits the default position table
    train_prompts = {tuple(row[: row.tolist().index(general.SEP)]) for row in a.train.tokens}
    for seqs in a.test.values():
        assert not {tuple(r[: seqs.prompt_length - 1]) for r in seqs.tokens} & train_prompts


def test_rendering_roundtrip():
    suite = general.make_suite(SMALL, VOCAB)
    for skill, seqs in suite.test.items():
        p = seqs.prompt_length
        assert (seqs.tokens[:, 0] == BOS).all() and (
            seqs.tokens[:, 1] == general.MARKERS[skill]
        ).all()
        assert (seqs.tokens[:, p - 1] == general.SEP).all()
        data = seqs.tokens[:, 2 : p - 1] - VOCAB.value_offset
        expected = general.answers(skill, data)
        for row, mask, want in zip(seqs.tokens, seqs.loss_mask, expected, strict=True):
            n = int((want >= 0).sum())
            np.testing.assert_array_equal(row[p : p + n] - VOCAB.value_offset, want[:n])
            assert row[p + n] == EOS and (row[p + n + 1 :] == PAD).all()
            assert mask[p : p + n + 1].all() and mask.sum() == n + 1  # loss on answer and EOS


@settings(max_examples=50, deadline=None)
@given(data_rows)
def test_answers_are_right(rows):
    data = np.asarray(rows, np.int64)
    np.testing.assert_array_equal(general.answers("copy", data), data)
    np.testing.assert_array_equal(general.answers("reverse", data)[:, ::-1], data)
    ordered = general.answers("sort", data)
    assert (np.diff(ordered, axis=1) >= 0).all()
    np.testing.assert_array_equal(np.sort(data, axis=1), np.sort(ordered, axis=1))
    total = general.answers("add", data)
    for row, out in zip(data, total, strict=True):
        assert [(a + b) % 10 for a, b in zip(row[:3], row[3:], strict=True)] == out.tolist()


def balanced(symbols) -> bool:
    stack = []
    for s in symbols:
        if s in general.OPEN:
            stack.append(s + 2)
        elif not stack or stack.pop() != s:
            return False
    return not stack


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12))
def test_brackets(seed, length):
    data = general.bracket_prompts(np.random.default_rng(seed), 50, length)
    closers = general.answers("brackets", data)
    for row, out in zip(data, closers, strict=True):
        out = out[out >= 0]
        assert set(out.tolist()) <= set(general.CLOSE)  # only closers
        assert balanced([*row.tolist(), *out.tolist()])  # they balance the prefix exactly


def test_bad_config():
    with pytest.raises(ValueError, match="skills"):
        general.SuiteConfig(skills=("copy", "juggle"))
    with pytest.raises(ValueError, match="symbols"):
        general.make_suite(general.SuiteConfig(symbols=100), VOCAB)
