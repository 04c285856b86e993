"""The worked example of docs/adding-a-method.md: retrieval into the context, a method added
as one module and one registry line. It registers, renders its rows with the right loss
masks, reads the store (not the world) when it writes the prompt, trains and evaluates
through the unchanged engine, and its record becomes a leaderboard entry of its own track."""

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from recall_bench import formats, leaderboard, methods, records
from recall_bench.experiments.config import RunConfig
from recall_bench.experiments.run import run
from recall_bench.methods import retrieval_context
from recall_bench.tool import MemoryStore, world_facts
from recall_bench.worlds import make_fact_world

TINY = RunConfig(mode="retrieval-context", n_facts=128, layers=1, steps=100, eval_every=50)
# copying is learned on a protocol pool of its own (design §10); every world fact is unseen
POOL = dataclasses.replace(TINY, n_facts=64, tool_train_entities=512, batch_size=128)


def test_it_registers_with_its_own_track_and_flags():
    method = methods.METHODS["retrieval-context"]
    assert method is retrieval_context.METHOD and "retrieval-context" in methods.MODES
    assert records.track("retrieval-context") == "retrieval-context"
    assert "retrieval-context" in records.DELIVERED_TRACKS
    assert method.holds_out and method.uses_store and not method.calls_tool
    assert TINY.unseen_entities() == round(0.2 * TINY.spec.n_entities)
    with pytest.raises(ValueError, match="mode must be one of"):
        methods.get("retrieval-contxt")


def test_rows_hold_the_fact_then_the_question_with_loss_on_the_answer_only():
    world = make_fact_world(TINY.spec)
    seqs = retrieval_context.render(world, np.arange(3))
    k, v = world.spec.key_length, world.spec.value_length
    p = seqs.prompt_length
    assert p == 2 * k + v + 4 and seqs.tokens.shape[1] <= formats.max_length(world.spec)
    value = formats.answer_tokens(world, *formats.fact_index(world.spec, np.arange(3)))
    np.testing.assert_array_equal(seqs.tokens[:, 1], formats.RESULT)
    np.testing.assert_array_equal(seqs.tokens[:, 2 + k + 1 : 2 + k + 1 + v], value)  # context
    np.testing.assert_array_equal(seqs.tokens[:, p : p + v], value)  # the answer
    np.testing.assert_array_equal(seqs.tokens[:, -1], formats.EOS)
    assert seqs.loss_mask[:, :p].sum() == 0 and seqs.loss_mask[:, p:].all()
    assert seqs.value_mask.sum(axis=1).tolist() == [v] * 3


def test_the_prompt_carries_what_the_store_returns():
    world = make_fact_world(TINY.spec)
    keys, attributes, values = world_facts(world)
    changed = (values + 1) % world.spec.value_alphabet
    store = MemoryStore(keys[:-1], attributes[:-1], changed[:-1])  # the last fact is missing
    entity, attribute = formats.fact_index(world.spec)
    prompts = retrieval_context.prompts(world, entity, attribute, store)
    rendered = retrieval_context.render(world)
    assert prompts.shape[1] == rendered.prompt_length
    k, v = world.spec.key_length, world.spec.value_length
    context = prompts[:, 2 + k + 1 : 2 + k + 1 + v]
    offset = formats.Vocab.of(world.spec).value_offset
    np.testing.assert_array_equal(context[:-1], changed[:-1] + offset)
    np.testing.assert_array_equal(context[-1], formats.NOT_FOUND)
    same = np.delete(np.arange(prompts.shape[1]), np.arange(2 + k + 1, 2 + k + 1 + v))
    np.testing.assert_array_equal(prompts[:, same], rendered.tokens[:, same])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("retrieval") / "run"
    return out, run(POOL, out, progress=False)


def test_it_trains_and_copies_unseen_entities_facts_from_the_context(trained):
    _, record = trained
    m = record["metrics"]
    assert record["mode"] == "retrieval-context" and record["store"]["facts"] == 64
    assert m["recall_unseen"] == m["recall"] >= 0.9 and m["recall_trained"] is None
    assert m["context_missing"] == 0.0 and m["protocol_key_overlap"] == 0
    assert "bits_delivered" in m and "bits_memorized" not in m  # the context gave the bits
    assert record["train"]["trained_facts"] == 512


def test_its_record_is_a_leaderboard_entry_in_its_own_track(trained, tmp_path):
    out, record = trained
    entry = leaderboard.entry_from_record(record)
    assert entry["track"] == "retrieval-context"
    board = leaderboard.export([out], tmp_path / "board.json")["leaderboard"]
    leaderboard.validate(tmp_path / "board.json")
    assert [e["track"] for e in board["entries"]] == ["retrieval-context"]
    table = leaderboard.show(tmp_path / "board.json", track="retrieval-context")
    assert "retrieval into the context" in table and "retrieval-context" in table


def test_a_held_in_weights_name_is_refused_on_its_track(trained, tmp_path):
    out, _ = trained
    board = leaderboard.export([out], tmp_path / "board.json")["leaderboard"]
    [entry] = board["entries"]
    entry["metrics"]["bits_memorized"] = entry["metrics"].pop("bits_delivered")
    with pytest.raises(leaderboard.LeaderboardError, match="delivered"):
        leaderboard.validate(board)


def test_the_engine_and_the_evaluation_name_no_method():
    """Adding a method never edits the engine: it and the evaluation know methods only
    through the registry and the Method fields, never by name."""
    folder = Path(__file__).resolve().parent.parent / "recall_bench" / "experiments"
    for name in ("engine.py", "evaluate.py", "recording.py"):
        tree = ast.parse((folder / name).read_text())
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
        assert not strings & set(methods.MODES), name
