"""Tests run on CPU, deterministically; hypothesis too: a fixed, derandomized profile, so a
failure found once (in CI or here) reproduces on every run."""

import os

from hypothesis import settings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

settings.register_profile(
    "recall_bench", derandomize=True, deadline=None, max_examples=50, print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "recall_bench"))
