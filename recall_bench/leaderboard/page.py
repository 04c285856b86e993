"""A browsable leaderboard: one static page (index.html) with a sortable, filterable table per
track, seeds grouped into a mean with its min-max interval, links to the run records, the
headline plots and CSV/JSON downloads. No server and no network at view time: the script and
style (page.js, page.css, written for this package) are inlined into the page.

A row is a *seed group*: the entries that differ only in their seed (same mode, world spec
but its seed, model, config but its seeds, benchmark version and device kind).
"""

from __future__ import annotations

import csv
import html
import importlib.resources
import io
import json
import os
import statistics
from pathlib import Path
from typing import Any

from recall_bench import records
from recall_bench.leaderboard.ids import digest, what_ran
from recall_bench.leaderboard.schema import validate
from recall_bench.leaderboard.table import TRACKS

# metrics a row carries (mean, min, max over seeds): each track's columns and general ability
METRICS = tuple(
    dict.fromkeys(
        [m for t in TRACKS.values() for _, m in t.columns]
        + ["bits_memorized", "bits_delivered", "general_accuracy_kept"]
    )
)
FIELDS = ("group", "track", "mode", "n_facts", "params", "dtype", "device", "converged")
FIELDS += ("n_seeds", "seeds", "steps", "records")
CSV_HEADER = (*FIELDS, *(f"{m}_{s}" for m in METRICS for s in ("mean", "min", "max")))
INTERVAL = "min-max over seeds"


def _without_seeds(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_seeds(v) for k, v in value.items() if k != "seed"}
    if isinstance(value, list):
        return [_without_seeds(v) for v in value]
    return value


def group_key(entry: dict[str, Any]) -> str:
    """12 hex characters shared by the entries that differ only in their seed."""
    ran = what_ran(entry)
    return digest(
        {
            "mode": ran["mode"],
            "world": _without_seeds({k: entry["world"].get(k) for k in ("kind", "spec")}),
            "model": ran["model"],
            "config": _without_seeds(ran["config"]),
            "benchmark_version": entry["benchmark_version"],
            "device_kind": entry["env"]["device_kind"],
        }
    )[:12]


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def _row(key: str, members: list[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    """One seed group's row; record links are relative to the page's folder."""
    first = members[0]
    converged = {bool(e["train"]["converged"]) for e in members}
    links = [os.path.relpath(e["record"], out_dir) if "record" in e else "" for e in members]
    metrics = {
        m: _stats([e["metrics"][m] for e in members])
        for m in METRICS
        if all(m in e["metrics"] for e in members)
    }
    return {
        "group": key,
        "track": first["track"],
        "mode": first["mode"],
        "n_facts": first["n_facts"],
        "params": first["model"]["params"]["total"],
        "dtype": first["model"]["dtype"],
        "device": f"{first['env']['device_kind']} x{first['env']['device_count']}",
        "converged": "yes" if converged == {True} else "no" if converged == {False} else "mixed",
        "n_seeds": len(members),
        "seeds": ";".join(str(e["seed"]) for e in members),
        "steps": statistics.fmean(e["train"]["steps"] for e in members),
        "records": ";".join(links),
        "metrics": metrics,
    }


def seed_groups(
    entries: list[dict[str, Any]], out_dir: str | os.PathLike[str] = "."
) -> list[dict[str, Any]]:
    """The page's rows: one per seed group, seeds in increasing order, groups in file order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        groups.setdefault(group_key(entry), []).append(entry)
    return [_row(k, sorted(v, key=lambda e: e["seed"]), Path(out_dir)) for k, v in groups.items()]


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    flat = {k: row[k] for k in FIELDS}
    for m, s in row["metrics"].items():
        flat.update({f"{m}_{k}": v for k, v in s.items()})
    return flat


def rows_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV, one column per field and per metric statistic (empty when absent);
    floats written by repr, so they read back to the same numbers."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_HEADER, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = _flat(row)
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in flat.items()})
    return out.getvalue()


def _asset(name: str) -> str:
    return importlib.resources.files("recall_bench.leaderboard").joinpath(name).read_text("utf-8")


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element (no '</' can close it)."""
    return json.dumps(value, allow_nan=False).replace("<", "\\u003c")


def _page(doc: dict[str, Any], rows: list[dict[str, Any]], plots: list[tuple[str, str]]) -> str:
    tracks = {k: {"title": t.title, "columns": t.columns} for k, t in TRACKS.items()}
    meta = {
        "tracks": tracks,
        "metrics": METRICS,
        "fields": FIELDS,
        "csv_header": CSV_HEADER,
        "interval": INTERVAL,
    }
    figures = "\n".join(
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(cap)}">'
        f"<figcaption>{html.escape(cap)}</figcaption></figure>"
        for src, cap in plots
    )
    summary = (
        f"{len(doc['entries'])} entries in {len(rows)} seed groups; schema_version "
        f"{doc['schema_version']}, benchmark {doc['benchmark_version']}, built {doc['created']}"
    )
    return _asset("page.html").format(
        style=_asset("page.css"),
        script=_asset("page.js"),
        summary=html.escape(summary),
        interval=html.escape(INTERVAL),
        figures=figures,
        rows=_script_json(rows),
        meta=_script_json(meta),
    )


def build_page(
    leaderboard: str | os.PathLike[str] | dict[str, Any], out_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """Write out_dir/index.html, its plots (plots/*.png) and the full table as leaderboard.csv
    and leaderboard-rows.json. Record links are relative to out_dir, for entries whose
    `record` is relative to the working folder. Returns {"out", "entries", "rows", "plots"}."""
    from recall_bench.leaderboard.figures import headline_plots  # matplotlib: only here

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder for the page (-o DIR)")
    doc = validate(leaderboard)
    out.mkdir(parents=True, exist_ok=True)
    rows = seed_groups(doc["entries"], out)
    plots = headline_plots(rows, out / "plots")
    records.write_json_atomic(out / "leaderboard-rows.json", rows)
    _write_text(out / "leaderboard.csv", rows_csv(rows))
    _write_text(out / "index.html", _page(doc, rows, [(f"plots/{p}", c) for p, c in plots]))
    return {
        "out": str(out / "index.html"),
        "entries": len(doc["entries"]),
        "rows": len(rows),
        "plots": [p for p, _ in plots],
    }


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
