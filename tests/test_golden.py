"""Golden-record regression: pinned metrics of tiny runs must not move silently.
Refresh on purpose: `JAX_PLATFORMS=cpu python tools/refresh_golden.py`."""

import pytest

from recall_bench.regression import GOLDEN, check


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_record(name):
    problems = check(name)
    assert not problems, "\n".join(problems)
