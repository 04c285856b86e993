"""Natural text in the facts' vocabulary: a UTF-8 file modelled byte by byte, each byte two
value symbols (high nibble, low nibble), so that any file fits the fixed vocabulary:

    BOS TEXT <2 * TEXT_WINDOW nibbles>                 loss on every nibble

TEXT is the reserved id 15. A text file is a path, or `stdlib:REL` for a file of this
Python's standard library. Held-out windows come from the last `held_out` share of its bytes;
a text is scored in bits per byte (text_score).
"""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import numpy as np

from recall_bench.formats import BOS, PAD, Sequences, Vocab

TEXT = 15  # marker of a text window
TEXT_WINDOW = 9  # bytes per text window: BOS TEXT + 18 nibbles fill the 20-position model
NIBBLES = 16  # value symbols a byte's halves use


def read_text(path: str, held_out: float) -> bytes:
    """The bytes of a UTF-8 text file long enough for training and held-out windows; a
    ValueError that says what to do otherwise."""
    try:
        data = text_path(path).read_bytes()
    except OSError as err:
        raise ValueError(
            f"text file {path!r} cannot be read ({err.strerror}): give the path of a UTF-8 "
            "text file"
        ) from None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"text file {path!r} is not valid UTF-8 ({err.reason} at byte {err.start}): "
            "convert it to UTF-8 or give another file"
        ) from None
    split = text_split(len(data), held_out)
    if min(split, len(data) - split) < TEXT_WINDOW:
        need = math.ceil((TEXT_WINDOW + 0.5) / min(held_out, 1.0 - held_out))
        raise ValueError(
            f"text file {path!r} has {len(data)} bytes: too short for a {TEXT_WINDOW}-byte "
            f"training window and a held-out one in its last {held_out:.0%}; give a file of "
            f"at least {need} bytes"
        )
    return data


def text_path(name: str) -> Path:
    """The file a text name points to: `stdlib:REL` is REL in this Python's standard library."""
    if name.startswith("stdlib:"):
        return Path(sysconfig.get_path("stdlib")) / name.removeprefix("stdlib:")
    return Path(name)


def text_split(n_bytes: int, held_out: float) -> int:
    """Where the held-out part of an n_bytes text begins."""
    return n_bytes - round(n_bytes * held_out)


def nibbles(data: np.ndarray) -> np.ndarray:
    """[..., 2n] the high and low nibble of each byte of [..., n] uint8 data, in order."""
    data = np.asarray(data, np.uint8)
    return np.stack([data >> 4, data & 15], axis=-1).reshape(*data.shape[:-1], -1)


def render_text(data: bytes, starts: np.ndarray, vocab: Vocab, width: int) -> Sequences:
    """BOS TEXT nibbles of the TEXT_WINDOW bytes at each start, padded to `width`; loss (and
    value mask) on every nibble."""
    buffer = np.frombuffer(data, np.uint8)
    windows = buffer[np.asarray(starts)[:, None] + np.arange(TEXT_WINDOW)]
    n, end = len(windows), 2 + 2 * TEXT_WINDOW
    tokens = np.full((n, width), PAD, np.int32)
    tokens[:, 0], tokens[:, 1] = BOS, TEXT
    tokens[:, 2:end] = nibbles(windows) + vocab.value_offset
    mask = np.zeros((n, width), np.float32)
    mask[:, 2:end] = 1.0
    return Sequences(tokens, mask, mask.copy(), 2)


def text_score(stats: dict[str, np.ndarray], seqs: Sequences) -> dict[str, float]:
    """text_bits_per_byte (the NLL in bits of all nibbles / bytes) and text_loss (nats per
    nibble) of text windows, from their sequence stats."""
    return {
        "text_bits_per_byte": float(stats["value_nll_bits"].sum() / (seqs.value_mask.sum() / 2)),
        "text_loss": float(stats["loss_sum"].sum() / seqs.loss_mask[:, 1:].sum()),
    }
