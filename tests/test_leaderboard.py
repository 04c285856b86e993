"""Leaderboard export, validation, merge and display; hostile input is a LeaderboardError."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recall_bench import leaderboard as lb
from recall_bench import records, worlds
from recall_bench.leaderboard import LeaderboardError, build, jsonio

# ---------------------------------------------------------------- fake but realistic records


def make_record(
    out_dir: Path,
    *,
    n_facts: int = 1000,
    width: int = 32,
    layers: int = 2,
    seed: int = 0,
    dtype: str = "float32",
    mode: str = "in-weight",
    recall: float = 0.9,
    created: str | None = None,
) -> dict[str, Any]:
    """A record shaped like an in-weight (or in-tool) run, written to out_dir/record.json."""
    spec = worlds.FactSpec(n_entities=n_facts, seed=seed)
    model = {
        "vocab_size": 140,
        "max_len": 8,
        "layers": layers,
        "width": width,
        "heads": 4,
        "mlp_ratio": 4,
        "dtype": dtype,
    }
    embedding = 140 * width + 8 * width
    non_embedding = layers * 12 * width * width
    train_cfg = {"steps": 3000, "batch_size": 128, "lr": 1e-2, "steps_per_call": 25}
    config = {
        "mode": mode,
        "world": dataclasses.asdict(spec),
        "model": model,
        "train": train_cfg,
        "seed": seed,
        "out_dir": str(out_dir),  # where it ran must not change the id
        "progress": False,
    }
    bits = recall * spec.entropy_bits
    total = embedding + non_embedding
    metrics: dict[str, Any] = {
        "recall": recall,
        "recall_trained": recall,
        "token_accuracy": min(1.0, recall + 0.05),
        "bits_memorized": bits,
        "bits_per_param": bits / total,
        "bits_per_param_non_embedding": bits / non_embedding,
        "value_nll_bits": None,  # non-finite in the run: written as null
        "eval_s": 0.25,
    }
    if mode == "in-tool":  # bits delivered with the store's help, as run.evaluate names them
        metrics.update(recall_unseen=recall, call_valid=1.0, call_key_accuracy=recall)
        metrics = records.delivered_names(metrics)
    record = records.new_record(
        mode=mode,
        n_facts=spec.n_facts,
        bits_per_fact=spec.bits_per_fact,
        seed=seed,
        config=config,
        world={
            "kind": "fact",
            "spec": dataclasses.asdict(spec),
            "hash": worlds.spec_hash(spec),
            "entropy_bits": spec.entropy_bits,
        },
        model=model,
        params={"total": total, "non_embedding": non_embedding},
        train={
            "steps": 2400,
            "exposures_per_fact": 2400 * 128 / spec.n_facts,
            "wall_s": 12.5,
            "compile_s": 3.1,
            "converged": True,
            "stop_reason": "recall",
            "history": [{"step": 100, "loss": 3.2, "recall": 0.1}],
        },
        metrics=metrics,
    )
    if created is not None:
        record["created"] = created
    records.write_json_atomic(out_dir / "record.json", record)
    return record


@pytest.fixture(scope="session")
def board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid leaderboard exported from a small sweep (3 cells) and one in-tool run."""
    root = tmp_path_factory.mktemp("runs")
    for i, (width, recall) in enumerate([(16, 0.5), (32, 0.9), (64, 0.7)]):
        make_record(root / "sweep" / f"cell{i}", width=width, recall=recall)
    make_record(root / "tool", mode="in-tool", recall=0.95)
    out = root / "board.json"
    lb.export([root], out)
    return out


# ---------------------------------------------------------------- entries and export


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(lb.load_schema())


def test_entry_from_record(tmp_path: Path) -> None:
    record = make_record(tmp_path / "a")
    entry = lb.entry_from_record(record)
    assert set(entry) == {
        "id",
        "run_id",
        "created",
        "benchmark_version",
        "mode",
        "track",
        "n_facts",
        "seed",
        "world",
        "model",
        "config",
        "train",
        "metrics",
        "better",
        "env",
    }
    assert entry["model"]["params"] == record["params"]
    assert entry["model"]["width"] == 32 and entry["model"]["dtype"] == "float32"
    assert "value_nll_bits" not in entry["metrics"]  # null metric dropped
    assert set(entry["better"]) <= set(entry["metrics"])
    assert entry["better"]["recall"] == "higher"
    assert "history" not in entry["train"]
    assert re.fullmatch(r"[0-9a-f]{64}", entry["id"])

    # Same config, run again elsewhere: same id. Another seed: another id.
    again = lb.entry_from_record(make_record(tmp_path / "b", recall=0.8))
    assert again["id"] == entry["id"] and again["run_id"] != entry["run_id"]
    other = lb.entry_from_record(make_record(tmp_path / "c", seed=1))
    assert other["id"] != entry["id"]


def test_entry_from_bad_record_names_the_field(tmp_path: Path) -> None:
    record = make_record(tmp_path)
    record["metrics"]["recall"] = 1.7
    with pytest.raises(LeaderboardError, match=r"metrics\.recall: 1\.7 is above 1"):
        lb.entry_from_record(record)
    del record["params"]
    with pytest.raises(LeaderboardError, match=r"model\.params: missing required field"):
        lb.entry_from_record(record)
    with pytest.raises(LeaderboardError, match=re.escape("not 'recall_bench.record/3'")):
        lb.entry_from_record({"schema": "other"})


def test_export_validate_merge_round_trip(tmp_path: Path, board: Path) -> None:
    doc = lb.validate(board)
    assert doc["format"] == lb.FORMAT and doc["schema_version"] == lb.SCHEMA_VERSION
    assert len(doc["entries"]) == 4
    assert lb.find_records([board.parent / "sweep"])[0].name == "record.json"

    same = lb.merge(board, board, tmp_path / "same.json")
    assert same["duplicates_dropped"] == 4 and same["entries"] == 4
    assert lb.validate(tmp_path / "same.json")["entries"] == doc["entries"]

    make_record(tmp_path / "more" / "x", n_facts=2000)
    make_record(tmp_path / "more" / "y", n_facts=4000, dtype="bfloat16")
    other = tmp_path / "other.json"
    lb.export(tmp_path / "more", other)
    union = lb.merge(board, other, tmp_path / "union.json")
    assert union["entries"] == 6 and union["duplicates_dropped"] == 0
    ids = {e["id"] for e in lb.validate(tmp_path / "union.json")["entries"]}
    assert ids == {e["id"] for e in doc["entries"]} | {
        e["id"] for e in lb.validate(other)["entries"]
    }


def test_duplicates_keep_the_newer(tmp_path: Path) -> None:
    """The same id with the same metrics: one entry, the newer record's."""
    make_record(tmp_path / "old", created="2025-01-01T00:00:00+00:00")
    new = make_record(tmp_path / "new", created="2025-02-01T00:00:00+00:00")
    result = lb.export(tmp_path, tmp_path / "one.json")
    assert result["duplicates_dropped"] == 1 and not result["conflicts"]
    assert [e["run_id"] for e in result["leaderboard"]["entries"]] == [new["run_id"]]


def test_conflicts_refuse_or_are_reported(tmp_path: Path) -> None:
    """The same id with different metrics: refused by default (nothing written), naming the
    id and the metrics; with keep-newest / keep-first reported and resolved."""
    make_record(tmp_path / "1-old", recall=0.5, created="2025-01-01T00:00:00+00:00")
    make_record(tmp_path / "2-new", recall=0.6, created="2025-02-01T00:00:00+00:00")
    entry = lb.entry_from_record(records.read_json(tmp_path / "1-old" / "record.json"))
    with pytest.raises(LeaderboardError) as e:
        lb.export(tmp_path, tmp_path / "one.json")
    message = str(e.value)
    assert f"id {entry['id'][:12]} (in-weight, 1000 facts, seed 0," in message
    assert "recall 0.5 vs 0.6" in message and "bits_memorized" in message
    assert "eval_s" not in message and "\n" not in message and "--on-conflict" in message
    assert not (tmp_path / "one.json").exists()

    lb.export(tmp_path / "1-old", tmp_path / "a.json")
    lb.export(tmp_path / "2-new", tmp_path / "b.json")
    for a, b in [("a.json", "b.json"), ("b.json", "a.json")]:
        out = tmp_path / f"{a}+{b}"
        with pytest.raises(LeaderboardError, match=re.escape(entry["id"][:12])):
            lb.merge(tmp_path / a, tmp_path / b, out)
        assert not out.exists()
        newest = lb.merge(tmp_path / a, tmp_path / b, out, "keep-newest")
        first = lb.merge(tmp_path / a, tmp_path / b, out, "keep-first")
        assert newest["duplicates_dropped"] == 1 and len(newest["conflicts"]) == 1
        assert [e["metrics"]["recall"] for e in newest["leaderboard"]["entries"]] == [0.6]
        expected = 0.5 if a == "a.json" else 0.6
        assert [e["metrics"]["recall"] for e in first["leaderboard"]["entries"]] == [expected]


def test_id_names_what_moves_a_metric(tmp_path: Path) -> None:
    """Device kind, jax versions and benchmark version are in the id; where a run wrote is not."""
    record = make_record(tmp_path / "a")
    base = lb.entry_from_record(record)["id"]
    assert lb.entry_from_record(make_record(tmp_path / "b"))["id"] == base
    for field, value in [
        (("env", "device_kind"), "NVIDIA H200"),
        (("env", "jaxlib"), "0.0.1"),
        (("benchmark_version",), "9.9.9"),
        (("config", "train", "lr"), 3e-3),
    ]:
        other = copy.deepcopy(record)
        _set(other, field, value)
        assert lb.entry_from_record(other)["id"] != base, field
    for field, value in [(("env", "git_commit"), "abcdef1"), (("env", "cpu_count"), 99)]:
        other = copy.deepcopy(record)
        _set(other, field, value)
        assert lb.entry_from_record(other)["id"] == base, field


def test_joint_cells_of_two_mixtures_differ(tmp_path: Path) -> None:
    """A joint-protocol cell's id holds its mixture, not the sweep that listed it: two general
    fractions give two ids; another list of fact counts or seeds in the sweep gives the same."""
    record = make_record(tmp_path)
    mixture = {"general_fraction": 0.5, "zipf": 1.0, "fact_counts": [32, 4096], "seeds": [0, 1]}
    record.update(protocol="joint", joint={"config": mixture})
    base = lb.entry_from_record(record)["id"]
    other = copy.deepcopy(record)
    other["joint"]["config"].update(fact_counts=[4096], seeds=[0])
    assert lb.entry_from_record(other)["id"] == base
    other["joint"]["config"]["general_fraction"] = 0.25
    assert lb.entry_from_record(other)["id"] != base


def test_export_without_records(tmp_path: Path) -> None:
    with pytest.raises(LeaderboardError, match=re.escape("no record.json found")):
        lb.export(tmp_path, tmp_path / "out.json")


# ---------------------------------------------------------------- hostile input


def test_specific_rejections(tmp_path: Path, board: Path) -> None:
    doc = json.loads(board.read_text())
    cases: list[tuple[str, Any]] = []

    d = copy.deepcopy(doc)
    d["entries"][1] = copy.deepcopy(d["entries"][0])
    cases.append((re.escape("entries[1].id: duplicate of entries[0].id"), d))
    d = copy.deepcopy(doc)
    d["schema_version"] = True
    cases.append(("schema_version: true is not supported", d))
    d = copy.deepcopy(doc)
    d["entries"][0]["n_facts"] = 1000.0
    cases.append((r"entries\[0\]\.n_facts: expected integer, got number", d))
    d = copy.deepcopy(doc)
    d["entries"][0]["mode"] += "\n"
    cases.append((r"entries\[0\]\.mode: .* does not match", d))
    d = copy.deepcopy(doc)
    d["entries"][2]["metrics"]["recall"] = 1.7
    cases.append((r"entries\[2\]\.metrics\.recall: 1\.7 is above 1", d))
    d = copy.deepcopy(doc)
    d["entries"][0]["model"]["params"]["non_embedding"] = 10**9
    cases.append((re.escape("non_embedding: 1000000000 is above model.params.total"), d))
    d = copy.deepcopy(doc)
    d["entries"][0]["better"]["recall"] = "lower"
    cases.append(("always 'higher'-is-better", d))
    d = copy.deepcopy(doc)
    d["entries"][0]["created"] = "2025-01-01T00:00:00"
    cases.append(("with a timezone", d))
    d = copy.deepcopy(doc)
    d["entries"][0]["model"]["width"] = 48
    cases.append((r"entries\[0\]\.id: does not match", d))
    for pattern, bad in cases:
        with pytest.raises(LeaderboardError, match=pattern):
            lb.validate(bad)

    path = tmp_path / "x.json"
    for text, pattern in [
        (board.read_text().replace('"eval_s": 0.25', '"eval_s": NaN'), "NaN is not valid JSON"),
        (board.read_text().replace('"eval_s": 0.25', '"eval_s": 1e999'), "1e999 overflows"),
        ('{"format": "recall_bench.leaderboard", "format": 1}', "duplicate key"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ]:
        path.write_text(text)
        with pytest.raises(LeaderboardError, match=pattern):
            lb.validate(path)
    with pytest.raises(LeaderboardError, match="not a JSON value"):
        lb.validate({"format": float("nan")})
    with pytest.raises(LeaderboardError, match="no such file"):
        lb.validate(tmp_path / "missing.json")
    for bad_path in ("bad\0path.json", str(tmp_path)):
        with pytest.raises(LeaderboardError):
            lb.validate(bad_path)


def test_oversized_file_rejected_before_reading(
    board: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_open(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("opened a file over the limit")

    monkeypatch.setattr(jsonio, "MAX_BYTES", 1000)
    monkeypatch.setattr(jsonio, "open", no_open, raising=False)
    with pytest.raises(LeaderboardError, match="over the 1000-byte limit"):
        lb.validate(board)


_ENTRY_TYPES: dict[tuple[str, ...], set[str]] = {
    ("id",): {"str"},
    ("run_id",): {"str"},
    ("created",): {"str"},
    ("benchmark_version",): {"str"},
    ("mode",): {"str"},
    ("n_facts",): {"int"},
    ("seed",): {"int"},
    ("world",): {"dict"},
    ("world", "kind"): {"str"},
    ("world", "spec"): {"dict"},
    ("world", "hash"): {"str"},
    ("world", "entropy_bits"): {"int", "float"},
    ("model",): {"dict"},
    ("model", "layers"): {"int"},
    ("model", "width"): {"int"},
    ("model", "heads"): {"int"},
    ("model", "mlp_ratio"): {"int", "float"},
    ("model", "dtype"): {"str"},
    ("model", "params"): {"dict"},
    ("model", "params", "total"): {"int"},
    ("model", "params", "non_embedding"): {"int"},
    ("config",): {"dict"},
    ("train",): {"dict"},
    ("train", "steps"): {"int"},
    ("train", "exposures_per_fact"): {"int", "float", "NoneType"},
    ("train", "wall_s"): {"int", "float"},
    ("train", "converged"): {"bool"},
    ("train", "stop_reason"): {"str", "NoneType"},
    ("metrics",): {"dict"},
    ("metrics", "recall"): {"int", "float"},
    ("metrics", "eval_s"): {"int", "float"},
    ("better",): {"dict"},
    ("better", "recall"): {"str"},
    ("env",): {"dict"},
    ("env", "jax"): {"str", "NoneType"},
    ("env", "device_count"): {"int"},
    ("env", "git_commit"): {"str", "NoneType"},
    ("env", "git_dirty"): {"bool", "NoneType"},
}
_TOP_TYPES: dict[tuple[str, ...], set[str]] = {
    ("format",): {"str"},
    ("schema_version",): {"int"},
    ("benchmark_version",): {"str"},
    ("created",): {"str"},
    ("entries",): {"list"},
}
_REQUIRED = [p for p in _ENTRY_TYPES if p[-1] not in ("entropy_bits", "heads", "mlp_ratio")]
_REQUIRED = [p for p in _REQUIRED if p[0] not in ("metrics", "better") or len(p) == 1]
_POOL = [None, True, False, 0, 7, 2.0, 0.5, "x", "", [], [1], {}, {"a": 1}]
_FRACTIONS = ["recall", "recall_trained", "token_accuracy"]
_HUGE = "__HUGE_LITERAL__"


def _kind(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return "float"  # 2.0 is not an integer here
    return type(value).__name__


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def _nested(depth: int, as_dict: bool) -> Any:
    junk: Any = 1
    for _ in range(depth):
        junk = {"k": junk} if as_dict else [junk]
    return junk


@st.composite
def corruptions(draw: st.DrawFn, text: str) -> bytes:
    """A corrupted leaderboard file (never a valid one)."""
    doc = json.loads(text)
    n = len(doc["entries"])
    i = draw(st.integers(0, n - 1))
    kind = draw(
        st.sampled_from(
            [
                "delete",
                "type",
                "metric",
                "version",
                "recall",
                "params",
                "junk",
                "deep_text",
                "truncate",
                "insert",
                "format",
            ]
        )
    )
    if kind == "delete":
        top = draw(st.booleans())
        path = draw(st.sampled_from(list(_TOP_TYPES) if top else _REQUIRED))
        target = doc if top else doc["entries"][i]
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    elif kind == "type":
        top = draw(st.booleans())
        table = _TOP_TYPES if top else _ENTRY_TYPES
        path = draw(st.sampled_from(list(table)))
        value = draw(st.sampled_from([v for v in _POOL if _kind(v) not in table[path]]))
        _set(doc, path if top else ("entries", i, *path), copy.deepcopy(value))
    elif kind == "metric":
        name = draw(st.sampled_from(sorted(doc["entries"][i]["metrics"])))
        bad = [float("nan"), float("inf"), -float("inf"), _HUGE, 10**30, -(10**30), True, False]
        bad += ["0.5", None, [], {}]
        if name in _FRACTIONS or name == "bits_memorized":
            bad += [-0.5, -1]
        if name in _FRACTIONS:
            bad += [1.0001, 2]
        _set(doc, ("entries", i, "metrics", name), draw(st.sampled_from(bad)))
    elif kind == "version":
        doc["schema_version"] = draw(
            st.one_of(
                st.integers().filter(lambda v: v not in (2, 3)),  # a version 2 file is valid as 3
                st.sampled_from([True, 1.0, "1", None, [1]]),
            )
        )
    elif kind == "recall":
        value = draw(st.floats(min_value=1, max_value=1e12, exclude_min=True))
        _set(doc, ("entries", i, "metrics", "recall"), value)
    elif kind == "params":
        field = draw(st.sampled_from(["total", "non_embedding"]))
        _set(doc, ("entries", i, "model", "params", field), draw(st.integers(-(2**62), -1)))
    elif kind == "junk":
        junk = _nested(draw(st.integers(15, 60)), draw(st.booleans()))
        where = draw(st.sampled_from([("config",), ("world", "spec"), ("model", "params")]))
        target = doc["entries"][i]
        for key in where:
            target = target[key]
        target["junk"] = junk
    out = json.dumps(doc, indent=2).replace(f'"{_HUGE}"', "1e999")
    data = out.encode()
    if kind == "deep_text":
        depth = draw(st.integers(17, 5000))
        data = data.replace(b'"steps": ', b'"steps": ' + b"[" * depth + b"0" + b"]" * depth, 1)
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data.rstrip()) - 1))]
    elif kind == "insert":
        poison = draw(st.sampled_from([*range(0, 9), 0x0B, 0x0C, *range(0x0E, 0x20), 0xFF]))
        junk = draw(st.binary(max_size=20)) + bytes([poison])
        at = draw(st.integers(0, len(data)))
        data = data[:at] + junk + data[at:]
    elif kind == "format":
        data = data.replace(b'"recall_bench.leaderboard"', draw(st.sampled_from([b'"x"', b"1"])))
    return data


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corruptions_are_rejected(board: Path, data: st.DataObject) -> None:
    bad = data.draw(corruptions(board.read_text()))
    path = _write(board.parent / "corrupt.json", bad)
    with pytest.raises(LeaderboardError) as e:
        lb.validate(path)
    message = str(e.value)
    assert message.strip() and "\n" not in message


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_random_mutations_never_crash(board: Path, data: st.DataObject) -> None:
    """Random byte edits may or may not stay valid; only LeaderboardError may come out."""
    raw = board.read_bytes()
    at = data.draw(st.integers(0, len(raw)))
    cut = data.draw(st.integers(0, 8))
    new = data.draw(st.binary(max_size=8))
    path = _write(board.parent / "mutated.json", raw[:at] + new + raw[at + cut :])
    try:
        assert isinstance(lb.validate(path), dict)
    except LeaderboardError as e:
        assert str(e).strip()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)


@settings(max_examples=100, deadline=None)
@given(value=_JSON, where=st.sampled_from(["top", "entry", "metrics", "model", "env"]))
def test_arbitrary_objects_never_crash(board: Path, value: Any, where: str) -> None:
    """Any Python value, alone or in place of part of a valid board: only LeaderboardError."""
    doc = json.loads(board.read_text())
    if where == "top":
        doc = value
    elif where == "entry":
        doc["entries"][0] = value
    else:
        doc["entries"][0][where] = value
    try:
        assert isinstance(lb.validate(doc), dict)
    except LeaderboardError as e:
        assert str(e).strip()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every field under `value` (not the top level itself)."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    out = []
    for key, item in items:
        out.append((*prefix, key))
        if isinstance(item, (dict, list)):
            out += _paths(item, (*prefix, key))
    return out


@pytest.mark.parametrize("version", [3, 1])
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_random_field_edits_are_valid_or_one_clear_error(
    board: Path, version: int, data: st.DataObject
) -> None:
    """Delete or replace any field of a valid file (current, or version 1 read through the
    migration): it stays valid, or validate raises one LeaderboardError on one line."""
    doc = json.loads((board if version == 3 else V1_BOARD).read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(data.draw(st.sampled_from(_POOL)))
    path = _write(board.parent / "edited.json", json.dumps(doc).encode())
    try:
        assert lb.validate(path)["schema_version"] == lb.SCHEMA_VERSION
    except LeaderboardError as e:
        message = str(e)
        assert message.startswith(str(path)) and "\n" not in message


def test_valid_file_passes(board: Path) -> None:
    doc = lb.validate(board)
    assert lb.validate(doc) == doc  # a parsed object validates too


# ---------------------------------------------------------------- older versions

# Real files from before schema_version 2 / record/2: two entries of the committed version 1
# leaderboard (the default benchmark's 256-fact cells) and the in-tool cell's record.
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
V1_BOARD = FIXTURES / "leaderboard_v1.json"
V1_RECORD = FIXTURES / "record_v1_in_tool.json"
# Four entries of the committed version 3 leaderboard: a retrieval-context run, degrade in-tool
# and in-weight cells, a tool-base store write.
V3_BOARD = FIXTURES / "leaderboard_v3.json"


def test_version_1_file_is_upgraded() -> None:
    old = json.loads(V1_BOARD.read_text())
    assert old["schema_version"] == 1
    doc = lb.validate(V1_BOARD)
    assert doc["schema_version"] == lb.SCHEMA_VERSION == 4
    for before, after in zip(old["entries"], doc["entries"], strict=True):
        assert after["id"] == lb.entry_id(after) != before["id"]
        assert after["run_id"] == before["run_id"] and after["config"] == before["config"]
        if before["mode"] == "in-tool":
            assert after["track"] == "in-tool-recall"
            renamed = {records.IN_TOOL_NAMES.get(k, k): v for k, v in before["metrics"].items()}
            assert after["metrics"] == renamed  # same numbers, in-tool names
            assert after["metrics"]["bits_delivered"] == before["metrics"]["bits_memorized"]
            assert "bits_memorized" not in after["metrics"]
            assert after["better"]["bits_delivered_per_param"] == "higher"
        else:
            assert after["track"] == "in-weight-capacity"
            assert after["metrics"] == before["metrics"]


def test_version_1_record_gives_the_upgraded_entry() -> None:
    """Upgrading the record (record/1 -> /2) and upgrading the file agree on the entry."""
    record = json.loads(V1_RECORD.read_text())
    upgraded = records.upgrade_record(record)
    assert record["schema"] == "recall_bench.record/1" and "bits_memorized" in record["metrics"]
    assert upgraded["schema"] == records.RECORD_SCHEMA
    assert upgraded["metrics"]["bits_delivered"] == record["metrics"]["bits_memorized"]
    assert records.upgrade_record(upgraded) == upgraded
    entry = lb.entry_from_record(record)
    from_file = [e for e in lb.validate(V1_BOARD)["entries"] if e["run_id"] == record["run_id"]]
    assert from_file == [entry]


def test_version_1_edits_are_caught(tmp_path: Path) -> None:
    doc = json.loads(V1_BOARD.read_text())
    doc["entries"][0]["model"]["width"] = 48
    with pytest.raises(LeaderboardError, match=r"entries\[0\]\.id: .*\(schema_version 1\)"):
        lb.validate(doc)
    doc = json.loads(V1_BOARD.read_text())
    doc["entries"][1]["metrics"]["recall"] = 0.5  # results are not in the id: still valid
    assert lb.validate(doc)["entries"][1]["metrics"]["recall"] == 0.5
    for bad, pattern in [(0, "is not supported"), (5, "is not supported")]:
        doc["schema_version"] = bad
        with pytest.raises(LeaderboardError, match=pattern):
            lb.validate(doc)


def test_version_3_file_is_upgraded() -> None:
    """A version 3 file validates as version 4: the retrieval-context track kept, ids and
    numbers unchanged, the skill suite's accuracies under the record/3 names, as its records
    give them today (a store write's entry cannot recover its base's skill_copy_accuracy)."""
    old = json.loads(V3_BOARD.read_text())
    assert old["schema_version"] == 3
    doc = lb.validate(V3_BOARD)
    assert doc["schema_version"] == lb.SCHEMA_VERSION == 4
    retrieval, tool, store_write, weight = doc["entries"]
    assert retrieval["track"] == "retrieval-context" and retrieval == old["entries"][0]
    for before, after in zip(old["entries"], doc["entries"], strict=True):
        assert after["id"] == before["id"] == lb.entry_id(after)
        assert sorted(after["metrics"].values()) == sorted(before["metrics"].values())
        path = ROOT / after["record"]
        if after is store_write:  # its record as it was (since regenerated with more measures)
            path = Path(__file__).parent / "fixtures" / "record_v2_tool_base_store_write.json"
        fresh = lb.entry_from_file(path)["metrics"]
        if after is store_write:  # the record has it from its base's scores; the entry cannot
            del fresh["skill_copy_accuracy"]
        assert after["metrics"] == fresh
    before = old["entries"][1]["metrics"]
    assert tool["metrics"]["skill_copy_accuracy"] == before["copy_accuracy"]  # the skill's
    assert "copy_accuracy" not in tool["metrics"] and "copy_accuracy" not in tool["better"]
    assert store_write["metrics"]["copy_accuracy"] == old["entries"][2]["metrics"]["copy_accuracy"]
    assert weight["metrics"]["skill_sort_accuracy"] == old["entries"][3]["metrics"]["sort_accuracy"]


def test_committed_leaderboard_validates() -> None:
    """results/leaderboard.json validates as written (not only once upgraded)."""
    path = Path(__file__).parent.parent / "results" / "leaderboard.json"
    assert json.loads(path.read_text())["schema_version"] == lb.SCHEMA_VERSION
    assert lb.validate(path)["entries"]


def test_bits_names_follow_the_track(board: Path) -> None:
    """An in-tool entry cannot report bits_memorized, nor an in-weight one bits_delivered."""
    doc = json.loads(board.read_text())
    tool = next(i for i, e in enumerate(doc["entries"]) if e["mode"] == "in-tool")
    weight = next(i for i, e in enumerate(doc["entries"]) if e["mode"] == "in-weight")
    bad = copy.deepcopy(doc)
    metrics = bad["entries"][tool]["metrics"]
    metrics["bits_memorized"] = metrics.pop("bits_delivered")
    with pytest.raises(LeaderboardError, match=f"entries\\[{tool}\\]\\.metrics\\.bits_memorized"):
        lb.validate(bad)
    bad = copy.deepcopy(doc)
    bad["entries"][weight]["metrics"]["bits_delivered"] = 1.0
    with pytest.raises(LeaderboardError, match="name them 'bits_memorized'"):
        lb.validate(bad)
    bad = copy.deepcopy(doc)
    bad["entries"][weight]["track"] = "in-tool-recall"
    with pytest.raises(LeaderboardError, match="mode 'in-weight' is on track 'in-weight-capacity'"):
        lb.validate(bad)


# ---------------------------------------------------------------- show and CLI


def _sections(text: str) -> dict[str, list[list[str]]]:
    """Plain `show` output as {track title: rows of cells} (header and rule dropped)."""
    out = {}
    for block in text.strip().split("\n\n"):
        title, _header, _rule, *rows = block.splitlines()
        out[title.split(":")[0]] = [row.split() for row in rows]
    return out


def test_show_ranks_within_tracks(board: Path) -> None:
    """Each track is ranked apart, by its own metric unless --sort says; in-tool rows never
    rank among bits held in weights."""
    tables = _sections(lb.show(board))
    assert list(tables) == ["in-weight capacity", "in-tool recall"]
    bits = [float(row[6]) for row in tables["in-weight capacity"]]  # rank by bits/param
    assert bits == sorted(bits, reverse=True) and len(bits) == 3
    assert [row[0] for row in tables["in-weight capacity"]] == ["1", "2", "3"]
    assert [row[:2] for row in tables["in-tool recall"]] == [["1", "in-tool"]]

    tables = _sections(lb.show(board, sort_by="recall"))
    assert [float(row[5]) for row in tables["in-weight capacity"]] == [0.9, 0.7, 0.5]
    assert tables["in-tool recall"][0][:2] == ["1", "in-tool"]  # 0.95, first of its own track
    assert list(_sections(lb.show(board, sort_by="bits_per_param"))) == ["in-weight capacity"]

    # eval_s is lower-is-better: all tie at 0.25, so they share rank 1.
    text = lb.show(board, sort_by="eval_s")
    assert "eval_s" in text.splitlines()[1].split()
    assert {row[0] for rows in _sections(text).values() for row in rows} == {"1"}
    with pytest.raises(LeaderboardError, match="no entry has this metric"):
        lb.show(board, sort_by="kl")

    only = _sections(lb.show(board, mode="in-tool"))
    assert list(only) == ["in-tool recall"]
    assert list(_sections(lb.show(board, track="in-weight-capacity"))) == ["in-weight capacity"]
    with pytest.raises(LeaderboardError, match="no entry has this mode; choose one of"):
        lb.show(board, mode="in-wieght")
    with pytest.raises(LeaderboardError, match="no entry has this track; choose one of"):
        lb.show(board, track="side-memory")


def test_show_markdown_is_a_table_per_track(board: Path) -> None:
    blocks = lb.show(board, markdown=True).split("### ")[1:]
    assert len(blocks) == 2
    for block, n_rows in zip(blocks, [3, 1], strict=True):
        title, blank, *lines = block.strip().splitlines()
        cells = [line.strip("|").split("|") for line in lines]
        assert f"({n_rows} entries, ranked by " in title
        assert blank == "" and len(lines) == 2 + n_rows
        assert len({len(c) for c in cells}) == 1
        assert all(re.fullmatch(r"\s*:?-+:?\s*", c) for c in cells[1])
    in_tool = [line.strip("|").split("|") for line in blocks[1].strip().splitlines()[2:]]
    assert "delivered/param" in [c.strip() for c in in_tool[0]]
    assert [c.strip() for c in in_tool[2]][:2] == ["1", "in-tool"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recall-bench")
    lb.add_leaderboard_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(["leaderboard", *argv])
    return args.func(args)


def test_cli(tmp_path: Path, board: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("validate", str(board)) == 0
    assert capsys.readouterr().out == f"ok: {board}: 4 entries, valid as schema_version 4\n"
    assert _run("show", str(board), "--markdown", "--sort", "recall") == 0
    table = lb.show(board, markdown=True, sort_by="recall")
    assert capsys.readouterr().out.strip() == table.strip() and table.count("\n") >= 5
    assert _run("merge", str(board), str(board), "-o", str(tmp_path / "m.json")) == 0
    assert "4 duplicate ids dropped" in capsys.readouterr().out
    assert _run("export", str(board.parent / "sweep"), "-o", str(tmp_path / "e.json")) == 0
    assert "3 entries from 3 records" in capsys.readouterr().out

    corrupt = _write(tmp_path / "corrupt.json", board.read_bytes()[:-40])
    for argv in (
        ["validate", str(corrupt)],
        ["show", str(corrupt)],
        ["merge", str(board), str(corrupt), "-o", str(tmp_path / "x.json")],
        ["export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "y.json")],
    ):
        assert _run(*argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()

    # the same id with different metrics: refused (exit 2) unless a policy is named
    doc = json.loads(board.read_text())
    was = doc["entries"][0]["metrics"]["recall"]
    doc["entries"][0]["metrics"]["recall"] = 0.25
    other = _write(tmp_path / "other.json", json.dumps(doc).encode())
    assert _run("merge", str(board), str(other), "-o", str(tmp_path / "z.json")) == 2
    err = capsys.readouterr().err
    assert f"recall {was} vs 0.25" in err and err.count("\n") == 1
    assert not (tmp_path / "z.json").exists()
    argv = ["merge", str(board), str(other), "-o", str(tmp_path / "z.json")]
    assert _run(*argv, "--on-conflict", "keep-first") == 0
    out, err = capsys.readouterr()
    assert err.startswith("conflict: id ") and f"recall {was} vs 0.25" in err
    assert "1 conflicts kept past" in out


def test_created_is_utc_iso() -> None:
    stamp = build.now()
    assert datetime.datetime.fromisoformat(stamp).utcoffset() == datetime.timedelta(0)


def test_entries_name_their_record_relative_to_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export run inside a folder names each record by its path there (the page links it);
    a record outside it gets no `record`, and a version 2 file is upgraded without one."""
    make_record(tmp_path / "runs" / "a", width=16, recall=0.5)
    monkeypatch.chdir(tmp_path)
    doc = lb.export(["runs"], tmp_path / "in.json")["leaderboard"]
    assert [e["record"] for e in doc["entries"]] == ["runs/a/record.json"]
    monkeypatch.chdir(tmp_path / "runs")
    outside = lb.export([tmp_path / "runs"], tmp_path / "out.json")["leaderboard"]
    assert "record" in outside["entries"][0]
    monkeypatch.chdir(FIXTURES)
    elsewhere = lb.export([tmp_path / "runs"], tmp_path / "x.json")["leaderboard"]
    assert "record" not in elsewhere["entries"][0]
    old = {**doc, "schema_version": 2, "entries": [_without(doc["entries"][0], "record")]}
    assert lb.validate(old)["schema_version"] == lb.SCHEMA_VERSION
    bad = {**doc, "entries": [{**doc["entries"][0], "record": "../secret.json"}]}
    with pytest.raises(LeaderboardError, match=r"entries\[0\]\.record"):
        lb.validate(bad)


def _without(entry: dict, key: str) -> dict:
    return {k: v for k, v in entry.items() if k != key}


def test_committed_leaderboard_validates_and_matches_the_committed_records() -> None:
    """results/leaderboard.json validates against the shipped schema, and holds one entry
    per distinct configuration among the records committed under results/ (the ids its
    export would give), each with that record's metrics."""
    results = Path(__file__).resolve().parents[1] / "results"
    doc = lb.validate(results / "leaderboard.json")
    entries = {e["id"]: e for e in doc["entries"]}
    assert len(entries) == len(doc["entries"]) > 200
    fresh = {}
    for path in lb.find_records(results):
        entry = lb.entry_from_file(path)  # None: a reference run holding no facts
        if entry is not None:
            fresh.setdefault(entry["id"], []).append(entry["metrics"])
    assert set(entries) == set(fresh)
    for key, entry in entries.items():
        assert entry["metrics"] in fresh[key]
