"""What an answer costs at 10^3 to 10^6 facts, at equal recall (>= 95%), in-weight against
in-tool: writes OUT/cost.json, OUT/cost.md and OUT/cost.png.

in-tool: one model (store_scale's: 2 layers, d=32), trained here once on 10,000 facts, then
evaluated by real decoding on up to 1,024 facts of worlds of each size through a SQLite store
and an in-memory store; its measured recall is reported beside the cost.
in-weight: the smallest float32 model whose seed-mean recall reached 0.95 among the committed
runs of the 12-bit fact world (results/leaderboard.json), at the committed fact count nearest
each size from above; past the largest such count, a 2-layer model sized by the measured
params per fact there (an extrapolation, marked so). Its latency is timed on a randomly
initialised model of that shape, which decodes to the end of its position table; the time is
scaled to the tokens of a correct answer (prompt, value, EOS).

Usage: python tools/cost_scale.py results/leaderboard.json results/cost
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from recall_bench import cost, formats, plots
from recall_bench.experiments.run import RunConfig, evaluate, make_task
from recall_bench.leaderboard import validate
from recall_bench.leaderboard.page import group_key
from recall_bench.model import GPT, ModelConfig, init_model
from recall_bench.records import environment, write_json_atomic
from recall_bench.tool import build_store
from recall_bench.train import train_models
from recall_bench.worlds import make_fact_world

SIZES = (1_000, 10_000, 100_000, 1_000_000)
SAMPLE = 1024
BATCH_ONE = 64  # answers timed one at a time (records time 8; more here for steadier numbers)
TOOL = RunConfig(mode="in-tool", n_facts=10_000, layers=2, width=32, heads=4, steps=2000)
SPEC = {"attribute_sizes": [4096], "key_length": 4, "key_alphabet": 64, "value_length": 2}


def n_params(cfg: ModelConfig) -> int:
    """Parameters of a model of cfg, from shapes only (nothing allocated)."""
    state = nnx.state(nnx.eval_shape(lambda: GPT(cfg, nnx.Rngs(0))))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def in_weight_models(leaderboard: str) -> list[dict]:
    """Per committed fact count of the 12-bit world: the smallest float32 in-weight model whose
    seed-mean recall reached 0.95 (its shape, parameters, recall and seeds)."""
    groups: dict[str, list[dict]] = {}
    for e in validate(leaderboard)["entries"]:
        if (
            e["mode"] == "in-weight"
            and e["world"]["kind"] == "facts"
            and all(e["world"]["spec"].get(k) == v for k, v in SPEC.items())
            and e["model"]["dtype"] == "float32"
        ):
            groups.setdefault(group_key(e), []).append(e)
    best: dict[int, dict] = {}
    for members in groups.values():
        recall = float(np.mean([e["metrics"]["recall"] for e in members]))
        first = members[0]
        params = first["model"]["params"]["total"]
        if recall >= 0.95 and params < best.get(first["n_facts"], {}).get("params", np.inf):
            best[first["n_facts"]] = {
                "n_facts": first["n_facts"],
                "params": params,
                "model": {k: v for k, v in first["model"].items() if k != "params"},
                "recall": recall,
                "seeds": len(members),
            }
    return [best[n] for n in sorted(best)]


def in_weight_choice(models: list[dict], n: int) -> dict:
    """The measured model for n facts (the nearest committed count >= n), or one sized by the
    params per fact of the largest measured count."""
    for m in models:
        if m["n_facts"] >= n:
            source = (
                f"measured at {m['n_facts']} facts: recall {m['recall']:.3f}, {m['seeds']} seeds"
            )
            return {"config": ModelConfig(**m["model"]), "source": source}
    last = models[-1]
    per_fact = last["params"] / last["n_facts"]
    shape = ModelConfig(**last["model"])
    width = 4
    while n_params(dataclasses.replace(shape, layers=2, width=width)) < per_fact * n:
        width += 4
    source = f"extrapolated: {per_fact:.2f} params/fact measured at {last['n_facts']}"
    return {"config": dataclasses.replace(shape, layers=2, width=width), "source": source}


def in_weight_cost(choice: dict, n: int) -> dict:
    cfg = choice["config"]
    world = make_fact_world(TOOL.spec.with_entities(min(n, SAMPLE)))
    graphdef, params = init_model(cfg, 0)
    entity, attribute = formats.fact_index(world.spec)
    prompts = formats.prompt_tokens(world, entity, attribute)
    vocab = formats.Vocab.of(world.spec)
    timed = cost.latency(graphdef, params, prompts, vocab, world.spec, None, BATCH_ONE)
    fed_random = cfg.max_len - 1  # a random model runs to the end of its position table
    fed = prompts.shape[1] + world.spec.value_length  # prompt, value, EOS: all but EOS fed
    scale = fed / fed_random
    return {
        "mode": "in-weight",
        "n_facts": n,
        "params": n_params(cfg),
        "model": f"L{cfg.layers}-d{cfg.width}",
        "source": choice["source"],
        "recall": None,
        "tokens_generated": world.spec.value_length + 1,
        "tokens_fed": fed,
        "flops": int(cost.flops_per_row(cfg, np.array([fed]))[0]),
        **cost.memory_bytes(cfg, n_params(cfg), None, None),
        "latency_batch1_s": timed["latency_batch1_s"] * scale,
        "latency_large_batch_s": timed["latency_large_batch_s"] * scale,
    }


def in_tool_cost(graphdef, params, n: int, kind: str, tmp: Path) -> dict:
    """Real decoding of up to SAMPLE facts (unseen ones where the world has them) of an n-fact
    world through a store of `kind` holding all n facts."""
    world = make_fact_world(TOOL.spec.with_entities(n))
    start = min(TOOL.trained_entities(), max(n - SAMPLE, 0))
    entities = np.arange(start, min(start + SAMPLE, n))
    path = tmp / f"store-{n}.sqlite" if kind == "sqlite" else None
    store = build_store(world, kind, path)
    metrics, decoded = evaluate(TOOL, world, graphdef, params, store, entities)
    cfg = TOOL.model_config()
    entity, attribute = formats.fact_index(world.spec, entities)
    prompts = formats.prompt_tokens(world, entity, attribute)
    spent = cost.answer_cost(cfg, decoded, prompts.shape[1], n_params(cfg), store, path)
    vocab = formats.Vocab.of(world.spec)
    timed = cost.latency(graphdef, params, prompts, vocab, world.spec, store, BATCH_ONE)
    store.close()
    return {
        "mode": f"in-tool ({kind})",
        "n_facts": n,
        "params": n_params(cfg),
        "model": f"L{cfg.layers}-d{cfg.width}",
        "source": f"trained here; {len(entities)} facts decoded",
        "recall": metrics["recall"],
        **{k: spent[k] for k in spent if k != "tokens_inserted"},
        **{k: timed[k] for k in ("latency_batch1_s", "latency_large_batch_s")},
    }


def table(rows: list[dict]) -> str:
    head = "| mode | facts | model | params | recall | tokens | FLOPs | KV bytes | store RAM | "
    head += "store disk | ms/answer (batch 1) | µs/answer (batch) | source |\n"
    head += "|" + "---|" * 13 + "\n"
    for r in rows:
        recall = "-" if r["recall"] is None else f"{r['recall']:.4f}"
        ram, disk = r.get("store_memory_bytes"), r.get("store_disk_bytes")
        head += (
            f"| {r['mode']} | {r['n_facts']:,} | {r['model']} | {r['params']:,} | {recall} | "
            f"{r['tokens_generated']:.2f} | {r['flops']:.3g} | {r['kv_cache_bytes']:,} | "
            f"{'-' if ram is None else f'{ram:,}'} | {'-' if disk is None else f'{disk:,}'} | "
            f"{1e3 * r['latency_batch1_s']:.2f} | {1e6 * r['latency_large_batch_s']:.1f} | "
            f"{r['source']} |\n"
        )
    return head


def figure(rows: list[dict], path: Path) -> None:
    panels = [
        ("memory bytes (params + store in RAM or on disk)", _bytes),
        ("forward FLOPs per answer", lambda r: r["flops"]),
        ("s per answer, batch 1", lambda r: r["latency_batch1_s"]),
        ("s per answer, one large batch", lambda r: r["latency_large_batch_s"]),
    ]
    fig, axes = plots.plt.subplots(1, 4, figsize=(18, 4))
    for ax, (label, value) in zip(axes, panels, strict=True):
        for mode in sorted({r["mode"] for r in rows}):
            pts = [r for r in rows if r["mode"] == mode]
            ax.plot([r["n_facts"] for r in pts], [value(r) for r in pts], marker="o", label=mode)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("facts (recall >= 95%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    plots.save(fig, path)


def _bytes(r: dict) -> float:
    return r["param_bytes"] + (r.get("store_memory_bytes") or 0) + r.get("store_disk_bytes", 0)


def main(leaderboard: str, out: str) -> None:
    out_dir = Path(out)
    env = environment()  # the code and machine the run started from
    world = make_fact_world(TOOL.spec)
    result = train_models(
        TOOL.model_config(), TOOL.train_config(), [make_task(TOOL, world)], [0], progress=False
    )
    graphdef, params = result.graphdef, result.model(0)
    models = in_weight_models(leaderboard)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in SIZES:
            rows.append(in_weight_cost(in_weight_choice(models, n), n))
            for kind in ("sqlite", "memory"):
                rows.append(in_tool_cost(graphdef, params, n, kind, Path(tmp)))
            print(json.dumps(rows[-3:]), flush=True)
    summary = {
        "command": f"python tools/cost_scale.py {leaderboard} {out}",
        "in_tool_training": {"steps": result.steps[0], "stop_reason": result.stop_reason[0]},
        "env": env,
        "rows": rows,
    }
    write_json_atomic(out_dir / "cost.json", summary)
    (out_dir / "cost.md").write_text(table(rows))
    figure(rows, out_dir / "cost.png")


if __name__ == "__main__":
    main(*sys.argv[1:3])
