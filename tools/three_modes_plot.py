"""The three ways to hold facts on one figure: recall against facts for in-weight, in-tool
and side-memory, at matched total parameters and at matched active parameters per token.

Usage: python tools/three_modes_plot.py results/three_modes   (after
`recall-bench sweep configs/three_modes.toml`); writes recall_matched_params.png there and
prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recall_bench import plots
from recall_bench.records import read_json


def row(record: dict) -> dict:
    m, p, t = record["metrics"], record["params"], record["train"]
    active = p.get("active_per_token", p["total"])
    return {
        "mode": record["mode"],
        "n_facts": record["n_facts"],
        "recall": m["recall"],
        "recall_unseen": m.get("recall_unseen"),
        "total": p["total"],
        "active": active,
        "label": f"{record['mode']} ({p['total']:,} params, {active:,} active)",
        "steps": t["steps"],
        "stop_reason": t["stop_reason"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    rows = [row(read_json(p)) for p in sorted(args.folder.glob("*/record.json"))]
    memory = [r for r in rows if r["mode"] == "side-memory"]
    dense = [r for r in rows if r["mode"] != "side-memory"]
    total, active = memory[0]["total"], memory[0]["active"]
    nearest = {
        "total": min({r["total"] for r in dense}, key=lambda n: abs(n - total)),
        "active": min({r["total"] for r in dense}, key=lambda n: abs(n - active)),
    }
    panels = {
        f"matched total parameters (~{total:,})": memory
        + [r for r in dense if r["total"] == nearest["total"]],
        f"matched active parameters per token (~{active:,})": memory
        + [r for r in dense if r["total"] == nearest["active"]],
    }
    path = plots.recall_panels(panels, args.folder / "recall_matched_params.png")
    print("| mode | params (active) | facts | recall | unseen | steps (stop) |")
    print("|---|---|---:|---:|---:|---|")
    for r in sorted(rows, key=lambda r: (r["mode"], r["total"], r["n_facts"])):
        unseen = "" if r["recall_unseen"] is None else f"{r['recall_unseen']:.3f}"
        print(
            f"| {r['mode']} | {r['total']:,} ({r['active']:,}) | {r['n_facts']:,} | "
            f"{r['recall']:.3f} | {unseen} | {r['steps']:,} ({r['stop_reason']}) |"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
