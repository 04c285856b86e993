"""Capacity measurements from run records: each model's bits-memorized curve and capacity
(fact worlds and the random-token probe of Morris et al., experiments/tokens.py), the
bits/param fit per world kind and dtype, and the params-for-recall table (Houliston et al.).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from recall_bench import capacity, plots
from recall_bench.experiments.tokens import TOKENS
from recall_bench.record_types import Record
from recall_bench.records import DELIVERED_TRACKS, read_record, track
from recall_bench.tables import format_table

PUBLISHED = {"facts": 2.0, TOKENS: 3.6}  # bits/param: Allen-Zhu & Li; Morris et al.
RECALL_TARGET = 0.95
# Houliston et al. 2025: in-weight params for >= 95% recall at N facts (2 layers, 100k steps),
# their facts carrying about 7.8 bits each (docs/published.md)
PUBLISHED_PARAMS_FOR_RECALL = {1024: 27_000, 16384: 115_000, 65536: 569_000}
PUBLISHED_BITS_PER_FACT = 7.8


def load_records(folders: list[str | Path]) -> list[Record]:
    """Every record.json under the folders; a config recorded twice (e.g. in two shards'
    folders) counts once, the newest record kept."""
    newest: dict[str, dict] = {}
    for folder in folders:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder} is not a folder of run records")
        for path in sorted(Path(folder).rglob("record.json")):
            record = read_record(path)
            key = json.dumps(record["config"], sort_keys=True)
            if key not in newest or record["created"] > newest[key]["created"]:
                newest[key] = record
    return list(newest.values())


def model_name(model: dict) -> str:
    return f"L{model['layers']}-d{model['width']}"


DATA_CAPPED = 0.9  # a cell holding this share of its data's entropy shows the data's limit
AROUND = (0.5, 4.0)  # fact counts whose entropy is 0.5-4x the capacity bracket it


def model_capacity(records: list[Record]) -> dict:
    """One model's bits-memorized curve over fact counts (seeds side by side) and its
    capacity: per seed the maximum over the cells that are not data-capped, then the mean
    over seeds. A model with no such cell on some seed is data-capped: its maximum is only a
    lower bound, kept out of fits."""
    counts = sorted({r["n_facts"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    bits = np.full((len(seeds), len(counts)), np.nan)
    entropy = np.full(len(counts), np.nan)
    cells = defaultdict(list)
    for r in records:
        j = counts.index(r["n_facts"])
        bits[seeds.index(r["seed"]), j] = r["metrics"]["bits_memorized"]
        entropy[j] = r["world"]["entropy_bits"]
        cells[r["n_facts"]].append(r)
    capped = bits >= DATA_CAPPED * entropy
    curve = [curve_point(sorted(cells[n], key=lambda r: r["seed"])) for n in counts]
    free = np.where(capped, np.nan, bits)
    data_capped = bool(np.all(np.isnan(free), axis=1).any())
    cap = capacity.capacity_per_seed(bits if data_capped else free)
    best = np.nanargmax(bits if data_capped else free, axis=1)
    params = records[0]["params"]
    around = [
        n for n, e in zip(counts, entropy, strict=True) if AROUND[0] <= e / cap.mean() <= AROUND[1]
    ]
    out = {
        "name": model_name(records[0]["model"]),
        "model": records[0]["model"],
        "params": params,
        "capacity_bits": float(cap.mean()),
        "capacity_bits_by_seed": cap.tolist(),
        "bits_per_param": float(cap.mean() / params["total"]),
        "bits_per_param_non_embedding": float(cap.mean() / params["non_embedding"]),
        "best_n_facts": counts[int(np.bincount(best).argmax())],
        "best_n_facts_by_seed": [counts[j] for j in best],
        "data_capped": data_capped,
        "saturated": not data_capped,  # the model, not the data, set the maximum
        "counts_around_capacity": around,  # fact counts with 0.5-4x the capacity's bits
        "converged": all(curve[j]["converged"] for j in set(best.tolist())),
        "curve": curve,
        "steps_curves": [
            steps_curve(cells[counts[j]], seed) for seed, j in zip(seeds, best, strict=True)
        ],
    }
    out.update(noise_corrected(records, seeds, counts, free if not data_capped else bits, best))
    gains = [c["gain_per_efold"] for c in out["steps_curves"]]
    out["gain_per_efold"] = float("nan") if np.isnan(gains).all() else float(np.nanmean(gains))
    if len(curve) >= 3 and all("held_out_loss" in p for p in curve):
        out["loss_peak"] = capacity.loss_peak(
            [p["entropy_bits"] for p in curve],
            [p["held_out_loss"] for p in curve],
            out["capacity_bits"],
        )
    return out


def noise_corrected(
    records: list[Record], seeds: list, counts: list, eligible: np.ndarray, best: np.ndarray
) -> dict:
    """The noise floor beside the capacity: per seed, the best cell's floor (bits/fact on
    unseen facts) and the maximum of corrected bits over the same eligible cells (NaN in
    `eligible` marks a cell left out). Empty when a record predates the floor."""
    if not all("bits_memorized_corrected" in r["metrics"] for r in records):
        return {}
    corrected = np.full(eligible.shape, np.nan)
    floor = np.full(eligible.shape, np.nan)
    for r in records:
        i, j = seeds.index(r["seed"]), counts.index(r["n_facts"])
        corrected[i, j] = r["metrics"]["bits_memorized_corrected"]
        floor[i, j] = r["metrics"]["noise_floor_bits_per_fact"]
    cap = capacity.capacity_per_seed(np.where(np.isnan(eligible), np.nan, corrected))
    total = records[0]["params"]["total"]
    return {
        "noise_floor_bits_per_fact": float(np.mean(floor[np.arange(len(seeds)), best])),
        "capacity_bits_corrected": float(cap.mean()),
        "capacity_bits_corrected_by_seed": cap.tolist(),
        "bits_per_param_corrected": float(cap.mean() / total),
    }


def steps_curve(rs: list[dict], seed: int) -> dict:
    """Bits/param against steps of one seed's best cell, from its progress checks (the
    monitored facts' bits scaled to all facts), and the gain per e-fold of steps at its end:
    how far from saturation training stopped (docs/design.md §7)."""
    (r,) = [r for r in rs if r["seed"] == seed]
    watched = min(r["n_facts"], r["config"].get("monitor_facts", 2048))
    history = [h for h in r["train"]["history"] if h["step"] > 0]
    steps = np.array([h["step"] for h in history])
    per_param = np.array([h["bits"] for h in history]) * r["n_facts"] / watched
    per_param /= r["params"]["total"]
    return {
        "seed": seed,
        "n_facts": r["n_facts"],
        "steps": steps.tolist(),
        "bits_per_param": per_param.tolist(),
        "gain_per_efold": capacity.gain_per_efold(steps, per_param),
    }


def curve_point(rs: list[dict]) -> dict:
    """One fact count of a model's curve: its seeds' bits, recall and training."""
    m = [r["metrics"] for r in rs]
    entropy = rs[0]["world"]["entropy_bits"]
    point = {
        "n_facts": rs[0]["n_facts"],
        "entropy_bits": entropy,
        "bits": float(np.mean([x["bits_memorized"] for x in m])),
        "bits_by_seed": [x["bits_memorized"] for x in m],
        "data_capped_by_seed": [x["bits_memorized"] >= DATA_CAPPED * entropy for x in m],
        "recall": float(np.mean([x["recall"] for x in m])),
        "steps": [r["train"]["steps"] for r in rs],
        "late_bits_gain": [r["train"].get("late_bits_gain") for r in rs],
        "stop_reason": [r["train"]["stop_reason"] for r in rs],
        "converged": all(r["train"]["converged"] for r in rs),
    }
    if all("noise_floor_bits_per_fact" in x for x in m):
        point["noise_floor_bits_per_fact"] = float(
            np.mean([x["noise_floor_bits_per_fact"] for x in m])
        )
        point["bits_corrected"] = float(np.mean([x["bits_memorized_corrected"] for x in m]))
    if "held_out_loss" in m[0]:
        point["held_out_loss"] = float(np.mean([x["held_out_loss"] for x in m]))
    return point


def capacity_summary(records: list[Record]) -> list[dict]:
    """Per world kind and dtype: each model's capacity and the bits/param fit over the
    models that are not data-capped (total and non-embedding counts), with the cells it
    used. Records without bits held in the weights (in-tool, retrieval-context: their bits
    are delivered by the store or the context) are left out."""
    by_model = defaultdict(list)
    for r in records:
        if track(r["mode"]) not in DELIVERED_TRACKS:
            by_model[(r["world"]["kind"], r["model"]["dtype"], json.dumps(r["model"]))].append(r)
    groups = defaultdict(list)
    for (kind, dtype, _), rs in by_model.items():
        groups[(kind, dtype)].append(model_capacity(rs))
    summary = []
    for (kind, dtype), models in sorted(groups.items()):
        models.sort(key=lambda m: m["params"]["total"])
        fitted = [m for m in models if not m["data_capped"]]

        summary.append(
            {
                "world": kind,
                "dtype": dtype,
                "models": models,
                "fit": fit_over(fitted, "total"),
                "fit_non_embedding": fit_over(fitted, "non_embedding"),
                "fit_corrected": fit_over(fitted, "total", "capacity_bits_corrected_by_seed"),
                "fit_cells": [
                    {"model": m["name"], "n_facts_by_seed": m["best_n_facts_by_seed"]}
                    for m in fitted
                ],
                "fit_excludes_data_capped": [m["name"] for m in models if m["data_capped"]],
                "all_saturated_and_converged": all(
                    m["saturated"] and m["converged"] for m in models
                ),
                "published_bits_per_param": PUBLISHED.get(kind),
            }
        )
    return summary


def fit_over(
    models: list[dict], count: str, capacities: str = "capacity_bits_by_seed"
) -> dict | None:
    """The bits/param fit over `models` by their `count` ("total" or "non_embedding")
    parameters, of their `capacities` (raw, or above the noise floor); None without models
    or when a model lacks them."""
    if not models or not all(capacities in m for m in models):
        return None
    caps = [m[capacities] for m in models]
    return capacity.fit_bits_per_param([m["params"][count] for m in models], caps)


def params_for_recall(
    records: list[Record], target: float = RECALL_TARGET, dtype: str = "float32"
) -> list[dict]:
    """For each mode and fact count, the smallest model (total params) whose recall, mean
    over its seeds, reaches `target`, per fact and per bit of the world's entropy, with the
    next smaller model tried (`below`: None when the passing model is the smallest tried, so
    the count is not bracketed); params None where no model of the sweep passed."""
    cells = defaultdict(list)
    for r in records:
        if r["model"]["dtype"] == dtype and r["mode"] != TOKENS:
            cells[(r["mode"], r["n_facts"], json.dumps(r["model"]))].append(r)
    tried = defaultdict(list)
    for (mode, n, _), rs in cells.items():
        tried[(mode, n)].append(
            {
                "params": rs[0]["params"]["total"],
                "model": model_name(rs[0]["model"]),
                "recall": float(np.mean([r["metrics"]["recall"] for r in rs])),
                "seeds": len(rs),
                "bits_per_fact": float(np.mean([r["world"]["entropy_bits"] for r in rs])) / n,
            }
        )
    rows = []
    for (mode, n), models in sorted(tried.items()):
        models.sort(key=lambda m: m["params"])
        best = next((m for m in models if m["recall"] >= target), None)
        smaller = [m for m in models if best and m["params"] < best["params"]]
        bits = n * models[0]["bits_per_fact"]
        rows.append(
            {
                "n_facts": n,
                "mode": mode,
                **(passed(best, n, bits) if best else dict.fromkeys(PASSED_FIELDS)),
                "bits_per_fact": models[0]["bits_per_fact"],
                "below": smaller[-1] if smaller else None,
                "best_recall": max(m["recall"] for m in models),
                "largest_params_tried": models[-1]["params"],
            }
        )
    return rows


PASSED_FIELDS = ("params", "model", "recall", "seeds", "params_per_fact", "params_per_bit")


def passed(model: dict, n_facts: int, bits: float) -> dict:
    """The PASSED_FIELDS of a params-for-recall row from its smallest passing model."""
    return {
        "params": model["params"],
        "model": model["model"],
        "recall": model["recall"],
        "seeds": model["seeds"],
        "params_per_fact": model["params"] / n_facts,
        "params_per_bit": model["params"] / bits,
    }


def format_capacity(groups: list[dict]) -> str:
    """Terminal table of capacity_summary."""
    lines = []
    for g in groups:
        fit, fit_ne = g["fit"], g["fit_non_embedding"]
        if fit is None:
            lines.append(
                f"{g['world']} {g['dtype']}: no fit (every model is data-capped: give it more "
                f"facts); published {g['published_bits_per_param']}"
            )
        else:
            lines.append(
                f"{g['world']} {g['dtype']}: {fit['bits_per_param']:.2f} bits/param "
                f"[{fit['interval'][0]:.2f}, {fit['interval'][1]:.2f}], non-embedding "
                f"{fit_ne['bits_per_param']:.2f} [{fit_ne['interval'][0]:.2f}, "
                f"{fit_ne['interval'][1]:.2f}] over {len(g['fit_cells'])} models; published "
                f"{g['published_bits_per_param']}"
            )
            if g["fit_corrected"] is not None:
                fc = g["fit_corrected"]
                lines.append(
                    f"  above the noise floor: {fc['bits_per_param']:.2f} bits/param "
                    f"[{fc['interval'][0]:.2f}, {fc['interval'][1]:.2f}]"
                )
        lines.append(format_table(g["models"], MODEL_COLUMNS))
        for m in g["models"]:
            if "loss_peak" in m:
                peak = m["loss_peak"]
                lines.append(
                    f"{m['name']}: held-out loss peaks at {peak['dataset_bits']:,.0f} data bits "
                    f"= {peak['over_capacity']:.2f} x capacity"
                    + ("" if peak["turned"] else " (at an end of the range: no turn seen)")
                )
    return "\n".join(lines)


def status(m: dict) -> str:
    """A capacity model's status: saturated or a lower bound, converged, counts it rests on."""
    text = ("saturated" if m["saturated"] else "data-capped (lower bound)") + (
        "" if m["converged"] else ", unconverged"
    )
    if len(m["counts_around_capacity"]) < 4:
        text += f", {len(m['counts_around_capacity'])} counts at 0.5-4x capacity"
    return text


MODEL_COLUMNS = (
    ("model", "name"),
    ("params", lambda m: m["params"]["total"], ","),
    ("non-emb", lambda m: m["params"]["non_embedding"], ","),
    ("capacity", "capacity_bits", ",.0f"),
    ("bits/param", "bits_per_param", ".2f"),
    ("floor b/fact", lambda m: m.get("noise_floor_bits_per_fact"), ".3f"),
    ("corrected b/param", lambda m: m.get("bits_per_param_corrected"), ".2f"),
    ("best n", "best_n_facts"),
    ("gain/e-fold", "gain_per_efold", "+.2f"),  # bits/param per e-fold of steps at the end
    ("status", status),
)
RECALL_COLUMNS = (  # a count no model reached: params None, the best recall of those tried
    ("mode", "mode"),
    ("facts", "n_facts"),
    ("params", "params", ","),
    ("model", "model"),
    ("recall", lambda r: r["best_recall"] if r["params"] is None else r["recall"], ".3f"),
    ("params/fact", "params_per_fact", ".2f"),
    ("params/bit", "params_per_bit", ".2f"),
    ("next smaller", lambda r: r["below"] and f"{r['below']['model']} {r['below']['recall']:.3f}"),
    (
        "largest tried",
        lambda r: r.get("largest_params_tried") if r["params"] is None else None,
        ",",
    ),
)


def format_params_for_recall(rows: list[dict]) -> str:
    return format_table(rows, RECALL_COLUMNS)


def write_plots(cap: list[dict], rows: list[dict], folder: str | Path) -> list[str]:
    """The capacity figures into folder (none without in-weight cells; held-out loss only
    for random tokens); their paths."""
    folder = Path(folder)
    paths = [plots.capacity_vs_params(cap, folder / "capacity_vs_params.png")] if cap else []
    for g in cap:
        name = f"bits_vs_facts_{g['world']}_{g['dtype']}.png"
        paths.append(plots.bits_vs_facts(g["models"], folder / name, f"{g['world']}, {g['dtype']}"))
        name = f"bits_vs_steps_{g['world']}_{g['dtype']}.png"
        paths.append(plots.bits_vs_steps(g["models"], folder / name, f"{g['world']}, {g['dtype']}"))
        curves = [m for m in g["models"] if "loss_peak" in m]
        if curves:
            name = f"held_out_loss_{g['world']}_{g['dtype']}.png"
            paths.append(plots.held_out_loss_vs_data(curves, folder / name))
    if rows:
        path = folder / "params_for_recall.png"
        paths.append(plots.params_for_recall(rows, path, PUBLISHED_PARAMS_FOR_RECALL))
    return [str(p) for p in paths]
