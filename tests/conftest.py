"""Tests run on CPU, deterministically; hypothesis too: a fixed, derandomized profile, so a
failure found once (in CI or here) reproduces on every run."""

import os
import shutil
import tempfile

from hypothesis import settings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache per test process, shared with the processes it starts
# (the CLI and multi-device tests): a program compiled once (same computation, devices and
# XLA flags) is loaded, not compiled again, by a later test or subprocess. Loading the
# compiled program changes no number; it only saves the compile. Removed when the session ends.
COMPILATION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    COMPILATION_CACHE = tempfile.mkdtemp(prefix="recall_bench_jax_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = COMPILATION_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

settings.register_profile(
    "recall_bench", derandomize=True, deadline=None, max_examples=50, print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "recall_bench"))

# The files that take longest (each file alone on one core of the 2-core machine), longest
# first: the two xdist workers take whole files in collection order, so these start first and
# the workers finish together. Order inside a file, and every test, are unchanged.
LONGEST_FIRST = (
    "test_degrade.py",
    "test_pkm.py",
    "test_probe.py",
    "test_joint.py",
    "test_in_tool.py",
    "test_multiprocess.py",
    "test_resume.py",
    "test_sharding.py",
    "test_sweep.py",
    "test_golden.py",
)


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_sessionfinish(session) -> None:
    if COMPILATION_CACHE is not None:
        shutil.rmtree(COMPILATION_CACHE, ignore_errors=True)
