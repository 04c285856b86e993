"""Capacity math over plain arrays: a model's capacity from its bits-memorized curve, the
bits-per-parameter fit across model sizes with a bootstrap interval over seeds, and the
point where held-out loss turns (docs/design.md §3).

Capacity of one (model, seed) = the maximum over fact counts of bits memorized: past
capacity, more facts do not add bits, so the curve's plateau is its maximum.
"""

from __future__ import annotations

import numpy as np


def capacity_per_seed(bits: np.ndarray) -> np.ndarray:
    """bits [seeds, fact counts] (NaN where a cell is missing) -> capacity [seeds]."""
    return np.nanmax(np.asarray(bits, np.float64), axis=-1)


def slope_through_origin(params: np.ndarray, capacity: np.ndarray) -> float:
    """Least-squares alpha of capacity = alpha * params (no intercept)."""
    x, y = np.asarray(params, np.float64), np.asarray(capacity, np.float64)
    return float(x @ y / (x @ x))


def fit_bits_per_param(
    params: list[int] | np.ndarray,
    capacities: list[np.ndarray],
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float | list[float] | int]:
    """Fit capacity = alpha * params over models (each at the mean of its seeds), with a
    percentile bootstrap interval that resamples each model's seeds with replacement.

    params[m]: parameter count of model m; capacities[m]: its capacity on each seed.
    """
    if len(params) != len(capacities) or not len(params):
        raise ValueError("give one capacity array (over seeds) per model, at least one model")
    x = np.asarray(params, np.float64)
    caps = [np.asarray(c, np.float64) for c in capacities]
    alpha = slope_through_origin(x, np.array([c.mean() for c in caps]))
    rng = np.random.default_rng(seed)
    boot = np.array(
        [
            slope_through_origin(x, np.array([rng.choice(c, len(c)).mean() for c in caps]))
            for _ in range(n_boot)
        ]
    )
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boot, [tail, 100 - tail])
    return {
        "bits_per_param": alpha,
        "interval": [float(low), float(high)],
        "level": level,
        "n_models": len(caps),
        "n_seeds": int(min(len(c) for c in caps)),
    }


def gain_per_efold(steps: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of values against ln(steps) over the last e-fold of steps (the
    points from step_last / e on): how much one more e-fold of training would add, if the
    curve held its pace; near 0 once saturated. NaN with fewer than 2 points."""
    x, y = np.log(np.asarray(steps, np.float64)), np.asarray(values, np.float64)
    late = x >= x[-1] - 1.0
    if late.sum() < 2:
        return float("nan")
    return float(np.polyfit(x[late], y[late], 1)[0])


def loss_peak(dataset_bits: np.ndarray, test_loss: np.ndarray, capacity_bits: float) -> dict:
    """Where held-out loss peaks against dataset size (the double-descent point: past it,
    more data lowers test loss again), and that dataset's entropy over the model's capacity.
    turned: the peak is inside the range, so the loss was seen both rising and falling."""
    bits = np.asarray(dataset_bits, np.float64)
    i = int(np.nanargmax(np.asarray(test_loss, np.float64)))
    return {
        "index": i,
        "dataset_bits": float(bits[i]),
        "over_capacity": float(bits[i] / capacity_bits),
        "turned": 0 < i < len(bits) - 1,
    }
