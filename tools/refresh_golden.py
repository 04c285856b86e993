"""Re-run the golden configurations, show what moved (old -> new per pinned field) and
rewrite tests/golden/*.json. Do this on purpose, from a committed tree (the files record the
commit they came from; a dirty tree is refused unless --force), then commit the diff with a
note on why the numbers moved.

    JAX_PLATFORMS=cpu python tools/refresh_golden.py [NAME ...] [--force]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from recall_bench.records import read_json, write_json_atomic
from recall_bench.regression import GOLDEN, GOLDEN_DIR, diff, golden_record

ROOT = Path(__file__).resolve().parent.parent


def dirty() -> bool:
    """Whether tracked files of the repository have uncommitted changes."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return bool(status.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", help=f"golden records (default: all of {sorted(GOLDEN)})"
    )
    parser.add_argument("--force", action="store_true", help="write even from a dirty git tree")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(GOLDEN))
    if unknown:
        print(f"error: no golden record {unknown}: choose from {sorted(GOLDEN)}", file=sys.stderr)
        return 2
    if not args.force and dirty():
        print(
            "error: the git tree has uncommitted changes: commit them first, so that the golden "
            "files name the code they came from (or pass --force)",
            file=sys.stderr,
        )
        return 2
    for name in args.names or sorted(GOLDEN):
        path = GOLDEN_DIR / f"{name}.json"
        old = read_json(path) if path.exists() else None
        new = golden_record(name)
        print(f"{name}:", *diff(old, new), sep="\n")
        write_json_atomic(path, new)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
