"""In-tool: the model writes `CALL key ATTR CALL_END`, the harness queries the store and
writes `RESULT value RESULT_END`, and the model copies the value (formats.render_in_tool,
decode.greedy_decode). Trained on the first entities, evaluated on unseen ones too (design
§6); its bits are delivered with the store's help, not held in the weights."""

from __future__ import annotations

import numpy as np

from recall_bench import formats
from recall_bench.methods.base import Answers, Method, answered, split_recall
from recall_bench.tool import ERROR_STATUS, OK


def call_metrics(answers: Answers) -> dict[str, float | int | None]:
    """Recall split by seen/unseen entities, and how the calls went: valid, the right key,
    the store's answer copied, store failures, seconds spent in the store."""
    world, decoded, entity, attribute = (
        answers.world,
        answers.decoded,
        answers.entity,
        answers.attribute,
    )
    vocab = formats.Vocab.of(world.spec)
    key_right = decoded.call_valid & np.all(decoded.call_key == world.keys[entity], axis=1)
    key_right &= decoded.call_attribute == attribute
    ok = decoded.store_status == OK
    copied = answered(decoded, decoded.store_value + vocab.value_offset)
    split = split_recall(answers)
    overlap = {k: split.pop(k) for k in ("protocol_key_overlap",) if k in split}
    return {
        **split,
        "call_valid": float(decoded.call_valid.mean()),
        "call_key_accuracy": float(key_right.mean()),
        "copy_accuracy": float(copied[ok].mean()) if ok.any() else 0.0,
        "store_errors": float(np.mean(decoded.store_status == ERROR_STATUS)),
        **overlap,
        "lookup_s": decoded.lookup_s,
    }


METHOD = Method(
    name="in-tool",
    track="in-tool-recall",
    render=formats.render_in_tool,
    answer_metrics=call_metrics,
    holds_out=True,
    uses_store=True,
    calls_tool=True,
    bits_held=False,
)
