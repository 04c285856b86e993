"""The general suite: generators are deterministic, answers are right, test prompts are held
out, and KL/TV match values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recall_bench import divergences, general, natural_text
from recall_bench.formats import BOS, EOS, PAD, Vocab
from recall_bench.metrics import kl_tv, stats_from_logits

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


TEXT = ("Un texte d'essai, é ü — 字 🙂. " * 12).encode()  # 468 bytes, multi-byte characters


def text_suite(tmp_path, **fields) -> general.SuiteConfig:
    path = tmp_path / "text.md"
    path.write_bytes(TEXT)
    return general.SuiteConfig(train_per_skill=30, test_per_skill=8, text_file=str(path), **fields)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=natural_text.TEXT_WINDOW, max_size=64))
def test_nibbles_roundtrip(data):
    halves = natural_text.nibbles(np.frombuffer(data, np.uint8))
    assert halves.min() >= 0 and halves.max() < natural_text.NIBBLES
    assert bytes(((halves[0::2] << 4) | halves[1::2]).tolist()) == data
    starts = np.arange(len(data) - natural_text.TEXT_WINDOW + 1)
    seqs = natural_text.render_text(data, starts, VOCAB, 20)
    assert (seqs.tokens[:, :2] == [BOS, natural_text.TEXT]).all()
    assert seqs.loss_mask.sum(axis=1).tolist() == [2 * natural_text.TEXT_WINDOW] * len(starts)
    for start, row in zip(starts, seqs.tokens[:, 2:] - VOCAB.value_offset, strict=True):
        assert (
            bytes(((row[0::2] << 4) | row[1::2]).tolist())
            == data[start : start + natural_text.TEXT_WINDOW]
        )


@settings(max_examples=50, deadline=None)
@given(st.integers(200, 5000), st.sampled_from([0.05, 0.1, 0.5]), st.integers(0, 9))
def test_text_windows_held_out_tile_the_tail(n_bytes, held_out, seed):
    cfg = general.SuiteConfig(text_held_out=held_out, text_train_windows=500, seed=seed)
    train, held = general.text_offsets(n_bytes, cfg)
    split, w = natural_text.text_split(n_bytes, held_out), natural_text.TEXT_WINDOW
    assert len(train) == 500 and train.min() >= 0 and (train + w <= split).all()  # no overlap
    assert held[0] == split and (np.diff(held) == w).all()  # tiling from the split on
    assert 0 <= n_bytes - (held[-1] + w) < w  # to the end, but for a short remainder


def test_uniform_nibbles_score_eight_bits_per_byte():
    data = np.random.default_rng(0).integers(0, 256, 90, np.uint8).tobytes()
    seqs = natural_text.render_text(data, np.arange(0, 81, 9), VOCAB, 20)
    logits = np.full((*seqs.tokens[:, :-1].shape, VOCAB.size), -1e9, np.float32)
    logits[..., VOCAB.value_offset : VOCAB.value_offset + 16] = 0.0  # uniform over nibbles
    stats = stats_from_logits(logits, seqs.tokens, seqs.loss_mask, seqs.value_mask)
    scores = natural_text.text_score({k: np.asarray(v) for k, v in stats.items()}, seqs)
    assert scores["text_bits_per_byte"] == pytest.approx(8.0, rel=1e-6)
    assert scores["text_loss"] == pytest.approx(math.log(16), rel=1e-6)


def test_text_suite(tmp_path):
    cfg = text_suite(tmp_path)
    assert cfg.text_bytes == len(TEXT) and cfg.width == 20
    suite = general.make_suite(cfg, VOCAB)
    n_held = (len(TEXT) - natural_text.text_split(len(TEXT), 0.1)) // natural_text.TEXT_WINDOW
    assert suite.text.tokens.shape == (n_held, 20) and set(suite.test) == set(general.SKILLS)
    rows = suite.train.tokens[:, 1] == natural_text.TEXT
    assert rows.sum() == cfg.text_train_windows
    assert "text_file" in cfg.key() and "text_file" not in general.SuiteConfig().key()


def test_bad_text_files(tmp_path):
    with pytest.raises(ValueError, match=r"'.*nowhere.md' cannot be read .*give the path"):
        general.SuiteConfig(text_file=str(tmp_path / "nowhere.md"))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café ".encode("latin-1") * 40)
    with pytest.raises(ValueError, match=r"latin1.txt' is not valid UTF-8 .* at byte 3"):
        general.SuiteConfig(text_file=str(latin))
    short = tmp_path / "short.txt"
    short.write_bytes(b"a few words, no more than that")
    with pytest.raises(ValueError, match=r"short.txt' has 30 bytes: too short .* at least 95"):
        general.SuiteConfig(text_file=str(short))
    with pytest.raises(ValueError, match="text_held_out"):
        text_suite(tmp_path, text_held_out=1.0)
    cfg = text_suite(tmp_path)
    (tmp_path / "text.md").write_bytes(TEXT.replace(b"essai", b"ESSAI"))
    with pytest.raises(ValueError, match="changed after"):
        general.make_suite(cfg, VOCAB)


def test_choice_accuracy_by_hand():
    nll = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 3.0, 4.0], [1.0, 1.0, 3.0, 4.0], [5.0] * 4])
    np.testing.assert_allclose(general.choice_accuracy(nll), [1.0, 0.0, 0.5, 0.25])


def test_chance_normalisation():
    assert general.above_chance(0.625, 1.0, 0.25) == pytest.approx(0.5)
    assert general.above_chance(0.25, 0.85, 0.25) == 0.0
    assert general.above_chance(0.1, 0.85, 0.25) < 0.0  # below chance: negative retention
    assert math.isnan(general.above_chance(0.5, 0.25, 0.25))  # a base at chance holds nothing


def fake_scorer(logits_of):
    """A scorer from hand-made logits: logits_of(tokens [n, L]) -> [n, L-1, V] next-token
    logits; the summed NLL of the loss-masked targets, as the model's scorer computes it."""

    def nll(seqs):
        logits = logits_of(seqs.tokens)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        picked = np.take_along_axis(logp, seqs.tokens[:, 1:, None], -1)[..., 0]
        return -(picked * seqs.loss_mask[:, 1:]).sum(1)

    return nll


def test_graded_score_on_hand_made_logits():
    suite = general.make_suite(SMALL, VOCAB)
    choices = suite.choices["copy"]
    k = SMALL.distractors + 1
    assert len(choices.tokens) == k * len(suite.test["copy"].tokens)
    np.testing.assert_array_equal(choices.tokens[::k], suite.test["copy"].tokens)
    # uniform logits: every copy answer has the same length, so all tie: exactly chance
    uniform = general.graded_score(fake_scorer(lambda t: np.zeros((*t[:, 1:].shape, 160))), suite)
    assert uniform["copy_mc_accuracy"] == pytest.approx(1 / k)

    def copier(tokens):  # puts 4 nats more on the data symbol being copied at each position
        p = SMALL.length + 3
        logits = np.zeros((*tokens[:, 1:].shape, 160))
        rows = np.arange(len(tokens))[:, None]
        cols = np.arange(p - 1, p - 1 + SMALL.length)
        logits[rows, cols, tokens[:, 2 : 2 + SMALL.length]] = 4.0
        return logits

    graded = general.graded_score(fake_scorer(copier), suite)
    assert graded["copy_mc_accuracy"] == 1.0
    assert graded["reverse_mc_accuracy"] < 1.0  # it copies instead of reversing
    skills = [graded[f"{s}_mc_accuracy"] for s in SMALL.skills]
    assert graded["general_mc_accuracy"] == pytest.approx(np.mean(skills))


def test_distractors_differ_and_are_deterministic():
    answer = np.array([[1, 2], [1, 2], [3, 4], [5, 6], [3, 4], [7, 8]])
    rows = general.distractor_rows(answer, 3)
    np.testing.assert_array_equal(rows, general.distractor_rows(answer, 3))
    for i, chosen in enumerate(rows):
        keys = {answer[j].tobytes() for j in chosen}
        assert len(keys) == 3 and answer[i].tobytes() not in keys
    np.testing.assert_array_equal(rows[0], [2, 3, 5])  # the next distinct answers after row 0
    with pytest.raises(ValueError, match="distinct wrong answers"):
        general.distractor_rows(answer, 4)


def test_stdlib_text_exists_and_is_named():
    cfg = general.SuiteConfig(text_file=general.STDLIB_TEXT)
    assert natural_text.text_path(general.STDLIB_TEXT).is_file()
    assert cfg.key()["text_file"] == general.STDLIB_TEXT and len(cfg.text_sha256) == 64
    assert cfg.text_bytes > 100_000
    assert "distractors" not in general.SuiteConfig().key()  # old records' keys still match


def test_divergence_and_score_of_two_models(tmp_path):
    """Per skill (and the text): the KL/TV of the two models' logits at the answer positions
    (loss_mask[:, 1:]); kl and tv are the means over the structured skills only, and a
    model against itself diverges by exactly 0."""
    from recall_bench.model import ModelConfig, apply, init_model

    suite = general.make_suite(text_suite(tmp_path), VOCAB)
    cfg = ModelConfig(vocab_size=VOCAB.size, max_len=20, layers=1, width=8, heads=2)
    (graphdef, a), (_, b) = init_model(cfg, 0), init_model(cfg, 1)
    out = divergences.divergence(graphdef, a, graphdef, b, suite)
    parts = {**suite.test, "text": suite.text}
    names = {f"{s}_{k}" for s in parts for k in ("kl", "tv")}
    assert set(out) == names | {"kl", "tv", "greedy_kl", "greedy_tv", "greedy_tokens"}
    assert out["greedy_kl"] > 1e-3 and out["greedy_tv"] > 1e-3
    for skill, seqs in parts.items():
        tokens = seqs.tokens[:, :-1]
        kl, tv = kl_tv(
            apply(graphdef, a, tokens), apply(graphdef, b, tokens), seqs.loss_mask[:, 1:]
        )
        assert out[f"{skill}_kl"] == pytest.approx(kl, rel=1e-5) and kl > 1e-3
        assert out[f"{skill}_tv"] == pytest.approx(tv, rel=1e-5) and tv > 1e-3
    assert out["kl"] == pytest.approx(np.mean([out[f"{s}_kl"] for s in SMALL.skills]))
    assert out["tv"] == pytest.approx(np.mean([out[f"{s}_tv"] for s in SMALL.skills]))
    assert out["kl"] != pytest.approx(np.mean([out[f"{s}_kl"] for s in parts]))  # no text
    same = divergences.divergence(graphdef, a, graphdef, a, suite)
    assert all(v == 0.0 for k, v in same.items() if k != "greedy_tokens")
    scores = general.score(graphdef, a, suite)
    for skill, seqs in suite.test.items():
        logits = apply(graphdef, a, seqs.tokens[:, :-1])
        stats = stats_from_logits(logits, seqs.tokens, seqs.loss_mask, seqs.value_mask)
        assert scores[f"skill_{skill}_accuracy"] == float(np.mean(stats["exact"]))
        loss = float(np.sum(stats["loss_sum"]) / seqs.loss_mask[:, 1:].sum())
        assert scores[f"{skill}_loss"] == pytest.approx(loss, rel=1e-5)
    accuracy = np.mean([scores[f"skill_{s}_accuracy"] for s in SMALL.skills])
    assert scores["general_accuracy"] == pytest.approx(accuracy)
    assert scores["general_loss"] == pytest.approx(
        np.mean([scores[f"{s}_loss"] for s in SMALL.skills])
    )
    assert scores["text_bits_per_byte"] > 0.0 and "text_loss" in scores


def test_greedy_continuation_divergence_by_hand():
    """The base puts 1/2 on one token (its greedy choice) and 1/30 on each of the other 15;
    the new model is uniform over the 16: on each of the base's continuation tokens
    KL = 1/2 ln 8 + 1/2 ln(16/30) and TV = 1/2 - 1/16 = 7/16. Prompts of 5 tokens continued
    to width 12 give 7 tokens each (one of 7 tokens gets 5); a base whose greedy choice is EOS
    stops after it."""

    def base(tokens, greedy=12):
        p = np.full((*tokens.shape, 16), 0.5 / 15)
        p[..., greedy] = 0.5
        return np.log(p)

    def uniform(tokens):
        return np.zeros((*tokens.shape, 16))

    prompts = np.full((5, 12), PAD, np.int32)
    prompts[:, :5] = 10
    lengths = np.array([5, 5, 5, 5, 7])  # a longer prompt: continued from its own end
    prompts[4, 5:7] = 11
    tokens, mask = divergences.greedy_continuations(base, prompts, lengths)
    assert (tokens[:4, 5:] == 12).all() and (tokens[4, 5:7] == 11).all()
    assert (mask.sum(axis=1) == [7, 7, 7, 7, 5]).all() and mask[:, :4].sum() == 0
    out = divergences.continuation_divergence(base, uniform, prompts, lengths)
    assert out["greedy_tokens"] == 4 * 7 + 5
    assert out["greedy_kl"] == pytest.approx(0.5 * math.log(8) + 0.5 * math.log(16 / 30), rel=1e-5)
    assert out["greedy_tv"] == pytest.approx(7 / 16, rel=1e-5)
    same = divergences.continuation_divergence(base, base, prompts, lengths)
    assert same["greedy_kl"] == pytest.approx(0.0, abs=1e-7) and same["greedy_tv"] == 0.0
    stop = lambda tokens: base(tokens, greedy=EOS)  # noqa: E731
    tokens, mask = divergences.greedy_continuations(stop, prompts, lengths)
    assert (tokens[:4, 5] == EOS).all() and (tokens[:4, 6:] == PAD).all()
    assert (mask.sum(axis=1) == 1).all() and (mask[:4, 4] == 1).all() and mask[4, 6] == 1
