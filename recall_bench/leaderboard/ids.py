"""Entry ids: sha256 of the canonical JSON of what was run and of what else moves its metrics,
so the same id with different metrics means a rerun did not reproduce."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from recall_bench.records import without_added_defaults

# Config keys that say where output goes or how chatty a run is, not what was run; they are
# left out of the entry id (at any depth of the config).
VOLATILE_CONFIG_KEYS = frozenset(
    {
        "out",
        "out_dir",
        "output",
        "output_dir",
        "run_dir",
        "log_dir",
        "checkpoint_dir",
        "ckpt_dir",
        "resume",
        "verbose",
        "quiet",
        "progress",
        "log_every",
    }
)


def _strip_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_volatile(v) for k, v in value.items() if k not in VOLATILE_CONFIG_KEYS}
    if isinstance(value, list):
        return [_strip_volatile(v) for v in value]
    return value


def _canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else None


def what_ran(entry: Any) -> dict[str, Any]:
    """Mode, world hash, model architecture, config (minus output paths and logging knobs) and
    seed of an entry: schema_version 1's whole id. Fields added since at the value older runs
    had (records.ADDED_FIELDS) are left out, so such a rerun keeps its id. Safe on malformed
    entries."""
    model = _get(entry, "model")
    if isinstance(model, dict):
        model = {k: v for k, v in model.items() if k != "params"}
    return {
        "mode": _get(entry, "mode"),
        "world_hash": _get(_get(entry, "world"), "hash"),
        "model": without_added_defaults(model),
        "config": without_added_defaults(_strip_volatile(_get(entry, "config"))),
        "seed": _get(entry, "seed"),
    }


def digest(payload: Any) -> str:
    """sha256 of the canonical JSON of a parsed JSON value."""
    return hashlib.sha256(_canonical(payload)).hexdigest()


def entry_id(entry: Any) -> str:
    """sha256 over what was run and what else moves its metrics (the benchmark version, the
    device kind, the jax and jaxlib versions), not over what came out nor where it was written.
    The same id with different metrics means a rerun did not reproduce."""
    env = _get(entry, "env")
    return digest(
        {
            **what_ran(entry),
            "benchmark_version": _get(entry, "benchmark_version"),
            "device_kind": _get(env, "device_kind"),
            "jax": _get(env, "jax"),
            "jaxlib": _get(env, "jaxlib"),
        }
    )
