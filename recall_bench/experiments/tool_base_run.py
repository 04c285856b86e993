"""The tool-base protocol's cells (tool_base.py): train or load the bases, then at each fact
count write the facts into the store (zero steps) and fine-tune them in-weight under each
learning rate, with and without replay, every seed of a method in one vmapped ensemble; one
record per cell and seed, complete when built, through the run record path."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from recall_bench import formats, general
from recall_bench.checkpoint import load_params, save_params
from recall_bench.experiments import old_knowledge
from recall_bench.experiments.config import make_task
from recall_bench.experiments.evaluate import evaluate
from recall_bench.experiments.run import make_record
from recall_bench.experiments.tool_base import (
    STORE,
    ToolBaseConfig,
    base_task,
    ensemble_stats,
    finetune_task,
    make_probe,
    probe_measures,
    relative_change,
    replay_rows,
    train_first_pass,
)
from recall_bench.identity import refuse_other
from recall_bench.metrics import sequence_stats
from recall_bench.model import init_model
from recall_bench.records import clean_json, environment, read_json, write_json_atomic
from recall_bench.tool import build_store
from recall_bench.train import TrainResult, stack, train_models
from recall_bench.worlds import make_fact_world


def log(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr)


def base_key(cfg: ToolBaseConfig) -> dict:
    """What shapes a base: its run, the suite and the mix (checked when a saved one is reused)."""
    fields = ("base", "suite", "general_fraction", "old_fraction", "base_rows")
    return clean_json({f: dataclasses.asdict(cfg)[f] for f in fields})


def old_stats(graphdef, params, old) -> dict[str, float]:
    seqs = old_knowledge.old_rows(old)
    stats = sequence_stats(graphdef, params, seqs.tokens, seqs.loss_mask, seqs.value_mask)
    return old_knowledge.old_scores(stats, old)


def train_bases(cfg: ToolBaseConfig, suite: general.Suite, progress: bool) -> dict[int, dict]:
    """One base per seed, trained as one ensemble: {seed: {graphdef, params, info}}."""
    tasks = [base_task(cfg, s, suite) for s in cfg.seeds]
    model_cfg, train_cfg = cfg.model_config(), cfg.base_train_config()
    result = train_models(model_cfg, train_cfg, tasks, list(cfg.seeds), progress)
    bases = {}
    for k, seed in enumerate(cfg.seeds):
        params = result.model(k)
        old = old_knowledge.old_world(dataclasses.replace(cfg.base, seed=seed), seed)
        info = {
            "key": base_key(cfg),
            "seed": seed,
            "scores": {
                **general.score(result.graphdef, params, suite),
                **old_stats(result.graphdef, params, old),
            },
            "train": {
                "steps": result.steps[k],
                "final_loss": result.history[k][-1]["loss"],
                "monitor_recall": result.history[k][-1]["recall"],
                "wall_s": result.wall_s,
                "compile_s": result.compile_s,
                "ensemble_size": len(cfg.seeds),
                "env": result.env,
            },
        }
        bases[seed] = {"graphdef": result.graphdef, "params": params, "info": info}
    return bases


def bases_for(cfg: ToolBaseConfig, suite: general.Suite, out: Path, progress: bool) -> dict:
    """The bases saved in out/base-s*/ (of the same key), or freshly trained and saved."""
    folders = {s: out / f"base-s{s}" for s in cfg.seeds}
    if all((f / "base.json").exists() for f in folders.values()):
        graphdef, like = init_model(cfg.model_config(), 0)
        bases = {}
        for seed, folder in folders.items():
            info = read_json(folder / "base.json")
            refuse_other(folder, "a tool-base base model", info["key"], base_key(cfg))
            params = load_params(folder / "params", like)
            bases[seed] = {"graphdef": graphdef, "params": params, "info": info}
        return bases
    log(progress, f"training the bases (general + tool pool + old facts), seeds {cfg.seeds}")
    bases = train_bases(cfg, suite, progress)
    for seed, base in bases.items():
        save_params(folders[seed] / "params", base["params"])
        write_json_atomic(folders[seed] / "base.json", base["info"])
    return bases


def kept(metrics: dict, base: dict, chance: float) -> dict[str, float | None]:
    """General ability and old knowledge relative to the base's (graded above chance)."""
    ratio = lambda a, b: a / b if b else None  # noqa: E731
    return {
        **general.kept(metrics, base, chance),
        "old_recall_kept": ratio(metrics["old_recall"], base["old_recall"]),
        "old_bits_kept": ratio(metrics["old_bits"], base["old_bits"]),
    }


def cell_path(out: Path, method: str, lr: float | None, n: int, seed: int) -> Path:
    tag = method if lr is None else f"{method}-lr{lr:g}"
    return out / f"{tag}-{n}-s{seed}"


def cell_record(cfg, cell, world, task, result, k, metrics, base, extra) -> dict:
    """The record of model k of a cell's ensemble, complete: the run record plus the
    protocol's block (method, lr, first-pass step or None, base, config)."""
    method, lr, n, seed = cell
    reached = result.stop_reason[k] == "recall"
    block = {
        "method": method,
        "lr": lr,
        "replay": method.endswith("+replay"),
        "gradient_steps": result.steps[k],
        "budget": 0 if method == STORE else cfg.steps,
        "target_recall": cfg.target_recall,
        "reached": reached,
        "first_pass_step": result.steps[k] if reached else None,
        "base": base["info"],
        "config": clean_json(dataclasses.asdict(cfg)),
        **extra,
    }
    run = cfg.cell_config(n, seed, lr)
    # what the run's config alone does not say: it starts from the base, and how it trains
    cell = {
        "protocol": "tool-base",
        "method": method,
        "replay_fraction": cfg.replay_fraction if block["replay"] else 0.0,
        "target_recall": cfg.target_recall,
        "base": base_key(cfg),
    }
    return make_record(
        run, world, result, k, metrics, task, cell, protocol="tool-base", tool_base=block
    )


def store_cells(cfg, n: int, bases: dict, suite: general.Suite, out: Path) -> list[dict]:
    """Write the N new facts of each seed's world into a store and decode with the base: zero
    gradient steps; the base's parameters, general scores and old knowledge are unchanged."""
    chance = 1.0 / (cfg.suite.distractors + 1)
    records = []
    for seed, base in bases.items():
        run = cfg.cell_config(n, seed, None)
        world = make_fact_world(run.spec)
        graphdef, params = base["graphdef"], base["params"]
        store = build_store(world)
        tool, _ = evaluate(run, world, graphdef, params, store)
        store.close()
        one = stack([params])
        dtheta = float(relative_change(one, stack([base["params"]]))[0])
        # the tool's copy_accuracy (answers = the store's values) over the copy skill's
        metrics = {**base["info"]["scores"], **tool, "dtheta_rel": dtheta}
        metrics.update(kept(metrics, base["info"]["scores"], chance))
        entry = {"step": 0, "loss": None, "recall": metrics["recall"], "dtheta_rel": dtheta}
        entry["bits"] = metrics["bits_delivered"]
        reason = "recall" if metrics["recall"] >= cfg.target_recall else "budget"
        result = TrainResult(graphdef, one, [0], [reason], [[entry]], 0.0, 0.0, environment(), [])
        extra = {"general_from": "the base's scores: a store write leaves every weight unchanged"}
        record = cell_record(
            cfg, (STORE, None, n, seed), world, make_task(run, world), result, 0, metrics, base,
            extra,
        )  # fmt: skip
        write_json_atomic(cell_path(out, STORE, None, n, seed) / "record.json", record)
        records.append(record)
    return records


def finetune_cells(cfg, method: str, lr: float, n: int, bases: dict, suite, out) -> list[dict]:
    """Fine-tune every seed's base on its N new facts in-weight (method: with or without
    replay) as one ensemble, first-pass stopping; evaluate and record each."""
    seeds = list(bases)
    runs = [cfg.cell_config(n, s, lr) for s in seeds]
    worlds = [make_fact_world(r.spec) for r in runs]
    olds = [old_knowledge.old_world(dataclasses.replace(cfg.base, seed=s), s) for s in seeds]
    tasks, probes = [], []
    for world, old in zip(worlds, olds, strict=True):
        new = formats.render(world, "in-weight")
        replay = None
        if method.endswith("+replay"):
            replay = replay_rows(cfg, suite, old, max(4096, len(new.tokens)))
        tasks.append(finetune_task(cfg, new, world.fact_bits(), replay))
        probes.append(make_probe(cfg, suite, old_knowledge.old_rows(old), new))
    graphdef = bases[seeds[0]]["graphdef"]
    base_params = stack([bases[s]["params"] for s in seeds])
    labels = [{"old": o, "new_bits": w.fact_bits()} for o, w in zip(olds, worlds, strict=True)]

    def measure(params, step: int) -> list[dict]:
        stats = ensemble_stats(graphdef, params, probes)
        dtheta = relative_change(params, base_params)
        return [
            {**probe_measures(s, p, suite, lab), "dtheta_rel": float(d)}
            for s, p, lab, d in zip(stats, probes, labels, dtheta, strict=True)
        ]

    train_cfg = runs[0].train_config()
    result = train_first_pass(
        graphdef, train_cfg, tasks, seeds, base_params, measure, cfg.target_recall
    )
    chance = 1.0 / (cfg.suite.distractors + 1)
    records = []
    for k, seed in enumerate(seeds):
        params, base = result.model(k), bases[seed]
        metrics, _ = evaluate(runs[k], worlds[k], graphdef, params)
        metrics.update(general.score(graphdef, params, suite))
        metrics.update(old_stats(graphdef, params, olds[k]))
        metrics["dtheta_rel"] = result.history[k][-1]["dtheta_rel"]
        metrics.update(kept(metrics, base["info"]["scores"], chance))
        share = 1.0 - cfg.replay_fraction if method.endswith("+replay") else 1.0
        extra = {
            "fact_exposures": result.steps[k] * train_cfg.batch_size * share / n,
            "old_key_overlap": old_knowledge.key_overlap(olds[k], worlds[k]),
            "probe": {"prompts_per_skill": cfg.probe_prompts, "text_windows": cfg.probe_text},
        }
        cell = (method, lr, n, seed)
        record = cell_record(cfg, cell, worlds[k], tasks[k], result, k, metrics, base, extra)
        write_json_atomic(cell_path(out, method, lr, n, seed) / "record.json", record)
        records.append(record)
    return records


def finished(cfg: ToolBaseConfig, paths: list[Path], resume: bool) -> list[dict] | None:
    """The records at paths when every one exists and was made under cfg's cell key (with
    resume); any record there without resume is an error (an earlier sweep's)."""
    if any(p.exists() for p in paths) and not resume:
        raise ValueError(
            f"{paths[0].parent.parent} holds cells of an earlier sweep: pass --resume to keep "
            "finished ones, or choose another --out"
        )
    if not all(p.exists() for p in paths):
        return None
    records = [read_json(p) for p in paths]
    key = cell_key(cfg)
    return records if all(cell_key(r["tool_base"]["config"]) == key for r in records) else None


def cell_key(cfg: ToolBaseConfig | dict) -> dict:
    """What decides a cell: the config less its lists of cells (fact counts, lrs, replay)."""
    fields = clean_json(dataclasses.asdict(cfg) if isinstance(cfg, ToolBaseConfig) else cfg)
    return {k: v for k, v in fields.items() if k not in ("fact_counts", "lrs", "replay")}


def run_cells(cfg: ToolBaseConfig, out: Path, progress: bool, resume: bool) -> tuple[dict, list]:
    """The bases, then every fact count's cells: (bases, records)."""
    spec = cfg.cell_config(2, 0, None).spec
    suite = general.make_suite(cfg.suite, formats.Vocab.of(spec))
    bases = bases_for(cfg, suite, out, progress)
    records = []
    for n in cfg.fact_counts:
        for method, lr in cfg.methods():
            paths = [cell_path(out, method, lr, n, s) / "record.json" for s in cfg.seeds]
            done = finished(cfg, paths, resume)
            if done is None:
                log(progress, f"{n} new facts: {method}" + ("" if lr is None else f", lr {lr:g}"))
                if method == STORE:
                    done = store_cells(cfg, n, bases, suite, out)
                else:
                    done = finetune_cells(cfg, method, lr, n, bases, suite, out)
            records += done
    return bases, records
