"""Saved models and post-training quantization (recall_bench/saved.py, quantize.py)."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recall_bench import cli, records
from recall_bench.experiments.config import RunConfig, make_task
from recall_bench.experiments.run import finish, run
from recall_bench.model import init_model
from recall_bench.quantize import format_record, quantize_dequantize, quantize_params, quantize_run
from recall_bench.records import read_json, upgrade_record
from recall_bench.saved import evaluate_run, load_run
from recall_bench.train import train_models
from recall_bench.worlds import make_fact_world

RESULTS = Path(__file__).resolve().parent.parent / "results"
TINY = RunConfig(mode="in-weight", n_facts=200, layers=1, width=32, heads=4, steps=300)
SAME = ("recall", "token_accuracy", "bits_memorized", "value_nll_bits")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny in-weight run saved with its model: (folder, record, trained params)."""
    out = tmp_path_factory.mktemp("saved") / "run"
    world = make_fact_world(TINY.spec)
    task = make_task(TINY, world)
    result = train_models(
        TINY.model_config(), TINY.train_config(), [task], [TINY.seed], progress=False
    )
    record = finish(TINY, world, task, result, 0, out, save_model=True)
    return out, record, result.model(0)


def test_8_bits_within_half_a_step_of_each_channel():
    """Columns (output channels) of very different scales: each keeps its own step."""
    rng = np.random.default_rng(0)
    w = rng.uniform(-1, 1, (16, 3)).astype(np.float32) * np.array([1e-3, 1.0, 1e3], np.float32)
    wq = np.asarray(quantize_dequantize(jnp.asarray(w), 8, axis=0))
    step = np.abs(w).max(axis=0) / 127
    assert np.all(np.abs(wq - w) <= step / 2 * (1 + 1e-6))
    assert np.abs(wq[:, 0] - w[:, 0]).max() < 1e-5  # a per-tensor step would be ≈ 4
    rows = np.asarray(quantize_dequantize(jnp.asarray(w.T), 8, axis=-1))
    np.testing.assert_array_equal(rows, wq.T)  # axis=-1: one scale per row


def test_exact_where_the_matrix_is_representable():
    """Integers times a per-column step, the largest of each column at the top level."""
    steps = np.array([0.5, 0.25, 4.0], np.float32)
    for bits, ints in [
        (4, [[-7, 3, 1], [0, -7, 6], [7, 1, -7]]),
        (8, [[-127, 3, 100], [0, 127, -127], [5, -1, 9]]),
    ]:
        w = np.array(ints, np.float32) * steps
        np.testing.assert_array_equal(np.asarray(quantize_dequantize(jnp.asarray(w), bits, 0)), w)
    ternary = np.array([[-2.0, 0.0], [2.0, 0.5], [0.0, -0.5]], np.float32)
    out = quantize_dequantize(jnp.asarray(ternary), 2, 0)
    np.testing.assert_array_equal(np.asarray(out), ternary)
    zeros = quantize_dequantize(jnp.zeros((3, 2)), 3, 0)
    np.testing.assert_array_equal(np.asarray(zeros), 0.0)


def test_model_matrices_quantized_per_channel_norms_kept():
    _, params = init_model(TINY.model_config(), 0)
    q, stats = quantize_params(params, 3)  # 7 levels: -3..3 steps
    kernel = np.asarray(q["blocks"][0]["qkv"]["kernel"][...])  # [in, out]: a scale per column
    table = np.asarray(q["token_embed"]["embedding"][...])  # [token, width]: a scale per row
    assert max(len(np.unique(c)) for c in kernel.T) <= 7
    assert max(len(np.unique(r)) for r in table) <= 7
    assert len(np.unique(kernel)) > 7 and len(np.unique(table)) > 7
    assert max(len(np.unique(r)) for r in np.asarray(q["pos_embed"]["embedding"][...])) <= 7
    for name in ("ln_attn", "ln_mlp"):
        for field in ("scale", "bias"):
            a, b = params["blocks"][0][name][field][...], q["blocks"][0][name][field][...]
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert 0.05 < stats["relative_weight_error"] < 0.5


def test_saved_model_reloads_bitwise_with_the_same_metrics(saved):
    out, record, trained = saved
    cfg, world, graphdef, params = load_run(out)
    assert cfg == TINY and world.spec == TINY.spec
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(params), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    metrics = evaluate_run(cfg, world, graphdef, params)
    assert {k: metrics[k] for k in SAME} == {k: record["metrics"][k] for k in SAME}


def test_quantize_cli_writes_one_record_and_refuses_to_overwrite(saved, tmp_path, capsys):
    out, record, _ = saved
    args = ["quantize", str(out), "--bits", "8,2", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    q = json.loads((tmp_path / "quantization.json").read_text())
    assert q["kind"] == "quantization" and q["source"]["run_id"] == record["run_id"]
    rows = {r["width"]: r for r in q["widths"]}
    assert list(rows) == ["trained", "bfloat16", "int8", "int2"]
    assert rows["trained"]["bits_memorized"] == record["metrics"]["bits_memorized"]
    assert rows["trained"]["relative_weight_error"] == 0.0
    assert rows["int8"]["recall"] >= 0.9 * record["metrics"]["recall"]
    assert rows["int2"]["relative_weight_error"] > rows["int8"]["relative_weight_error"]
    n = record["params"]["total"]
    assert rows["int8"]["bits_per_weight_bit"] == pytest.approx(
        rows["int8"]["bits_memorized"] / (8 * n)
    )
    assert cli.main(args) == 2
    assert "already holds this quantization" in capsys.readouterr().err
    assert cli.main([*args, "--resume", "--plot", str(tmp_path / "q.png")]) == 0
    assert (tmp_path / "q.png").stat().st_size > 0
    assert json.loads((tmp_path / "quantization.json").read_text()) == q
    assert cli.main([*args[:3], "8", "--out", str(tmp_path)]) == 2
    assert "bits: [8, 2] -> [8]" in capsys.readouterr().err


def test_run_without_a_saved_model_is_a_clear_error(saved, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    shutil.copy(saved[0] / "record.json", tmp_path / "run")
    assert cli.main(["quantize", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "no saved model" in err and "--save-model" in err and err.count("\n") == 1
    assert cli.main(["quantize", str(tmp_path)]) == 2
    assert "no record.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="finished without --save-model"):
        run(TINY, tmp_path / "run", progress=False, resume=True, save_model=True)


def test_in_tool_run_quantized_with_its_store(tmp_path):
    cfg = RunConfig(mode="in-tool", n_facts=40, layers=1, steps=25, validation_entities=8)
    run(cfg, tmp_path, progress=False, save_model=True)
    record = quantize_run(tmp_path, (8,))
    rows = record["widths"]
    assert [r["width"] for r in rows] == ["trained", "bfloat16", "int8"]
    assert all(r["recall_unseen"] is not None and "call_valid" in r for r in rows)
    delivered = read_json(tmp_path / "record.json")["metrics"]["bits_delivered"]
    assert rows[0]["bits_delivered"] == delivered  # bits given with the store's help
    assert not set(records.IN_TOOL_ROW_NAMES) & {k for r in rows for k in r}
    assert upgrade_record(record) == record and "delivered" in format_record(record)


def test_in_tool_rows_of_an_old_record_are_read_under_the_in_tool_names():
    """The committed in-tool quantization record predates the names: reading renames."""
    path = RESULTS / "quantization" / "in-tool-4096" / "quantization.json"
    old, new = read_json(path), records.read_record(path)
    for before, after in zip(old["widths"], new["widths"], strict=True):
        assert after == {records.IN_TOOL_ROW_NAMES.get(k, k): v for k, v in before.items()}
        assert after["bits_delivered_per_weight_bit"] == before["bits_per_weight_bit"]
    assert records.upgrade_record(new) == new
    held = read_json(RESULTS / "quantization" / "in-weight-1024" / "quantization.json")
    assert records.upgrade_record(held)["widths"] == held["widths"]  # in-weight: as it was
