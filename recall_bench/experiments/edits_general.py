"""General ability kept by edits (docs/edits.md): base models that also learn the general
suite (general.py), half of their training rows, so that what an edit costs the skills it
never trains on can be measured next to the facts it changes. In-weight: the suite and the
facts in both phrasings; in-tool: the suite and the tool traces of the protocol pool. Every
part of the mix trains for one fixed budget (no stop on recall: docs/design.md §9).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recall_bench import general
from recall_bench.experiments.config import RunConfig
from recall_bench.formats import Vocab
from recall_bench.general import rows_of
from recall_bench.train import Task, TrainConfig

SCORED_TEXT = 1024  # held-out text windows scored per model (the first ones)


def suite_config() -> general.SuiteConfig:
    """The five skills and the standard library's text, 10,000 training rows of each, 256
    held-out prompts per skill."""
    return general.SuiteConfig(
        text_file=general.STDLIB_TEXT,
        train_per_skill=10000,
        text_train_windows=10000,
        test_per_skill=256,
    )


def check_fits(cfg: general.SuiteConfig, run: RunConfig) -> None:
    """A ValueError unless the suite's rows fit the run's model."""
    width, max_len = cfg.width, run.model_config().max_len
    if width > max_len:
        raise ValueError(
            f"the general suite's rows ({width} tokens) do not fit this world's model "
            f"({max_len} positions): give --value-length 2 (or longer keys)"
        )


def make_suite(cfg: general.SuiteConfig, run: RunConfig) -> general.Suite:
    """The suite in the run's vocabulary, its held-out text cut to SCORED_TEXT windows."""
    check_fits(cfg, run)
    suite = general.make_suite(cfg, Vocab.of(run.spec))
    if suite.text is None:
        return suite
    windows = np.arange(min(SCORED_TEXT, len(suite.text.tokens)))
    return dataclasses.replace(suite, text=rows_of(suite.text, windows))


def mixed_task(task: Task, suite: general.Suite, width: int) -> Task:
    """task's training rows and the suite's training data, each cycled to the larger count:
    half general data; the monitor unchanged."""
    n = max(len(task.train.tokens), len(suite.train.tokens))
    parts = [rows_of(seqs, np.arange(n) % len(seqs.tokens)) for seqs in (task.train, suite.train)]
    train = general.pad_to(general.concat(parts), width)
    return Task(train, general.pad_to(task.monitor, width), task.monitor_bits)


def general_training(cfg: general.SuiteConfig, run: RunConfig) -> tuple[TrainConfig, general.Suite]:
    """(the run's training for its whole budget (neither the recall target nor the plateau
    stops it), the suite the bases mix in)."""
    return run.train_config().whole_budget(), make_suite(cfg, run)
