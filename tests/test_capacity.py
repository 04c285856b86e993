"""Capacity math: the bits/param fit recovers a known slope, capacity is the curve's maximum,
and the params-for-recall table picks the smallest passing model."""

from __future__ import annotations

import numpy as np
import pytest

from recall_bench import capacity
from recall_bench.experiments.capacity import capacity_summary, params_for_recall


def test_fit_recovers_known_slope_with_interval():
    rng = np.random.default_rng(0)
    params = np.array([2_000, 6_000, 20_000, 60_000])
    caps = [2.7 * p * (1 + 0.05 * rng.standard_normal(5)) for p in params]
    fit = capacity.fit_bits_per_param(params, caps, n_boot=500)
    assert fit["bits_per_param"] == pytest.approx(2.7, rel=0.03)
    low, high = fit["interval"]
    assert low < fit["bits_per_param"] < high
    assert low < 2.7 < high
    assert high - low < 0.3
    assert (fit["n_models"], fit["n_seeds"]) == (4, 5)


def test_fit_without_noise_is_exact():
    params = [1_000, 4_000, 9_000]
    fit = capacity.fit_bits_per_param(params, [np.full(3, 3.6 * p) for p in params], n_boot=50)
    assert fit["bits_per_param"] == pytest.approx(3.6)
    assert fit["interval"] == pytest.approx([3.6, 3.6])


def test_fit_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="one capacity array"):
        capacity.fit_bits_per_param([1, 2], [np.ones(3)])


def test_capacity_is_max_over_fact_counts_ignoring_missing_cells():
    bits = np.array([[100.0, 300.0, 250.0], [120.0, np.nan, 280.0]])
    assert capacity.capacity_per_seed(bits).tolist() == [300.0, 280.0]


def test_loss_peak_locates_the_turn_relative_to_capacity():
    peak = capacity.loss_peak([1e3, 4e3, 16e3, 64e3], [4.2, 4.6, 4.4, 4.3], capacity_bits=2e3)
    assert peak == {"index": 1, "dataset_bits": 4e3, "over_capacity": 2.0, "turned": True}
    assert not capacity.loss_peak([1, 2], [1.0, 2.0], 1.0)["turned"]


def fake_record(mode, width, n, seed, params, bits, recall, dtype="float32"):
    return {
        "mode": mode,
        "n_facts": n,
        "seed": seed,
        "world": {"kind": "facts", "entropy_bits": 12.0 * n},
        "model": {"layers": 1, "width": width, "dtype": dtype},
        "params": {"total": params, "non_embedding": params // 2},
        "metrics": {"bits_memorized": bits, "recall": recall},
        "config": {"monitor_facts": 64},
        "train": {
            "steps": 100,
            "stop_reason": "plateau",
            "converged": True,
            # the monitored facts' bits at each check (a share min(n, 64) / n of all facts)
            "history": [
                {"step": s, "bits": bits * s / 100 * min(n, 64) / n} for s in (0, 25, 50, 100)
            ],
        },
    }


def test_gain_per_efold_is_the_late_slope_against_log_steps():
    steps = np.array([100, 200, 400, 800, 1600, 3200])
    assert capacity.gain_per_efold(steps, 0.3 * np.log(steps) + 1) == pytest.approx(0.3)
    late = np.where(steps < 1600, 0.5 * np.log(steps), 0.5 * np.log(1600))  # flat at the end
    assert capacity.gain_per_efold(steps, late) == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(capacity.gain_per_efold(np.array([100]), np.array([1.0])))


def test_steps_curve_scales_the_monitored_bits_to_all_facts():
    """A cell of 256 facts watched through 64 of them: its curve ends at its final
    bits/param, and the mean gain per e-fold is reported per model."""
    (group,) = capacity_summary([fake_record("in-weight", 8, 256, 0, 1_000, 600.0, 0.2)])
    (model,) = group["models"]
    (curve,) = model["steps_curves"]
    assert curve["steps"] == [25, 50, 100] and curve["n_facts"] == 256
    assert curve["bits_per_param"] == pytest.approx([0.15, 0.3, 0.6])
    assert model["gain_per_efold"] == pytest.approx(curve["gain_per_efold"])
    assert curve["gain_per_efold"] == pytest.approx(np.polyfit(np.log([50, 100]), [0.3, 0.6], 1)[0])


def test_capacity_summary_and_params_for_recall_from_records():
    records = []
    for width, params in ((8, 1_000), (16, 4_000)):
        for n in (64, 256, 1024):
            for seed in (0, 1):
                bits = min(12.0 * n, 2.0 * params)  # the model holds 2 bits/param at most
                records.append(
                    fake_record("in-weight", width, n, seed, params, bits, bits / (12.0 * n))
                )
        records += [fake_record("in-tool", width, n, 0, params, 0.0, 0.99) for n in (64, 1024)]
    (group,) = capacity_summary(records)
    assert [m["capacity_bits"] for m in group["models"]] == [2_000.0, 8_000.0]
    assert group["models"][0]["best_n_facts"] == 256
    assert all(m["saturated"] for m in group["models"])
    assert group["fit"]["bits_per_param"] == pytest.approx(2.0)
    assert group["fit_non_embedding"]["bits_per_param"] == pytest.approx(4.0)
    rows = {(r["mode"], r["n_facts"]): r["params"] for r in params_for_recall(records)}
    assert rows == {
        ("in-tool", 64): 1_000,
        ("in-tool", 1024): 1_000,
        ("in-weight", 64): 1_000,
        ("in-weight", 256): 4_000,
        ("in-weight", 1024): None,
    }
    by_count = {r["n_facts"]: r for r in params_for_recall(records) if r["mode"] == "in-weight"}
    bracketed = by_count[256]  # d16 passes, the next smaller d8 holds 2,000 of 3,072 bits
    assert bracketed["params_per_fact"] == 4_000 / 256
    assert bracketed["params_per_bit"] == pytest.approx(4_000 / (12 * 256))
    assert bracketed["below"]["model"] == "L1-d8"
    assert bracketed["below"]["recall"] == pytest.approx(2_000 / 3_072)
    assert by_count[64]["below"] is None  # the smallest model tried passes: not bracketed
    assert by_count[1024]["params_per_bit"] is None and by_count[1024]["below"] is None


def test_a_data_capped_cell_is_never_a_models_maximum():
    """A cell holding >= 90% of its data's entropy shows the data's limit, not the model's:
    the maximum is taken over the others, and a model with only such cells is left out of
    the fit (its number is a lower bound)."""
    records = [
        fake_record("in-weight", 8, 64, 0, 1_000, 0.95 * 768, 0.9),  # capped, yet the largest
        fake_record("in-weight", 8, 256, 0, 1_000, 600.0, 0.2),
        fake_record("in-weight", 32, 64, 0, 9_000, 768.0, 1.0),  # every cell capped
        fake_record("in-weight", 32, 256, 0, 9_000, 0.92 * 3072, 0.9),
    ]
    (group,) = capacity_summary(records)
    small, large = group["models"]
    assert small["capacity_bits"] == 600.0 and small["best_n_facts"] == 256
    assert not small["data_capped"] and large["data_capped"]
    assert group["fit_excludes_data_capped"] == ["L1-d32"]
    assert group["fit_cells"] == [{"model": "L1-d8", "n_facts_by_seed": [256]}]
    assert group["fit"]["bits_per_param"] == pytest.approx(0.6)
    only_capped = capacity_summary(records[2:])
    assert only_capped[0]["fit"] is None


def test_plots_of_a_sweep_with_only_in_tool_cells(tmp_path):
    """No capacity group (in-tool bits are not held in weights): only params-for-recall."""
    from recall_bench.experiments.capacity import write_plots

    records = [fake_record("in-tool", 8, n, 0, 1_000, 0.0, 0.99) for n in (64, 1024)]
    assert capacity_summary(records) == []
    paths = write_plots([], params_for_recall(records), tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["params_for_recall.png"]


def test_noise_floor_beside_the_capacity_and_a_corrected_fit():
    """With a floor in the records, each model reports its best cell's floor and a capacity
    above it (max of corrected bits over the cells that are not data-capped), fitted too."""
    records = []
    for n, bits, floor in ((64, 0.95 * 768, 0.1), (256, 600.0, 0.5), (1024, 650.0, 0.2)):
        r = fake_record("in-weight", 8, n, 0, 1_000, bits, 0.2)
        corrected = bits - floor * n
        r["metrics"].update(noise_floor_bits_per_fact=floor, bits_memorized_corrected=corrected)
        records.append(r)
    (group,) = capacity_summary(records)
    (model,) = group["models"]
    assert model["best_n_facts"] == 1024 and model["noise_floor_bits_per_fact"] == 0.2
    assert model["capacity_bits_corrected"] == pytest.approx(472.0)  # 600 - 128 > 650 - 204.8
    assert group["fit_corrected"]["bits_per_param"] == pytest.approx(0.472)
    assert [p["noise_floor_bits_per_fact"] for p in model["curve"]] == [0.1, 0.5, 0.2]
    older = fake_record("in-weight", 8, 256, 0, 1_000, 600.0, 0.2)  # made before the floor
    (group,) = capacity_summary([records[0], older])
    assert group["fit_corrected"] is None and "capacity_bits_corrected" not in group["models"][0]
