"""The tool-base protocol's cells (tool_base.py): train or load the bases, then at each fact
count write the facts into the store (zero steps) and fine-tune them in-weight under each
learning rate, with and without replay (and, optionally, in-tool after the store write),
every seed of a method in one vmapped ensemble; one
record per cell and seed, trained, evaluated and recorded by the cell engine (engine.py)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from recall_bench import formats, general
from recall_bench.divergences import divergence, greedy_reference, logits_of, reference_divergence
from recall_bench.experiments import old_knowledge
from recall_bench.experiments.config import make_task
from recall_bench.experiments.engine import Cell, base_models, run_cells
from recall_bench.experiments.evaluate import evaluate
from recall_bench.experiments.recording import load_base, save_base
from recall_bench.experiments.tool_base import (
    STORE,
    TOOL_FT,
    ToolBaseConfig,
    base_task,
    finetune_task,
    make_probe,
    probe_measures,
    replay_rows,
)
from recall_bench.metrics import ensemble_stats, relative_change, sequence_stats
from recall_bench.progress import log
from recall_bench.records import clean_json, environment
from recall_bench.stopping import FirstPass
from recall_bench.tool import build_store
from recall_bench.train import Task, TrainResult, stack, take, train_models
from recall_bench.worlds import make_fact_world


def base_key(cfg: ToolBaseConfig) -> dict:
    """What shapes a base: its run, the suite and the mix (checked when a saved one is reused)."""
    fields = ("base", "suite", "general_fraction", "old_fraction", "base_rows")
    return clean_json({f: dataclasses.asdict(cfg)[f] for f in fields})


def old_stats(graphdef, params, old) -> dict[str, float]:
    seqs = old_knowledge.old_rows(old)
    stats = sequence_stats(graphdef, params, seqs.tokens, seqs.loss_mask, seqs.value_mask)
    return old_knowledge.old_scores(stats, old)


def train_bases(cfg: ToolBaseConfig, suite: general.Suite, progress: bool) -> dict[int, dict]:
    """One base per seed, trained by the cell engine as one ensemble (cells over no fact world,
    their records unwritten: base.json is bases_for's): {seed: {graphdef, params, info}}."""
    tasks = {seed: functools.partial(base_task, cfg, seed, suite) for seed in cfg.seeds}
    made = base_models(tasks, cfg.model_config(), cfg.base_train_config(), progress)
    bases = {}
    for seed, (graphdef, params, record) in made.items():
        old = old_knowledge.old_world(dataclasses.replace(cfg.base, seed=seed), seed)
        train = record["train"]
        info = {
            "key": base_key(cfg),
            "seed": seed,
            "scores": {
                **general.score(graphdef, params, suite),
                **old_stats(graphdef, params, old),
            },
            "train": {
                "steps": train["steps"],
                "final_loss": train["final_loss"],
                "monitor_recall": train["history"][-1]["recall"],
                "wall_s": train["wall_s"],
                "compile_s": train["compile_s"],
                "ensemble_size": train["ensemble_size"],
                "env": record["env"],
            },
        }
        bases[seed] = {"graphdef": graphdef, "params": params, "info": info}
    return bases


def bases_for(cfg: ToolBaseConfig, suite: general.Suite, out: Path, progress: bool) -> dict:
    """The bases saved in out/base-s*/ (of the same key), or freshly trained and saved."""
    folders = {s: out / f"base-s{s}" for s in cfg.seeds}
    if all((f / "base.json").exists() for f in folders.values()):
        key = ("key", base_key(cfg))
        what = "a tool-base base model"
        return {s: load_base(f, what, key, cfg.model_config()) for s, f in folders.items()}
    log(progress, f"training the bases (general + tool pool + old facts), seeds {cfg.seeds}")
    bases = train_bases(cfg, suite, progress)
    for seed, base in bases.items():
        save_base(folders[seed], base)
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


def make_cell(cfg: ToolBaseConfig, cell: tuple, bases: dict, suite, out: Path) -> Cell:
    """An engine cell of the sweep, started from its seed's base: a store write (zero steps,
    each seed alone) or fine-tuning with first-pass stopping (the seeds as one ensemble)."""
    method, lr, n, seed = cell
    base = bases[seed]
    old = old_knowledge.old_world(dataclasses.replace(cfg.base, seed=seed), seed)
    if method == STORE:
        how = dict(
            trainer=functools.partial(store_write, cfg, n, base["graphdef"]),
            # its general ability and old knowledge: the base's scores (every weight is the
            # base's; the tool's copy_accuracy, answers = the store's values, stays the tool's),
            # and its divergence from the base (measured: zero)
            measures=(functools.partial(changed, cfg, base, suite, scores=base["info"]["scores"]),),
            group=seed,
        )
    else:
        how = dict(
            task=functools.partial(new_facts_task, cfg, (method, lr, n), suite, old),
            trainer=functools.partial(fine_tune, cfg, (method, lr, n), suite, bases),
            measures=(functools.partial(finetune_measures, cfg, base, suite, old),),
            group=(method, lr),
        )
    return Cell(
        cfg.cell_config(n, seed, lr, method),
        cell_path(out, method, lr, n, seed),
        init=lambda: base["params"],
        fields=functools.partial(cell_fields, cfg, cell, base, old),
        identity=(lambda record: cell_key(record["tool_base"]["config"]), cell_key(cfg)),
        floor=False,
        **how,
    )


def cell_fields(cfg, cell, base, old, result: TrainResult, k: int) -> dict:
    """What the record of model k adds to the run record: the protocol's block (method, lr,
    first-pass step or None, base, config) and, in its config, how the cell trains."""
    method, lr, n, seed = cell
    reached = result.stop_reason[k] == "recall"
    run = cfg.cell_config(n, seed, lr, method)
    if method == STORE:
        extra = {"general_from": "the base's scores: a store write leaves every weight unchanged"}
    else:
        share = 1.0 - cfg.replay_fraction if method.endswith("+replay") else 1.0
        trained = run.trained_entities() * run.spec.n_attributes  # in-tool: some held out
        extra = {
            "fact_exposures": result.steps[k] * run.batch_size * share / trained,
            "old_key_overlap": old_knowledge.key_overlap(old, make_fact_world(run.spec)),
            "probe": {"prompts_per_skill": cfg.probe_prompts, "text_windows": cfg.probe_text},
        }
    block = {
        "method": method,
        "lr": lr,
        "replay": method.endswith("+replay"),
        "gradient_steps": result.steps[k],
        "budget": {STORE: 0, TOOL_FT: cfg.in_tool_steps}.get(method, cfg.steps),
        "target_recall": cfg.target_recall,
        "reached": reached,
        "first_pass_step": result.steps[k] if reached else None,
        "base": base["info"],
        "config": clean_json(dataclasses.asdict(cfg)),
        **extra,
    }
    # what the run's config alone does not say: it starts from the base, and how it trains
    how = {
        "protocol": "tool-base",
        "method": method,
        "replay_fraction": cfg.replay_fraction if block["replay"] else 0.0,
        "target_recall": cfg.target_recall,
        "base": base_key(cfg),
    }
    config = {**dataclasses.asdict(run), "evaluation": how}
    return {"config": config, "protocol": "tool-base", "tool_base": block}


def method_cells(cfg, method: str, lr, n: int, bases: dict, suite, out, resume=False) -> list:
    """Every seed's cell of one method at N, run by the engine (with resume, finished ones
    kept): a store write (the base decodes through a store of the N new facts; zero gradient
    steps, its parameters, general scores and old knowledge unchanged), or fine-tuning on the
    new facts (the seeds as one ensemble, first-pass stopping); their records."""
    cells = [make_cell(cfg, (method, lr, n, s), bases, suite, out) for s in bases]
    return run_cells(cells, progress=False, resume=resume)


def store_write(cfg, n: int, graphdef, model_cfg, train_cfg, tasks, seeds, progress, init_params):
    """Zero gradient steps: the bases, each with one evaluation (step 0) of its recall through
    a store of its seed's N new facts; stopped on the recall target or its (empty) budget."""
    params = stack(init_params)
    dtheta = relative_change(params, stack(init_params))
    reasons, history = [], []
    for k, seed in enumerate(seeds):
        run = cfg.cell_config(n, seed, None)
        world = make_fact_world(run.spec)
        store = build_store(world)
        tool, _ = evaluate(run, world, graphdef, init_params[k], store)
        store.close()
        entry = {"step": 0, "loss": None, "recall": tool["recall"], "dtheta_rel": float(dtheta[k])}
        entry["bits"] = tool["bits_delivered"]
        reasons.append("recall" if tool["recall"] >= cfg.target_recall else "budget")
        history.append([entry])
    k = len(seeds)
    return TrainResult(graphdef, params, [0] * k, reasons, history, 0.0, 0.0, environment(), [])


def changed(cfg, base: dict, suite, result: TrainResult, k: int, metrics, scores: dict) -> dict:
    """Model k's `scores` the metrics lack, its change from the base (dtheta_rel), its KL and
    TV from the base (at the suite's answer positions and on the base's own greedy
    continuations of its fixed prompts) and what it kept of the base's."""
    out = {key: v for key, v in scores.items() if key not in metrics}
    out["dtheta_rel"] = result.history[k][-1]["dtheta_rel"]
    model = (result.graphdef, result.model(k))
    out.update(divergence(base["graphdef"], base["params"], *model, suite))
    chance = 1.0 / (cfg.suite.distractors + 1)
    return {**out, **kept({**metrics, **out}, base["info"]["scores"], chance)}


def new_facts_task(cfg, cell: tuple, suite, old, world) -> Task:
    """A fine-tuning cell's rows: its new facts in-weight, with replay rows for +replay; or the
    in-tool traces of its new facts' trained entities (TOOL_FT)."""
    method, lr, n = cell
    if method == TOOL_FT:
        task = make_task(cfg.cell_config(n, world.spec.seed, lr, method), world)
        width = cfg.model_config().max_len
        return Task(general.pad_to(task.train, width), task.monitor, task.monitor_bits)
    new = formats.render(world, "in-weight")
    replay = None
    if method.endswith("+replay"):
        replay = replay_rows(cfg, suite, old, max(4096, len(new.tokens)))
    return finetune_task(cfg, new, world.fact_bits(), replay)


def fine_tune(
    cfg, cell: tuple, suite, bases, model_cfg, train_cfg, tasks, seeds, progress, init_params
):
    """The seeds' bases fine-tuned as one ensemble by train_models, each evaluated on its probe
    at step 0 and every eval_every steps and stopped at the first evaluation that passes the
    target (FirstPass). The new facts are probed as trained: in-weight, or as in-tool traces
    (TOOL_FT: teacher-forced, the store's answer in the row); greedy_tv and greedy_kl are
    on each base's own greedy continuations of the suite's fixed prompts."""
    method, lr, n = cell
    probes, labels, references = [], [], []
    for seed in seeds:
        old = old_knowledge.old_world(dataclasses.replace(cfg.base, seed=seed), seed)
        world = make_fact_world(cfg.cell_config(n, seed, lr, method).spec)
        new = formats.render(world, "in-tool" if method == TOOL_FT else "in-weight")
        probes.append(make_probe(cfg, suite, old_knowledge.old_rows(old), new))
        labels.append({"old": old, "new_bits": world.fact_bits()})
        references.append(greedy_reference(bases[seed]["graphdef"], bases[seed]["params"], suite))
    graphdef = bases[seeds[0]]["graphdef"]
    base_params = stack(init_params)

    def measure(params, step: int) -> list[dict]:
        stats = ensemble_stats(graphdef, params, [p.seqs for p in probes])
        dtheta = relative_change(params, base_params)
        out = []
        for m, (s, p, lab, d) in enumerate(zip(stats, probes, labels, dtheta, strict=True)):
            greedy = reference_divergence(references[m], logits_of(graphdef, take(params, m)))
            greedy = {key: greedy[key] for key in ("greedy_tv", "greedy_kl")}
            out.append({**probe_measures(s, p, suite, lab), "dtheta_rel": float(d), **greedy})
        return out

    stop = FirstPass(measure, cfg.target_recall)
    return train_models(
        model_cfg, train_cfg, tasks, seeds, progress, init_params=init_params, first_pass=stop
    )


def finetune_measures(cfg, base: dict, suite, old, result: TrainResult, k: int, metrics) -> dict:
    """A fine-tuned model's general ability, old knowledge, divergence and change from the
    base, and what it kept of the base's (an in-tool model's copy_accuracy stays the tool's)."""
    graphdef, params = result.graphdef, result.model(k)
    scores = {**general.score(graphdef, params, suite), **old_stats(graphdef, params, old)}
    return changed(cfg, base, suite, result, k, metrics, scores)


def cell_key(cfg: ToolBaseConfig | dict) -> dict:
    """What decides a cell: the config less its lists of cells (fact counts, lrs, replay)."""
    fields = clean_json(dataclasses.asdict(cfg) if isinstance(cfg, ToolBaseConfig) else cfg)
    cells = ("fact_counts", "lrs", "replay", "in_tool_lrs")
    return {k: v for k, v in fields.items() if k not in cells}


def sweep_cells(cfg: ToolBaseConfig, out: Path, progress: bool, resume: bool):
    """The bases, then every fact count's cells (with resume, finished ones kept): (bases,
    records)."""
    spec = cfg.cell_config(2, 0, None).spec
    suite = general.make_suite(cfg.suite, formats.Vocab.of(spec))
    bases = bases_for(cfg, suite, out, progress)
    records = []
    for n in cfg.fact_counts:
        for method, lr in cfg.methods():
            log(progress, f"{n} new facts: {method}" + ("" if lr is None else f", lr {lr:g}"))
            records += method_cells(cfg, method, lr, n, bases, suite, out, resume)
    return bases, records
