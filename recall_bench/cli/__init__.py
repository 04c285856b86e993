"""The `recall-bench` command: one module per subcommand, shared argument types in args.py."""

from recall_bench.cli.args import int_list
from recall_bench.cli.main import build_parser, main
from recall_bench.cli.run import format_record

__all__ = ["build_parser", "format_record", "int_list", "main"]
