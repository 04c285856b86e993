"""A grid over the ROME and MEMIT settings on bases saved by `recall-bench edit --save-bases`:
each setting is the `recall-bench edit --from BASES ...` line it prints (records and
edits.json into OUT/<setting>/, no plot), run in one process so the bases load and the
editors compile once; then OUT/summary.json and a markdown table, ranked by the criterion.

Usage: python tools/edit_settings_search.py BASES OUT [--k 16,64,256] [--only NAME ...]
(--k must include CRITERION_K.)
A setting whose OUT/<setting>/edits.json exists is read back, not run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path

from recall_bench.cli.edit import edits_config
from recall_bench.cli.main import build_parser
from recall_bench.experiments import edits, edits_report
from recall_bench.records import write_json_atomic

CRITERION_K = 64  # settings ranked by mean efficacy x specificity over seeds at this k


def grid() -> dict[str, list[str]]:
    """Setting name -> its edit flags: ROME's block, target steps and L2 penalty; MEMIT's
    λ and blocks."""
    settings = {}
    for block, steps, decay in itertools.product((0, 1), (25, 100), (1e-3, 1e-2, 1e-1)):
        flags = ["--rome-layer", str(block), "--value-steps", str(steps)]
        settings[f"rome_b{block}_s{steps}_d{decay:g}"] = ["--methods", "rome", *flags,
                                                         "--value-decay", f"{decay:g}"]  # fmt: skip
    for blocks, weight in itertools.product(("0,1", "1"), (3, 10, 30, 100, 300)):
        name = f"memit_b{blocks.replace(',', '')}_l{weight}"
        flags = ["--memit-layers", blocks, "--memit-weight", str(weight)]
        settings[name] = ["--methods", "memit", *flags]
    # second round, after the first: ROME's best (block 0, 100 steps) given 400 steps, and
    # MEMIT's targets solved like it (MEMIT shares the target solve)
    for decay in (1e-2, 1e-1):
        flags = ["--rome-layer", "0", "--value-steps", "400", "--value-decay", f"{decay:g}"]
        settings[f"rome_b0_s400_d{decay:g}"] = ["--methods", "rome", *flags]
    for weight, decay in itertools.product((10, 30), (1e-2, 1e-1)):
        flags = ["--memit-layers", "0,1", "--memit-weight", str(weight), "--value-steps", "100"]
        name = f"memit_b01_l{weight}_s100_d{decay:g}"
        settings[name] = ["--methods", "memit", *flags, "--value-decay", f"{decay:g}"]
    return settings


def run_setting(bases_dir: Path, bases: dict, ks: str, flags: list[str], out: Path) -> list:
    """The records of one setting, run (or read back if out/edits.json exists)."""
    if (out / "edits.json").exists():
        return edits_report.read_records(out)
    argv = ["edit", "--from", str(bases_dir), "--k", ks, *flags, "--out", str(out)]
    print("recall-bench " + " ".join(argv), flush=True)
    cfg = edits_config(build_parser().parse_args(argv), bases)
    records = edits.run_edits(cfg, out, False, bases)
    rows = edits_report.summarize(records)
    write_json_atomic(out / "edits.json", {"config": dataclasses.asdict(cfg), "rows": rows})
    return records


def score(row: dict) -> float:
    """The criterion of one (setting, k) row: efficacy x specificity (means over seeds)."""
    return row["efficacy"] * row["specificity"]


def setting_summary(name: str, flags: list[str], records: list[dict]) -> dict:
    """A setting's summary rows, its criterion and the criterion's range over seeds."""
    rows = edits_report.summarize(records)
    (at,) = [score(r) for r in rows if r["k"] == CRITERION_K]
    seeds = [score(r["metrics"]) for r in records if r["k"] == CRITERION_K]
    return {"setting": name, "flags": flags, "score": at, "score_min": min(seeds),
            "score_max": max(seeds), "rows": rows}  # fmt: skip


def table(summary: list[dict]) -> str:
    """Markdown: one line per setting, in criterion order: efficacy x specificity at every k
    (at CRITERION_K with its range over seeds), then the triad and general ability kept
    there."""
    ks = [r["k"] for r in summary[0]["rows"]]
    at = f"k = {CRITERION_K}: "
    names = ("efficacy", "specificity", "generalization", *edits_report.GENERAL)
    labels = ("efficacy", "specificity", "generalization", "general kept (graded)",
              "general kept (exact)", "text bits/byte change")  # fmt: skip
    head = ["setting", *(f"eff. x spec. k = {k}" for k in ks), *(at + n for n in labels)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        rows = {r["k"]: r for r in s["rows"]}
        cells = [s["setting"]]
        for k in ks:
            cell = edits_report.fmt(score(rows[k]))
            if k == CRITERION_K:
                cell += f" ({s['score_min']:.2f}-{s['score_max']:.2f})"
            cells.append(cell)
        cells += [edits_report.fmt(rows[CRITERION_K][n]) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bases", type=Path, help="a folder written by `edit --save-bases`")
    parser.add_argument("out", type=Path)
    parser.add_argument("--k", default=f"16,{CRITERION_K},256")
    parser.add_argument("--only", nargs="+", help="settings to run (default: the whole grid)")
    args = parser.parse_args()
    settings = grid()
    unknown = sorted(set(args.only or ()) - set(settings))
    if unknown:
        raise SystemExit(f"unknown settings {unknown}: choose from {', '.join(settings)}")
    if str(CRITERION_K) not in args.k.split(","):
        raise SystemExit(f"--k {args.k}: include {CRITERION_K}, the k the criterion is read at")
    bases = edits.bases_from(args.bases)
    summary = []
    for name in args.only or settings:
        records = run_setting(args.bases, bases, args.k, settings[name], args.out / name)
        summary.append(setting_summary(name, settings[name], records))
    summary.sort(key=lambda s: (s["flags"][1], -s["score"]))
    criterion = f"mean efficacy x specificity over seeds at k = {CRITERION_K}, per method"
    write_json_atomic(args.out / "summary.json", {"criterion": criterion, "settings": summary})
    print(table(summary))


if __name__ == "__main__":
    main()
