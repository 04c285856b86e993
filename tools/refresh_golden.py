"""Re-run the golden configurations and rewrite tests/golden/*.json (do this on purpose,
then commit the diff with a note on why the numbers moved).

    JAX_PLATFORMS=cpu python tools/refresh_golden.py [NAME ...]
"""

import sys

from recall_bench.regression import refresh

if __name__ == "__main__":
    for path in refresh(sys.argv[1:] or None):
        print(f"wrote {path}")
