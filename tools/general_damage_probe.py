"""Where fact injection breaks the general suite: for one fact count, inject in-tool and
in-weight from a saved degradation base model (as `recall-bench degrade` does) and report,
per skill, how often the argmax is wrong at the first answer token and at later ones, and
how often the first answer token is a tool token (CALL...ERROR).

Usage: python tools/general_damage_probe.py BASE_DIR [--facts 256] [--steps 300]
(BASE_DIR: the `base` folder of a degradation run made with the default model and suite.)
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from recall_bench import formats, general
from recall_bench.experiments import degrade
from recall_bench.model import apply
from recall_bench.train import train_models
from recall_bench.worlds import make_fact_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("--facts", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    facts = dataclasses.replace(degrade.FACTS, steps=args.steps)
    cfg = degrade.DegradeConfig(fact_counts=(args.facts,), facts=facts)
    vocab = formats.Vocab.of(cfg.run_config("in-weight", args.facts).spec)
    suite = general.make_suite(cfg.suite, vocab)
    base = degrade.load_base(args.base, cfg, suite)
    for mode in ("in-tool", "in-weight"):
        world = make_fact_world(cfg.run_config(mode, args.facts).spec)
        task = degrade.injection_task(cfg, mode, world, suite)
        result = train_models(
            cfg.model_config(), cfg.injection_config(mode), [task], [cfg.seed], False,
            init_params=[base["params"]],
        )  # fmt: skip
        print(f"{mode}: {result.steps[0]} steps ({result.stop_reason[0]})")
        for skill, seqs in suite.test.items():
            pred = np.asarray(apply(result.graphdef, result.model(0), seqs.tokens[:, :-1]))
            pred = pred.argmax(-1)
            wrong = pred != seqs.tokens[:, 1:]
            mask = seqs.loss_mask[:, 1:] > 0
            rows, first = np.arange(len(pred)), mask.argmax(1)
            later = mask.copy()
            later[rows, first] = False
            tool = (pred[rows, first] >= formats.CALL) & (pred[rows, first] <= formats.ERROR)
            print(
                f"  {skill:<9} wrong at first answer token {wrong[rows, first].mean():.3f}, "
                f"at later ones {wrong[later].mean():.3f}; first token a tool token "
                f"{tool.mean():.3f}"
            )


if __name__ == "__main__":
    main()
