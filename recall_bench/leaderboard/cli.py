"""`recall-bench leaderboard {export,validate,merge,show}`: each failure is one `error:` line
(exit 2 for a bad file or record, 1 when the output cannot be written)."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from recall_bench.leaderboard.build import ON_CONFLICT, export, merge
from recall_bench.leaderboard.jsonio import LeaderboardError
from recall_bench.leaderboard.schema import SCHEMA_VERSION, validate
from recall_bench.leaderboard.table import TRACKS, show


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


def _report(result: dict[str, Any], source: str) -> None:
    """Print the conflicts kept past (stderr) and what was written (stdout)."""
    for conflict in result["conflicts"]:
        print(f"conflict: {conflict}", file=sys.stderr)
    kept = f", {len(result['conflicts'])} conflicts kept past" if result["conflicts"] else ""
    print(
        f"wrote {result['out']}: {result['entries']} entries{source} "
        f"({result['duplicates_dropped']} duplicate ids dropped{kept})"
    )


@_guard
def cli_export(args: argparse.Namespace) -> int:
    """`leaderboard export RUN_DIRS... -o FILE [--on-conflict POLICY]`."""
    result = export(list(args.run_dirs), args.out, args.on_conflict)
    _report(result, f" from {result['records']} records")
    return 0


@_guard
def cli_validate(args: argparse.Namespace) -> int:
    """`leaderboard validate FILE`."""
    doc = validate(args.file)
    print(
        f"ok: {args.file}: {len(doc['entries'])} entries, valid as schema_version {SCHEMA_VERSION}"
    )
    return 0


@_guard
def cli_merge(args: argparse.Namespace) -> int:
    """`leaderboard merge A B -o C [--on-conflict POLICY]`."""
    _report(merge(args.a, args.b, args.out, args.on_conflict), "")
    return 0


@_guard
def cli_show(args: argparse.Namespace) -> int:
    """`leaderboard show FILE [--markdown] [--sort METRIC] [--mode MODE] [--track TRACK]`."""
    sys.stdout.write(show(args.file, args.markdown, args.sort, args.mode, args.track))
    return 0


def _add_on_conflict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--on-conflict",
        choices=ON_CONFLICT,
        default="refuse",
        help="entries with the same id but different metrics: refuse (default, exit 2, "
        "nothing written), or report them and keep the newer (keep-newest) or the first "
        "seen (keep-first)",
    )


def add_leaderboard_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `leaderboard {export,validate,merge,show}` to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "leaderboard", help="export, validate, merge and show leaderboards"
    )
    sub = parser.add_subparsers(dest="leaderboard_command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="leaderboard from run folders (searched for record.json)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder or record file")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="leaderboard to write")
    _add_on_conflict(p)
    p.set_defaults(func=cli_export)

    p = sub.add_parser("validate", help="check a leaderboard file against the schema")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=cli_validate)

    p = sub.add_parser("merge", help="union of two leaderboards (one entry per id)")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="leaderboard to write")
    _add_on_conflict(p)
    p.set_defaults(func=cli_merge)

    p = sub.add_parser("show", help="ranked tables of a leaderboard, one per track")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--markdown", action="store_true", help="GitHub markdown tables")
    p.add_argument(
        "--sort",
        metavar="METRIC",
        help="rank by (default: bits_per_param for in-weight capacity and side memory, recall "
        "for in-tool recall)",
    )
    p.add_argument("--mode", metavar="MODE", help="only entries of this mode (e.g. in-weight)")
    p.add_argument("--track", choices=list(TRACKS), help="only entries of this track")
    p.set_defaults(func=cli_show)
    return parser
