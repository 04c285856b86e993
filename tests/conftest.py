"""Tests run on CPU, deterministically; hypothesis too: a fixed, derandomized profile, so a
failure found once (in CI or here) reproduces on every run."""

import os

from hypothesis import settings

os.environ.setdefault("JAX_PLATFORMS", "cpu")

settings.register_profile(
    "recall_bench", derandomize=True, deadline=None, max_examples=50, print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "recall_bench"))

# The files that take longest (measured on the 2-core CI machine), longest first: the two
# xdist workers take whole files in collection order, so these start first and the workers
# finish together. Order inside a file, and every test, are unchanged.
LONGEST_FIRST = (
    "test_resume.py",
    "test_multiprocess.py",
    "test_sharding.py",
    "test_joint.py",
    "test_pkm.py",
    "test_in_tool.py",
    "test_degrade.py",
    "test_sweep.py",
    "test_golden.py",
)


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
