"""Run records: one JSON file per run saying what was run, where, how long, and what came out.

Record layout (schema "recall_bench.record/3"; typed in record_types.py, described in full in
docs/results-schema.md):
  schema, benchmark_version, run_id, created (UTC ISO time), mode, n_facts, bits_per_fact,
  seed, config (the full resolved run config), config_hash (its identity),
  world {kind, spec, hash, entropy_bits}, model {architecture fields},
  params {total, non_embedding},
  train {steps, exposures_per_fact, wall_s, compile_s, converged, stop_reason, ...},
  metrics {name: number} (in-tool's bits under their own names: IN_TOOL_NAMES; the skill
           suite's exact-match accuracies as skill_<skill>_accuracy),
  better {metric name: "higher" | "lower"},
  env {python, jax, jaxlib, flax, optax, orbax, numpy, platform, device_kind, device_count,
       git_commit, git_dirty}, determinism (a sentence).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recall_bench.methods import METHODS
from recall_bench.record_types import Env, Record

RECORD_SCHEMA = "recall_bench.record/3"  # /2: skill accuracies <skill>_accuracy; /1: in-tool's
# bits under in-weight's names (docs/results-schema.md, Versions)
BENCHMARK_VERSION = "0.1.0"

# Direction of every metric a record may carry; leaderboards rank by these.
BETTER = {
    "recall": "higher",
    "recall_trained": "higher",
    "recall_unseen": "higher",
    "token_accuracy": "higher",
    "bits_memorized": "higher",
    "bits_per_param": "higher",
    "bits_per_param_non_embedding": "higher",
    "bits_per_memory_param": "higher",
    "bits_memorized_corrected": "higher",
    "bits_per_param_corrected": "higher",
    "noise_floor_bits_per_fact": "lower",
    "bits_per_active_param": "higher",
    "bits_delivered": "higher",
    "bits_delivered_per_param": "higher",
    "bits_delivered_per_param_non_embedding": "higher",
    "bits_delivered_exceptions": "higher",
    "value_nll_bits": "lower",
    "call_valid": "higher",
    "call_key_accuracy": "higher",
    "copy_accuracy": "higher",
    "recall_rule": "higher",
    "recall_exceptions": "higher",
    "bits_memorized_exceptions": "higher",
    "held_out_rule_accuracy": "higher",
    "held_out_accuracy": "higher",
    "store_errors": "lower",
    "lookup_s": "lower",
    "eval_s": "lower",
    "train_loss": "lower",
    "held_out_loss": "lower",
    "general_accuracy": "higher",
    "general_accuracy_kept": "higher",
    "general_loss": "lower",
    "kl": "lower",
    "tv": "lower",
    # old knowledge, graded skills, consolidation (its measures with and without the store)
    "general_mc_accuracy": "higher",
    "general_mc_kept": "higher",
    "recall_without_store": "higher",
    "bits_without_store": "higher",
    "bits_moved": "higher",
    "recall_through_store": "higher",
    "call_valid_through_store": "higher",
    "old_recall": "higher",
    "old_bits": "higher",
    "old_recall_kept": "higher",
    "tool_recall_fresh": "higher",
    "tool_call_valid_fresh": "higher",
    "tool_recall_fresh_kept": "higher",
    "loss": "lower",
    "old_bits_kept": "higher",
    "dtheta_rel": "lower",  # relative weight change ||dtheta|| / ||theta||
    "context_missing": "lower",  # retrieval-context: prompts whose key the store lacked
}

# In-tool, the prompt holds the store's answer, so the bits formula counts bits delivered with
# the store's help, not bits held in the weights: they carry their own names (record/2 on).
IN_TOOL_NAMES = {
    "bits_memorized": "bits_delivered",
    "bits_per_param": "bits_delivered_per_param",
    "bits_per_param_non_embedding": "bits_delivered_per_param_non_embedding",
    "bits_memorized_exceptions": "bits_delivered_exceptions",
}

# The skill suite's exact-match accuracies before record/3, and their names since: at /1 and /2
# the copy skill's `copy_accuracy` overwrote the in-tool method's (answers copied from the
# store) wherever both were measured. Frozen: the skills that existed then.
OLD_SKILL_NAMES = {
    f"{s}_accuracy": f"skill_{s}_accuracy" for s in ("copy", "reverse", "sort", "add", "brackets")
}
SKILL_SCORE_BLOCKS = (("degrade", "base", "scores"), ("tool_base", "base", "scores"))

# Quantization and probe records (kind "quantization", "probe") hold rows of metrics, with
# one more bits quantity of their own; these blocks of theirs carry the in-tool names.
IN_TOOL_ROW_NAMES = {**IN_TOOL_NAMES, "bits_per_weight_bit": "bits_delivered_per_weight_bit"}
ROW_BLOCKS = {  # where, in each kind of record (paths of keys)
    "quantization": (("widths",),),
    "probe": (("sample",), ("ablation",), ("removal",), ("source", "metrics")),
}

# The leaderboard track of each mode: methods are ranked only against their own track. A
# memory method declares its track (recall_bench/methods); the others are listed here.
TRACKS = {
    **{name: method.track for name, method in METHODS.items()},
    "in-weight+replay": "in-weight-capacity",
    "random-tokens": "in-weight-capacity",
    "in-tool+replay": "in-tool-recall",
}
# Tracks whose bits the prompt delivers (a store's answer, a retrieved fact): named apart.
DELIVERED_TRACKS = frozenset(m.track for m in METHODS.values() if not m.bits_held)

DETERMINISM = (
    "Bitwise identical metrics for the same config and seed on the same machine, device kind "
    "and jax/jaxlib versions. Across device kinds or XLA versions, floating-point reduction "
    "order differs: losses and bits agree to about 1e-4 relative, recall may differ on facts "
    "at the decision boundary."
)

_PACKAGES = {
    "jax": "jax",
    "jaxlib": "jaxlib",
    "flax": "flax",
    "optax": "optax",
    "orbax": "orbax-checkpoint",
    "numpy": "numpy",
}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def environment() -> Env:
    """Versions, platform, devices and git state of this process, read once: a long run
    records the code state it started with, not whatever is checked out when it ends."""
    import jax

    env: Any = {"python": platform.python_version()}
    for name, dist in _PACKAGES.items():
        try:
            env[name] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env[name] = None
    devices = jax.devices()
    env.update(
        platform=f"{platform.system()}-{platform.machine()}",
        backend=jax.default_backend(),
        device_kind=devices[0].device_kind,
        device_count=len(devices),
        cpu_count=os.cpu_count(),
    )
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    env["git_commit"] = commit
    env["git_dirty"] = None if status is None else bool(status)
    return env


# Config and model fields added after runs without them were recorded, with the value those
# runs had: left out of config_hash, leaderboard entry ids and identity checks (checkpoints,
# finished records) while at that value, so an older config rerun or resumed keeps its identity.
ADDED_FIELDS = {"grad_transpose": "input"}


def without_added_defaults(value: Any) -> Any:
    """`value` with every ADDED_FIELDS key that holds its old value dropped, at any depth."""
    if isinstance(value, dict):
        return {
            k: without_added_defaults(v)
            for k, v in value.items()
            if k not in ADDED_FIELDS or ADDED_FIELDS[k] != v
        }
    if isinstance(value, list):
        return [without_added_defaults(v) for v in value]
    return value


def config_hash(config: dict) -> str:
    """A short, stable hash of a resolved config (key order and numpy types do not matter,
    nor an ADDED_FIELDS key at its old value)."""
    text = json.dumps(
        without_added_defaults(clean_json(config)), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def new_record(**fields: Any) -> Record:
    """A record with the provenance fields filled in and the given fields added; `env`
    (default: this process's) is the code state the run's training started from."""
    record: Any = {
        "schema": RECORD_SCHEMA,
        "benchmark_version": BENCHMARK_VERSION,
        "run_id": uuid.uuid4().hex[:12],
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    record.update(fields)
    if "config" in record:
        record["config_hash"] = config_hash(record["config"])
    record["better"] = {k: BETTER[k] for k in record.get("metrics", {}) if k in BETTER}
    record["env"] = dict(record.pop("env", None) or environment())
    record["determinism"] = DETERMINISM
    return record


def clean_json(value: Any) -> Any:
    """numpy scalars/arrays to plain Python; non-finite floats to None (JSON has no NaN)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write JSON to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(clean_json(data), f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; records are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | Path) -> Any:
    """A JSON file's content; a ValueError naming the file if it is cut short or not JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}): it was cut short or "
            "edited; delete it to rerun what wrote it"
        ) from None


def track(mode: object) -> str:
    """The leaderboard track of a mode; "other" for a mode TRACKS does not list."""
    return TRACKS.get(mode, "other") if isinstance(mode, str) else "other"


def delivered_names(metrics: dict[str, Any], names: dict[str, str] = IN_TOOL_NAMES) -> dict:
    """An in-tool run's metrics with its bits under the in-tool names (IN_TOOL_NAMES)."""
    return {names.get(k, k): v for k, v in metrics.items()}


def upgrade_record(record: Record) -> Record:
    """A record as the current schema writes it: /1 as /2 (in-tool bits renamed), /2 as /3
    (skill accuracies renamed: skill_names), the base scores it carries with the /3 names, and
    an in-tool quantization or probe record's
    rows with the in-tool names (they kept the held names until the rows were renamed, within
    /2). Anything else, malformed included, is returned as it is; upgrading twice changes
    nothing."""
    if not isinstance(record, dict):
        return record
    out = dict(record)
    tool = track(record.get("mode")) == "in-tool-recall"
    if record.get("schema") == "recall_bench.record/1":
        for key in ("metrics", "better") if tool else ():
            out = _renamed_at(out, (key,), IN_TOOL_NAMES)
    if record.get("schema") in ("recall_bench.record/1", "recall_bench.record/2"):
        out = _skill_names_of(out)
        out["schema"] = RECORD_SCHEMA
    for path in SKILL_SCORE_BLOCKS:  # a base saved before /3 lent its names to /3 records
        out = _changed_at(out, path, skill_scores)
    kind = record.get("kind")
    for path in ROW_BLOCKS.get(kind, ()) if tool and isinstance(kind, str) else ():
        out = _renamed_at(out, path, IN_TOOL_ROW_NAMES)
    return out


def skill_names(holder: Any) -> Any:
    """A record or leaderboard entry of before record/3 with the skill suite's accuracies under
    their own names (OLD_SKILL_NAMES) in its metrics, where the suite was scored
    (general_accuracy present). Its copy_accuracy was the skill's (the suite was scored after
    the tool, over the tool's copy_accuracy, which is lost: rerun to measure it), except in an
    in-tool cell that took no gradient step (a tool-base store write), which took its base's
    scores and then its tool's over them: there copy_accuracy is the tool's and stays.
    Anything not of that shape as it is."""
    if not isinstance(holder, dict) or not isinstance(holder.get("metrics"), dict):
        return holder
    no_step = _at(holder, ("train", "steps")) == 0 and track(holder.get("mode")) == "in-tool-recall"
    metrics = skill_scores(holder["metrics"], keep_copy=no_step)
    out = {**holder, "metrics": metrics}
    if isinstance(holder.get("better"), dict) and "copy_accuracy" not in metrics:
        out["better"] = {k: v for k, v in holder["better"].items() if k != "copy_accuracy"}
    return out


def skill_scores(scores: Any, keep_copy: bool = False) -> Any:
    """Skill scores (metrics, or a base's scores, a saved base.json's included) with
    OLD_SKILL_NAMES renamed where the suite was scored; with keep_copy, copy_accuracy stays (it
    is the tool's)."""
    if not isinstance(scores, dict) or "general_accuracy" not in scores:
        return scores
    names = {k: v for k, v in OLD_SKILL_NAMES.items() if not (keep_copy and k == "copy_accuracy")}
    return {names.get(k, k): v for k, v in scores.items()}


def _skill_names_of(record: dict) -> dict:
    """A /1 or /2 record with the record/3 skill names in its metrics and in the base scores it
    carries; a tool-base store write gets its skill_copy_accuracy from its base's scores (a
    store write changes no weight)."""
    out = skill_names(record)
    for path in SKILL_SCORE_BLOCKS:
        out = _changed_at(out, path, skill_scores)
    base, metrics = _at(out, ("tool_base", "base", "scores")), out.get("metrics")
    tools = isinstance(metrics, dict) and {"general_accuracy", "copy_accuracy"} <= set(metrics)
    if tools and isinstance(base, dict) and "skill_copy_accuracy" in base:
        out["metrics"] = {**metrics, "skill_copy_accuracy": base["skill_copy_accuracy"]}
    return out


def _at(value: Any, path: tuple[str, ...]) -> Any:
    """The value at `path` of nested dicts, or None."""
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _changed_at(value: Any, path: tuple[str, ...], change: Callable[[Any], Any]) -> Any:
    """`value` with change(the value at `path`); anything not of that shape as it is."""
    if not path:
        return change(value)
    if not isinstance(value, dict) or path[0] not in value:
        return value
    return {**value, path[0]: _changed_at(value[path[0]], path[1:], change)}


def _renamed_at(value: Any, path: tuple[str, ...], names: dict[str, str]) -> Any:
    """`value` with the dict (or each dict of the list) at `path` renamed by `names`;
    anything not of that shape as it is."""
    return _changed_at(value, path, functools.partial(_renamed, names=names))


def _renamed(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, list):
        return [_renamed(v, names) for v in value]
    return delivered_names(value, names) if isinstance(value, dict) else value


def read_record(path: str | Path) -> Record:
    """A run record read from `path`, upgraded to the current schema."""
    return upgrade_record(read_json(path))
