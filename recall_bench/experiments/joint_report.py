"""The joint protocol's sweep, summary (means and ranges over seeds, the measured fact capacity),
frontier and tables."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from recall_bench import formats, general, plots, tables
from recall_bench.experiments.joint import (
    FACTS_ONLY,
    GENERAL,
    JointConfig,
    references,
    reused,
    train_cells,
)
from recall_bench.experiments.recording import grouped, seed_spread, write_summary
from recall_bench.progress import log
from recall_bench.records import read_json


def run_joint(
    cfg: JointConfig,
    out: str | Path,
    progress: bool = True,
    resume: bool = False,
    ref_dir: str | Path | None = None,
    command: str | None = None,
) -> dict:
    """The sweep: the general-only references with the in-tool models (trained once on the
    protocol pool, evaluated at every N), then every fact count's in-weight and facts-only
    cells (with resume, finished ones are kept); summary.json and the plot. With ref_dir (a
    finished sweep of the same model and training) its references are reused, not trained;
    in-tool models, which train on this sweep's mixture, are trained here. `command`: the
    command line that ran it (None from Python), kept in the summary."""
    out, t0 = Path(out), time.perf_counter()
    suite = general.make_suite(cfg.suite, formats.Vocab.of(cfg.run_config("in-weight", 2, 0).spec))
    tool = [("in-tool", 0, s) for s in cfg.seeds if "in-tool" in cfg.modes]  # at every N
    refs = [(GENERAL, 0, s) for s in cfg.seeds]
    reference = references(cfg, out if ref_dir is None else Path(ref_dir))
    if ref_dir is None:
        log(progress, f"general-only references and in-tool models, seeds {cfg.seeds}")
        records = train_cells(cfg, refs + tool, suite, reference, out, progress, resume)
    else:  # the references are reused; in-tool cells, trained on this mixture, are not
        records = reused(cfg, refs, Path(ref_dir))
        if records is None:
            raise ValueError(
                f"{ref_dir} holds no general-only cells of seeds {cfg.seeds} made with this "
                "model, training and data; rerun with that sweep's options or drop --reference"
            )
        if tool:
            log(progress, f"in-tool models, seeds {cfg.seeds}")
            records += train_cells(cfg, tool, suite, reference, out, progress, resume)
    log(progress, tables.format_table(summary_rows(records), COLUMNS))
    for n in cfg.fact_counts:
        cells = [(kind, n, s) for kind in cfg.kinds(n) for s in cfg.seeds]
        log(progress, f"{n} facts: {', '.join(cfg.kinds(n))}, seeds {cfg.seeds}")
        done = train_cells(cfg, cells, suite, reference, out, progress, resume) if cells else []
        records += done
        log(progress, tables.format_table(summary_rows(done), COLUMNS))
    return summarize(cfg, records, out, time.perf_counter() - t0, command)


SUMMARY_KEYS = (
    "recall",
    "recall_unseen",
    "bits_memorized",
    "bits_per_param",
    "bits_delivered",  # in-tool: answered through the store, not held in the weights
    "bits_delivered_per_param",
    "general_accuracy",
    "general_accuracy_kept",
    "general_mc_accuracy",
    "general_mc_kept",
    "general_loss",
    "kl",
    "tv",
    "text_bits_per_byte",
    "text_bits_per_byte_change",
    "text_kl",
    "text_tv",
    "greedy_kl",  # on the reference's own greedy continuations of general prompts
    "greedy_tv",
)


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per (mode, N): the mean over seeds of each measure, and its [min, max]."""
    groups = grouped(records, lambda r: (r["mode"], r["n_facts"]))
    rows = []
    for (mode, n), group in sorted(groups.items(), key=lambda g: (g[0][1], g[0][0])):
        row = {"mode": mode, "n_facts": n, "seeds": [r["seed"] for r in group]}
        skills = tuple(
            name for s in general.SKILLS for name in (general.accuracy_name(s), f"{s}_mc_accuracy")
        )
        row.update(seed_spread(group, SUMMARY_KEYS + skills))
        for key in ("whole_loss_late_drop", "fact_bits_late_gain"):  # the least converged seed
            values = [r["train"].get(key) for r in group]
            row[key] = max((v for v in values if v is not None), default=None)
        row["steps"] = group[0]["train"]["steps"]
        row["train_s"] = group[0]["train"]["wall_s"]
        rows.append(row)
    return rows


def summarize(
    cfg: JointConfig, records: list[dict], out: Path, wall_s: float, command: str | None
) -> dict:
    """summary.json: the rows, the model's measured fact capacity (the most bits a facts-only
    cell held, mean over seeds), each in-weight row's share of it and each row's graded
    accuracy over the reference's (of the means); the plot."""
    rows = summary_rows(records)
    capacity = max((r["bits_memorized"] for r in rows if r["mode"] == FACTS_ONLY), default=None)
    reference = next((r for r in rows if r["mode"] == GENERAL), None)
    for r in rows:
        if capacity and r["mode"] in ("in-weight", FACTS_ONLY):
            r["capacity_share"] = r["bits_memorized"] / capacity
            r["capacity_share_range"] = [b / capacity for b in r["bits_memorized_range"]]
        if reference is not None:  # HellaSwag's published ratio: acc / acc_base, chance kept
            r["general_mc_ratio"] = r["general_mc_accuracy"] / reference["general_mc_accuracy"]
    bits_per_fact = cfg.run_config("in-weight", 2, 0).spec.bits_per_fact
    plot = plots.joint_tradeoff(rows, capacity, bits_per_fact, out / "general_kept.png")
    return write_summary(
        out, "degradation-joint", cfg, command, wall_s,
        model=dataclasses.asdict(cfg.model_config()),
        params=records[0]["params"],
        bits_per_fact=bits_per_fact,
        capacity_bits=capacity,
        capacity_facts=None if capacity is None else capacity / bits_per_fact,
        rows=rows,
        plot=str(plot),
    )  # fmt: skip


def run_frontier(
    cfg: JointConfig,
    fractions: tuple[float, ...],
    out: str | Path,
    ref_dir: str | Path,
    progress: bool = True,
    resume: bool = False,
    command: str | None = None,
) -> dict:
    """The trade-off frontier at the largest N: cells of each of cfg's modes (in-weight,
    in-tool) at each general fraction (one sweep each, in out/general-fraction-F, against
    ref_dir's general-only references), with ref_dir's own cells of those modes and its
    facts-only cells at that N and its reference; frontier.json (with the config its
    sweeps share but for the general fraction) and frontier.png (general ability kept against
    the fact bits held, one series per mode)."""
    out, ref_dir, t0 = Path(out), Path(ref_dir), time.perf_counter()
    base = read_json(ref_dir / "summary.json")
    n = max(cfg.fact_counts)
    cfg = dataclasses.replace(cfg, fact_counts=(n,), capacity_counts=())
    sweeps = {
        f: run_joint(
            dataclasses.replace(cfg, general_fraction=f),
            out / f"general-fraction-{f}",
            progress,
            resume,
            ref_dir,
            command,
        )
        for f in fractions
    }
    rows = {f: s["rows"] for f, s in sweeps.items()}
    points = [p for mode in cfg.modes for p in frontier_points(base, rows, n, mode)]
    bits_per_fact = cfg.run_config("in-weight", 2, 0).spec.bits_per_fact
    plot = plots.joint_frontier(points, base["capacity_bits"], n, out / "frontier.png")
    return write_summary(
        out, "degradation-joint-frontier", cfg, command, time.perf_counter() - t0,
        file="frontier.json",
        n_facts=n,
        capacity_bits=base["capacity_bits"],
        capacity_facts=base["capacity_bits"] / bits_per_fact,
        points=points,
        plot=str(plot),
    )  # fmt: skip


def frontier_points(base: dict, rows: dict[float, list[dict]], n: int, mode: str) -> list[dict]:
    """One point per general fraction of the series `mode`, from the general-only reference (1)
    through mode's rows at n facts (the base sweep's fraction and each of rows') to, for
    in-weight, the facts-only row at n (0), each with its share of the base sweep's capacity;
    highest fraction first."""
    fraction = base["config"]["general_fraction"]
    found = [(f, r) for f, rs in rows.items() for r in rs if (r["mode"], r["n_facts"]) == (mode, n)]
    ends = {GENERAL: 1.0, mode: fraction, **({FACTS_ONLY: 0.0} if mode == "in-weight" else {})}
    for r in base["rows"]:
        f = ends.get(r["mode"])
        if f is not None and r["n_facts"] in (0, n):
            found.append((f, r))
    cap = base["capacity_bits"]
    points = []
    for f, r in sorted(found, key=lambda p: -p[0]):
        bits, span = r.get("bits_memorized", 0.0), r.get("bits_memorized_range", [0.0, 0.0])
        share = {"capacity_share": bits / cap, "capacity_share_range": [b / cap for b in span]}
        points.append(
            {
                **r,
                "series": mode,
                "general_fraction": f,
                "bits_memorized": bits,
                "bits_memorized_range": span,
                **share,
            }
        )
    return points


def format_frontier(frontier: dict) -> str:
    cap = frontier["capacity_bits"]
    head = f"trade-off frontier at {frontier['n_facts']:,} facts, capacity {cap:,.0f} bits"
    return "\n".join([head, tables.format_table(frontier["points"], FRONTIER_COLUMNS)])


FRONTIER_COLUMNS = (
    ("series", "series"),
    ("general fraction", "general_fraction", ".2f"),
    ("mode", "mode"),
    ("recall", "recall", ".3f"),
    ("fact bits", "bits_memorized", ",.0f"),
    ("share", "capacity_share", ".2f"),
    ("graded kept", "general_mc_kept", ".3f"),
    ("acc / ref", "general_mc_ratio", ".3f"),
    ("bpb change", "text_bits_per_byte_change", "+.3f"),
)


COLUMNS = (  # of the summary table: (header, row field or function of the row, format)
    ("mode", "mode"),
    ("facts", "n_facts"),
    ("recall", "recall", ".3f"),
    ("bits", "bits_memorized", ",.0f"),  # held in the weights
    ("delivered", "bits_delivered", ",.0f"),  # in-tool: with the store's help
    ("general", "general_accuracy", ".3f"),
    ("kept", "general_accuracy_kept", ".3f"),
    ("graded", "general_mc_kept", ".3f"),
    ("bpb", "text_bits_per_byte", ".3f"),
    ("kl", "kl", ".4f"),
    ("tv", "tv", ".4f"),
    ("gen tv", "greedy_tv", ".4f"),  # on the reference's greedy continuations
)


def format_table(summary: dict) -> str:
    cap = summary["capacity_bits"]
    head = f"measured fact capacity {cap:,.0f} bits" if cap else "no facts-only cell"
    lines = [
        f"shared capacity: {summary['params']['total']:,}-parameter model, {head}",
        tables.format_table(summary["rows"], COLUMNS),
        f"plot: {summary['plot']}   total {summary['wall_s']:.0f} s",
    ]
    return "\n".join(lines)
