"""Cost per answered fact: FLOPs and token counts on hand-checked tiny cases, and the cost
block of a real (tiny) in-tool record."""

from __future__ import annotations

import numpy as np

from recall_bench import cost
from recall_bench.decode import Decoded
from recall_bench.formats import BOS, CALL, CALL_END, EOS, PAD, RESULT, RESULT_END
from recall_bench.model import ModelConfig

TINY = ModelConfig(vocab_size=10, max_len=4, layers=1, width=4, heads=1, mlp_ratio=2)


def test_flops_by_hand() -> None:
    # width 4, one layer, MLP 4 -> 8 -> 4, vocabulary 10, 2 FLOPs per multiply-add:
    # qkv 2*4*12 = 96, out projection 2*4*4 = 32, attention over 1 key 2*(4 + 4) = 16,
    # MLP 2*(4*8 + 8*4) = 128, tied output projection 2*4*10 = 80: 352 at position 0.
    assert cost.flops_per_token(TINY, 0) == 96 + 32 + 16 + 128 + 80 == 352
    assert cost.flops_per_token(TINY, 1) == 352 + 16  # one more cached key to attend over
    assert cost.flops_per_token(two_layers(), 0) == (2 * (96 + 32 + 16 + 128) + 80)
    fed = np.array([0, 1, 3])
    assert cost.flops_per_row(TINY, fed).tolist() == [0, 352, 352 + 368 + 384]


def two_layers() -> ModelConfig:
    return ModelConfig(vocab_size=10, max_len=4, layers=2, width=4, heads=1, mlp_ratio=2)


def _decoded(tokens: np.ndarray) -> Decoded:
    n = len(tokens)
    empty = np.zeros(n, bool)
    return Decoded(
        tokens, tokens, empty, empty, tokens, empty, empty, tokens, tokens, empty, [], 0.0
    )


def test_token_counts_by_hand() -> None:
    """The call and the copy are generated; the store's RESULT ... RESULT_END is inserted."""
    tool_row = [BOS, 20, 21, CALL, 30, CALL_END, RESULT, 40, 41, RESULT_END, 40, 41, EOS, PAD]
    weight_row = [BOS, 20, 21, 40, 41, EOS] + [PAD] * 8
    counts = cost.token_counts(_decoded(np.array([tool_row, weight_row])), prompt_length=3)
    # tool: CALL 30 CALL_END 40 41 EOS generated, 4 inserted, 13 tokens of which 12 fed
    assert counts["generated"].tolist() == [6, 3]
    assert counts["inserted"].tolist() == [4, 0]
    assert counts["fed"].tolist() == [12, 5]
    stray = np.array([[BOS, 20, 21, RESULT, 40, RESULT_END, EOS]])  # no call: all generated
    assert cost.token_counts(_decoded(stray), 3)["generated"].tolist() == [4]


def test_memory_bytes() -> None:
    out = cost.memory_bytes(TINY, 1000, None, None)
    assert out == {"param_bytes": 4000, "kv_cache_bytes": 2 * 1 * 4 * 4 * 4}
