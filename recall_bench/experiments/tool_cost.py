"""The learn-tool protocol's cost split (docs/design.md §9): general ability lost by learning the
tool format once, apart from what each added fact costs.

Over the fact counts of one mode, the damage d(N) = 1 − general_accuracy_kept is fitted by least
squares as d(N) = one_time + per_fact · N: the intercept is the cost of a tool model holding no
facts (learning the format), the slope the cost of each fact. Cells stop at different steps, so
the fit is only as clean as the steps are equal; the split says the steps it spans.
"""

from __future__ import annotations

import numpy as np

TOOL_MODES = ("in-tool", "in-tool+replay")


def cost_split(rows: list[dict], mode: str) -> dict | None:
    """One mode's fit of damage against N (None with fewer than two fact counts kept, a row
    whose base scored 0 having no kept ratio): intercept (one-time cost), slope per 1,000
    facts, damage at the smallest N, the steps taken."""
    mine = [r for r in rows if r["mode"] == mode and r.get("general_accuracy_kept") is not None]
    points = sorted((r["n_facts"], 1.0 - r["general_accuracy_kept"], r["steps"]) for r in mine)
    if len({p[0] for p in points}) < 2:
        return None
    n, damage, steps = np.array(points, float).T
    per_fact, one_time = np.polyfit(n, damage, 1)
    return {
        "mode": mode,
        "fact_counts": [int(x) for x in n],
        "damage": damage.tolist(),
        "one_time": float(one_time),
        "per_1000_facts": float(per_fact * 1000),
        "damage_at_smallest": float(damage[0]),
        "steps_range": [int(steps.min()), int(steps.max())],
    }


def cost_splits(rows: list[dict]) -> list[dict]:
    """The split of every tool mode present in a learn-tool sweep's summary rows."""
    return [s for mode in TOOL_MODES if (s := cost_split(rows, mode)) is not None]


def format_splits(splits: list[dict]) -> str:
    """One line per tool mode: the one-time cost, the per-fact cost and the steps it spans."""
    return "\n".join(
        f"{s['mode']}: one-time cost {s['one_time']:.3f} of general accuracy, "
        f"{s['per_1000_facts']:+.4f} per 1,000 facts (damage {s['damage_at_smallest']:.3f} at "
        f"{s['fact_counts'][0]:,} facts; steps {s['steps_range'][0]}-{s['steps_range'][1]})"
        for s in splits
    )
