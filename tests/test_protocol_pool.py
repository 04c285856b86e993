"""The tool skill does not depend on N (docs/design.md §10): a model that learned the tool
protocol on a pool of entities of its own answers every fact of a world it never saw."""

import numpy as np

from recall_bench.experiments.run import RunConfig, make_task, run
from recall_bench.worlds import make_fact_world


def test_a_tool_model_trained_on_a_protocol_pool_recalls_a_world_it_never_saw(tmp_path):
    cfg = RunConfig(mode="in-tool", n_facts=512, tool_train_entities=500, steps=400)
    world = make_fact_world(cfg.spec)
    task = make_task(cfg, world)
    assert cfg.trained_entities() == 0 and cfg.unseen_entities() == 512
    assert len(task.train.tokens) == 500 and len(task.monitor.tokens) == cfg.validation_entities
    pool_keys = {k.tobytes() for k in cfg.protocol_pool().keys}
    assert not pool_keys & {k.tobytes() for k in world.keys}  # disjoint here (by chance)
    key_cols = slice(1, 1 + cfg.key_length)  # BOS key attribute ...: no world key is trained
    trained_keys = {row[key_cols].tobytes() for row in task.train.tokens}
    world_keys = {row[key_cols].tobytes() for row in make_task(
        RunConfig(mode="in-tool", n_facts=512), world).train.tokens}  # fmt: skip
    assert not trained_keys & world_keys
    record = run(cfg, tmp_path, progress=False)
    m = record["metrics"]
    assert m["recall_unseen"] == m["recall"] >= 0.95 and m["recall_trained"] is None
    assert m["protocol_key_overlap"] == 0
    assert record["train"]["trained_facts"] == 500
    # the same training, whatever the world's size: the pool does not depend on N
    bigger = RunConfig(mode="in-tool", n_facts=4096, tool_train_entities=500, steps=400)
    np.testing.assert_array_equal(make_task(bigger, make_fact_world(bigger.spec)).train.tokens,
                                  task.train.tokens)  # fmt: skip
