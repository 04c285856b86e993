"""`recall-bench leaderboard {export,validate,merge,show}`: each failure is one `error:` line
(exit 2 for a bad file or record, 1 when the output cannot be written)."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from recall_bench.leaderboard.build import export_counts, merge
from recall_bench.leaderboard.jsonio import LeaderboardError
from recall_bench.leaderboard.schema import SCHEMA_VERSION, validate
from recall_bench.leaderboard.table import show


def _fail(error: object, code: int) -> int:
    message = " ".join(str(error).split()).encode("utf-8", "backslashreplace").decode()
    print(f"error: {message}", file=sys.stderr)
    return code


def _guard(func: Any) -> Any:
    """Run a CLI command: LeaderboardError -> exit 2, a write failure -> exit 1, one line."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except LeaderboardError as e:
            return _fail(e, 2)
        except OSError as e:
            target = getattr(args, "out", None) or e.filename or ""
            return _fail(f"cannot write {target}: {e.strerror or e}", 1)

    return run


@_guard
def cli_export(args: argparse.Namespace) -> int:
    """`leaderboard export RUN_DIRS... -o FILE`."""
    doc, n_records, dropped = export_counts(list(args.run_dirs), args.out)
    print(
        f"wrote {args.out}: {len(doc['entries'])} entries from {n_records} records "
        f"({dropped} duplicate ids dropped)"
    )
    return 0


@_guard
def cli_validate(args: argparse.Namespace) -> int:
    """`leaderboard validate FILE`."""
    doc = validate(args.file)
    print(f"ok: {args.file}: {len(doc['entries'])} entries, schema_version {SCHEMA_VERSION}")
    return 0


@_guard
def cli_merge(args: argparse.Namespace) -> int:
    """`leaderboard merge A B -o C`."""
    result = merge(args.a, args.b, args.out)
    print(
        f"wrote {result['out']}: {result['entries']} entries "
        f"({result['duplicates_dropped']} duplicates dropped)"
    )
    return 0


@_guard
def cli_show(args: argparse.Namespace) -> int:
    """`leaderboard show FILE [--markdown] [--sort METRIC] [--mode MODE]`."""
    sys.stdout.write(show(args.file, args.markdown, args.sort, args.mode))
    return 0


def add_leaderboard_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `leaderboard {export,validate,merge,show}` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "leaderboard", help="export, validate, merge and show leaderboards"
    )
    sub = parser.add_subparsers(dest="leaderboard_command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="leaderboard from run folders (searched for record.json)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder or record file")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="leaderboard to write")
    p.set_defaults(func=cli_export)

    p = sub.add_parser("validate", help="check a leaderboard file against the schema")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cli_validate)

    p = sub.add_parser("merge", help="union of two leaderboards (newer duplicate kept)")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="leaderboard to write")
    p.set_defaults(func=cli_merge)

    p = sub.add_parser("show", help="ranked table of a leaderboard")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--markdown", action="store_true", help="GitHub markdown table")
    p.add_argument("--sort", default="recall", metavar="METRIC", help="rank by (default recall)")
    p.add_argument("--mode", metavar="MODE", help="only entries of this mode (e.g. in-weight)")
    p.set_defaults(func=cli_show)
    return parser
