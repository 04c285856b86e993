"""How many same-shaped models one program trains (devices.ensemble_size), on hand-made
sizes."""

from __future__ import annotations

import pytest

from recall_bench.devices import ensemble_size, model_bytes


def test_ensemble_fills_half_the_free_memory_of_every_device():
    assert ensemble_size(1_000, 10_000) == 5
    assert ensemble_size(1_000, 10_999) == 5
    assert ensemble_size(1_000, 10_000, devices=4) == 20
    assert ensemble_size(3_000, 10_000) == 1
    assert ensemble_size(10**9, 10_000) == 1  # one model always runs, fitting or not
    assert ensemble_size(1, 10**12) == 256
    assert ensemble_size(1, 10**12, limit=64) == 64


def test_ensemble_size_refuses_impossible_sizes():
    for args in ((0, 10), (10, -1), (10, 10, 0)):
        with pytest.raises(ValueError, match="per_model >= 1"):
            ensemble_size(*args)


def test_model_bytes_grows_with_every_part_of_the_state():
    base = dict(n_params=30_000, batch=256, length=9, width=32, layers=2, rows=16_384)
    size = model_bytes(**base)
    assert size == 4 * (4 * 30_000 + 256 * 9 * 2 * (16 * 32 + 4 * 9) + 2 * 16_384 * 9)
    for key in base:
        assert model_bytes(**{**base, key: base[key] * 2}) > size
    # a 30k model at batch 256: about 11 MB, so a 16 GB device holds the 256-model limit
    assert ensemble_size(size, 16 * 2**30) == 256
