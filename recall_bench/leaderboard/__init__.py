"""Leaderboards: validated, versioned collections of run records, with their provenance.

A leaderboard file (JSON Schema in recall_bench/leaderboard_schema.json; the full account,
with what each schema_version changed, is docs/results-schema.md):

  {"format": "recall_bench.leaderboard", "schema_version": 4, "benchmark_version": str,
   "created": ISO time, "entries": [entry, ...]}

Each entry is built from one run record (records.py) by `entry_from_record`:

  id (ids.entry_id: sha256 of what was run (mode, world hash, model architecture, run config
  minus output paths and logging knobs, seed) and of what else moves its metrics (benchmark
  version, device kind, jax and jaxlib versions): the same config rerun alike has the same
  id), run_id, record? (the run record's path, relative to the folder export ran in), created,
  benchmark_version, mode, n_facts, seed, world {kind, spec, hash,
  entropy_bits?}, model {architecture fields..., params {total, non_embedding}}, config (the
  full resolved run config), train {steps, exposures_per_fact, wall_s, compile_s?, converged,
  stop_reason}, metrics {name: finite number} (null metrics of the record are dropped),
  better {metric: "higher" | "lower"}, env {python, jax, jaxlib, flax, optax, orbax, numpy,
  platform, backend?, device_kind, device_count, cpu_count?, git_commit, git_dirty}.

Modules: jsonio (reading untrusted JSON), ids (entry ids), schema (validation), migrate
(older files upgraded on reading), build (export, merge), table (ranked tables), page and
figures (the static browsable page and its plots; page.js/.css/.html are its assets), cli
(the `leaderboard` subcommand).
"""

from recall_bench.leaderboard.build import (
    entry_from_file,
    entry_from_record,
    export,
    find_records,
    merge,
)
from recall_bench.leaderboard.cli import add_leaderboard_parser
from recall_bench.leaderboard.jsonio import LeaderboardError
from recall_bench.leaderboard.schema import (
    FORMAT,
    SCHEMA_VERSION,
    entry_id,
    load_schema,
    validate,
)
from recall_bench.leaderboard.table import format_table, show

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "LeaderboardError",
    "add_leaderboard_parser",
    "entry_from_file",
    "entry_from_record",
    "entry_id",
    "export",
    "find_records",
    "format_table",
    "load_schema",
    "merge",
    "show",
    "validate",
]
