"""Edits: the rank-one edit changes its fact and spares an unrelated one, the store edit
moves no weight, the metrics on hand-made cases, and one clear line for bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recall_bench import edit, formats, general
from recall_bench.cli import main
from recall_bench.edit_weights import WeightEditConfig, key_moments, replace_kernels, rome_edits
from recall_bench.experiments import edits as protocol
from recall_bench.experiments import edits_general
from recall_bench.experiments.config import RunConfig, make_task
from recall_bench.model import apply, init_model
from recall_bench.tool import build_store, world_facts
from recall_bench.worlds import FactSpec, FactWorld, make_fact_world

SPEC = FactSpec(n_entities=12, attribute_sizes=(16, 16), value_length=1, value_alphabet=16)


def tiny_cfg(mode: str = "in-weight") -> RunConfig:
    return RunConfig(
        mode=mode, n_facts=24, attribute_sizes=(16, 16), value_length=1, value_alphabet=16,
        layers=1, width=16, heads=2,
    )  # fmt: skip


def tiny_suite(run: RunConfig) -> general.Suite:
    cfg = general.SuiteConfig(
        skills=("copy", "sort"), train_per_skill=16, test_per_skill=8,
        text_file=general.STDLIB_TEXT, text_train_windows=4,
    )  # fmt: skip
    return edits_general.make_suite(cfg, run)


def test_prompt_orders_keep_the_default_stream_and_permute_the_prompt():
    world = make_fact_world(SPEC)
    default = formats.render_in_weight(world)
    assert np.array_equal(default.tokens, formats.render_in_weight(world, order="key-first").tokens)
    second = formats.render_in_weight(world, order="attribute-first")
    assert np.array_equal(second.tokens[:, 1], default.tokens[:, 5])  # the attribute first
    assert np.array_equal(second.tokens[:, 2:6], default.tokens[:, 1:5])
    assert np.array_equal(second.tokens[:, 6:], default.tokens[:, 6:])
    tool = formats.render_in_tool(world, order="attribute-first")
    call = formats.call_tokens(world, *formats.fact_index(SPEC))
    assert np.array_equal(tool.tokens[:, 6 : 6 + call.shape[1]], call)  # the call is canonical
    with pytest.raises(ValueError, match="prompt order"):
        formats.prompt_tokens(world, np.arange(2), np.zeros(2, int), "sideways")


def test_choose_edits_gives_new_values_and_nested_sets():
    world = make_fact_world(SPEC)
    small, big = edit.choose_edits(world, 3, seed=5), edit.choose_edits(world, 10, seed=5)
    assert np.all(big.value != world.values[big.entity, big.attribute])
    assert np.all((big.value >= 0) & (big.value < 16))

    def facts(e: edit.EditSet) -> set:
        return set(zip(e.entity.tolist(), e.attribute.tolist(), e.value.tolist(), strict=True))

    assert facts(small) <= facts(big)
    with pytest.raises(ValueError, match="1 <= k <= 24"):
        edit.choose_edits(world, 25, seed=0)


def test_specificity_groups_on_hand_made_keys():
    keys = np.array([[0, 0], [0, 1], [2, 2], [3, 3]], np.int32)
    spec = FactSpec(n_entities=4, attribute_sizes=(4, 4), key_length=2, key_alphabet=4)
    world = FactWorld(spec, keys, np.zeros((4, 2), np.int64))
    edits = edit.EditSet(np.array([0]), np.array([1]), np.array([1]))
    groups = edit.specificity_groups(world, edits)
    # facts entity-major: (0,0) (0,1) (1,0) (1,1) ...; entity 1 shares symbol 0 in place 0
    assert groups["same_entity"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    assert groups["neighbour"].tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
    assert groups["other"].tolist() == [0, 0, 1, 0, 1, 1, 1, 1]


def test_edit_metrics_on_a_hand_made_case():
    edited = np.array([1, 1, 0, 0, 0, 0], bool)
    right = np.array([1, 0, 1, 0, 1, 1], bool)
    second = np.array([1, 1, 0, 0, 0, 0], bool)
    base = np.array([1, 0, 1, 1, 0, 1], bool)  # facts 1 and 4 were never known
    groups = {"same_entity": np.array([0, 0, 1, 1, 0, 0], bool), "other": ~edited}
    m = edit.edit_metrics(right, second, base, edited, groups)
    assert m["efficacy"] == 0.5 and m["generalization"] == 1.0 and m["efficacy_known"] == 1.0
    assert m["specificity"] == pytest.approx(2 / 3) and m["specificity_facts"] == 3
    assert m["specificity_same_entity"] == 0.5
    empty = edit.edit_metrics(right, second, base, edited, {"none": np.zeros(6, bool)})
    assert empty["specificity_none"] is None and empty["specificity_none_facts"] == 0


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_store_update_changes_only_the_edited_facts(kind, tmp_path):
    world = make_fact_world(SPEC)
    store = build_store(world, kind, tmp_path / "s.sqlite")
    edits = edit.choose_edits(world, 5, seed=1)
    assert edit.edit_store(store, world, edits) == 5
    keys, attributes, values = world_facts(edit.edited_world(world, edits))
    found = store.lookup(keys, attributes)
    assert np.array_equal(found.values, values) and (found.status == 0).all()
    with pytest.raises(ValueError, match="1 of the 1 facts to update are not in the store"):
        store.update(np.full((1, 4), 63), np.array([0]), np.zeros((1, 1), int))
    assert np.array_equal(store.lookup(keys, attributes).values, values)  # nothing changed
    store.close()


def test_store_edit_is_bitwise_weight_free_and_keeps_the_general_scores_exactly():
    cfg = dataclasses.replace(tiny_cfg("in-tool"), value_length=2)  # 20 positions: the suite's
    world = make_fact_world(cfg.spec)
    graphdef, params = init_model(cfg.model_config(), 0)
    before = jax.tree.map(np.array, params)
    suite = tiny_suite(cfg)
    info = {"general": general.score(graphdef, params, suite)}
    base = protocol.Base(cfg, world, graphdef, params, np.ones(cfg.n_facts, bool), info, suite)
    outcome = protocol.store_outcome(base, edit.choose_edits(world, 4, seed=0), "memory")
    assert outcome.cost["params_changed"] == 0 and outcome.cost["bytes_written"] == 8
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(outcome.params), strict=True):
        assert np.array_equal(a, np.asarray(b))
    block = protocol.general_ability(base, outcome)
    assert block["scores"] == info["general"] and block["kept"]["text_bits_per_byte_change"] == 0
    plain = dataclasses.replace(base, suite=None)
    assert protocol.general_ability(plain, outcome) == protocol.GENERAL_NOTE


def test_rank_one_edit_changes_its_fact_and_spares_an_unrelated_one():
    cfg = tiny_cfg()
    world = make_fact_world(cfg.spec)
    graphdef, params = init_model(cfg.model_config(), 3)
    edits = edit.EditSet(np.array([0]), np.array([0]), np.array([(world.values[0, 0] + 7) % 16]))
    target = edit.edit_sequences(world, edits)
    prompts = formats.prompt_tokens(world, *formats.fact_index(cfg.spec))
    kept = prompts[2:8]  # the facts whose keys the edit must preserve; the unrelated one is 5
    wcfg = WeightEditConfig(rome_layer=0, ridge=1e-6, value_steps=40)
    moment = key_moments(graphdef, params, jnp.asarray(kept), (0,))[0]
    w = rome_edits(graphdef, params, target.tokens, jnp.ones(1), 6, 1, wcfg, 0, moment)
    edited = replace_kernels(params, {0: w})
    logits = apply(graphdef, edited, jnp.asarray(prompts[[0, 5]]))[:, -1]
    old = apply(graphdef, params, jnp.asarray(prompts[[0, 5]]))[:, -1]
    value_offset = formats.Vocab.of(cfg.spec).value_offset
    assert int(jnp.argmax(logits[0])) == value_offset + int(edits.value[0])
    assert float(jnp.max(jnp.abs(logits[1] - old[1]))) < 1e-2
    assert float(jnp.max(jnp.abs(logits[0] - old[0]))) > 0.5


def test_rank_two_edit_writes_a_two_token_value_and_spares_an_unrelated_fact():
    cfg = dataclasses.replace(tiny_cfg(), value_length=2, value_alphabet=4)
    world = make_fact_world(cfg.spec)
    graphdef, params = init_model(cfg.model_config(), 3)
    edits = edit.EditSet(np.array([0]), np.array([0]), np.array([(world.values[0, 0] + 7) % 16]))
    target = edit.edit_sequences(world, edits).tokens
    heads = formats.render_in_weight(world).tokens[:, :7]  # prompt and first value token
    wcfg = WeightEditConfig(rome_layer=0, ridge=1e-6, value_steps=60)
    moment = key_moments(graphdef, params, jnp.asarray(heads[2:8]), (0,), 2)[0]
    w = rome_edits(graphdef, params, target, jnp.ones(1), 6, 2, wcfg, 0, moment)
    edited = replace_kernels(params, {0: w})
    first = apply(graphdef, edited, jnp.asarray(target[:1, :6]))[0, -1]
    assert int(jnp.argmax(first)) == target[0, 6]  # greedy: the new first token ...
    second = apply(graphdef, edited, jnp.asarray(target[:1, :7]))[0, -1]
    assert int(jnp.argmax(second)) == target[0, 7]  # ... then, fed back, the new second one
    new, old = (apply(graphdef, p, jnp.asarray(heads[5:6]))[0, 5:7] for p in (edited, params))
    assert float(jnp.max(jnp.abs(new - old))) < 1e-2  # fact 5, both value positions
    assert not np.array_equal(target[0, 6:8], formats.render_in_weight(world).tokens[0, 6:8])


def test_edits_config_refuses_bad_k_and_methods():
    base = dataclasses.replace(tiny_cfg(), n_facts=24)
    with pytest.raises(ValueError, match=r"k = \[24\]"):
        protocol.EditsConfig(base=base, ks=(1, 24))
    with pytest.raises(ValueError, match="unknown edit methods"):
        protocol.EditsConfig(base=base, ks=(1,), methods=("rome", "lobotomy"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--facts", "64", "--k", "64"], "k = [64]"),
        (["--methods", "rome,sleep"], "unknown edit methods"),
        (["--from", "nowhere"], "holds no record.json"),
        (["--general"], "give --value-length 2"),
    ],
)
def test_bad_edit_input_is_one_clear_line(argv, message, capsys, tmp_path):
    assert main(["edit", *argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert not (tmp_path / "x" / "edits.json").exists()


@pytest.mark.parametrize("flag", [["--k", "0"], ["--k", "1,x"], ["--seeds", "-1"]])
def test_bad_edit_flags_exit_2(flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", *flag])
    assert exit_info.value.code == 2


def test_finetune_data_is_the_new_values_and_half_replay():
    world = make_fact_world(SPEC)
    edits = edit.choose_edits(world, 3, seed=2)
    plain, mixed = edit.finetune_task(world, edits, False), edit.finetune_task(world, edits, True)
    new = formats.Vocab.of(SPEC).value_offset + edits.value
    assert np.array_equal(plain.train.tokens[:, 6], new) and len(plain.train.tokens) == 3
    assert np.array_equal(mixed.monitor.tokens, plain.train.tokens)
    edited_rows = (mixed.train.tokens[:, None, :] == plain.train.tokens[None]).all(-1).any(1)
    assert edited_rows.sum() == 42 and (~edited_rows).sum() == 2 * (24 - 3)


def test_general_kept_on_a_hand_made_case():
    base = {"general_accuracy": 0.8, "general_mc_accuracy": 0.75, "text_bits_per_byte": 1.5}
    now = {"general_accuracy": 0.4, "general_mc_accuracy": 0.5, "text_bits_per_byte": 2.0}
    assert general.kept(now, base, 0.25) == {
        "general_accuracy_kept": 0.5,
        "general_mc_kept": 0.5,
        "text_bits_per_byte_change": 0.5,
    }
    nothing = {"general_accuracy": 0.0, "general_mc_accuracy": 0.25}
    kept = general.kept(nothing, nothing, 0.25)
    assert kept["general_accuracy_kept"] is None and np.isnan(kept["general_mc_kept"])


def test_the_general_suite_needs_rows_the_model_holds_and_fills_half_the_base_rows():
    with pytest.raises(ValueError, match="--value-length 2"):
        tiny_suite(tiny_cfg())  # 1-token values: an 18-position model, the suite needs 20
    run = dataclasses.replace(tiny_cfg(), value_length=2)
    suite = tiny_suite(run)
    assert len(suite.text.tokens) == edits_general.SCORED_TEXT
    task = make_task(run, make_fact_world(run.spec), formats.ORDERS)
    mixed = edits_general.mixed_task(task, suite, run.model_config().max_len)
    (facts, width), rows = task.train.tokens.shape, len(suite.train.tokens)
    assert mixed.train.tokens.shape == (2 * facts, 20) and rows < facts  # more facts here
    assert np.array_equal(mixed.train.tokens[:facts, :width], task.train.tokens)
    cycled = suite.train.tokens[np.arange(facts) % rows]
    assert np.array_equal(mixed.train.tokens[facts:], cycled) and rows > facts // 2
    assert mixed.monitor.tokens.shape[1] == 20 and mixed.monitor_bits is task.monitor_bits


def test_replay_with_general_data_mixes_it_like_the_base():
    world = make_fact_world(SPEC)
    edits = edit.choose_edits(world, 3, seed=2)
    rows = general.make_suite(
        general.SuiteConfig(skills=("copy",), train_per_skill=10), formats.Vocab.of(SPEC)
    ).train
    task = edit.finetune_task(world, edits, True, rows)
    is_general = task.train.tokens[:, 1] == general.MARKERS["copy"]
    assert is_general.sum() == 2 * (24 - 3)  # as many as the unedited facts' rows
    width = task.monitor.tokens.shape[1]
    edited_rows = (task.train.tokens[:, None, :width] == task.monitor.tokens[None]).all(-1).any(1)
    assert edited_rows.sum() == 84 and (~edited_rows & ~is_general).sum() == 42
