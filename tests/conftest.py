"""Tests run on CPU, deterministically."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
