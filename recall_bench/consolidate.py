"""Consolidation ("sleep"): a model that uses a key-value tool answers questions through its
store; what it wrote, right or wrong, becomes in-weight training data for its own weights,
trained offline with no store and with rehearsal of what it already holds.

    answered through the store:  BOS key ATTR | CALL key ATTR CALL_END RESULT v RESULT_END a EOS
    consolidation sequence:      BOS key ATTR | a EOS         (a: the model's answer, loss on it)

A fact whose answer is not a well-formed value (wrong length, or a non-value token) gives no
sequence: there is nothing to write into the weights. The offline phase itself is cells of
the engine (experiments/consolidate.py).
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from recall_bench import formats, general, streams
from recall_bench.decode import Decoded, greedy_decode
from recall_bench.formats import Sequences
from recall_bench.tool import Store
from recall_bench.worlds import FactWorld


def answer_sequences(world: FactWorld, decoded: Decoded) -> tuple[Sequences, np.ndarray]:
    """In-weight sequences of the world's facts (entity-major) carrying the decoded answers in
    place of the true values, and [n_facts] which facts gave a well-formed value (only those
    rows are returned)."""
    spec = world.spec
    vocab = formats.Vocab.of(spec)
    seqs = formats.render_in_weight(world)
    p, v = seqs.prompt_length, spec.value_length
    answer = decoded.answer[:, :v]
    symbols = answer - vocab.value_offset
    kept = (decoded.answer_length == v) & ((symbols >= 0) & (symbols < spec.value_alphabet)).all(1)
    tokens = seqs.tokens.copy()
    tokens[:, p : p + v] = np.where(kept[:, None], answer, tokens[:, p : p + v])
    return general.rows_of(Sequences(tokens, seqs.loss_mask, seqs.value_mask, p), kept), kept


def own_answers(
    graphdef: nnx.GraphDef, params: nnx.State, world: FactWorld, store: Store
) -> tuple[Sequences, np.ndarray, Decoded]:
    """The model answers every fact of `world` by greedy decoding with `store` in the loop;
    (its answers as in-weight sequences, which facts gave one, the decoding)."""
    spec = world.spec
    entity, attribute = formats.fact_index(spec)
    prompts = formats.prompt_tokens(world, entity, attribute)
    vocab = formats.Vocab.of(spec)
    decoded = greedy_decode(
        graphdef, params, prompts, vocab, spec.key_length, spec.value_length, store
    )
    seqs, kept = answer_sequences(world, decoded)
    return seqs, kept, decoded


def mixture(parts: list[tuple[Sequences, float]], rows: int, width: int, seed: int) -> Sequences:
    """`rows` training rows, each part a share of them (shares sum to 1; a part of share 0 is
    left out): its rows in a seeded order, repeated evenly (or cut) to fill its share; padded
    to `width` tokens."""
    counts = [round(share * rows) for _, share in parts]
    counts[-1] = rows - sum(counts[:-1])
    drawn = []
    for i, ((seqs, _), count) in enumerate(zip(parts, counts, strict=True)):
        n = len(seqs.tokens)
        if count > 0:
            order = streams.generator(seed, streams.CONSOLIDATION_ORDER, i).permutation(n)
            drawn.append(general.rows_of(seqs, order[np.arange(count) % n]))
    return general.pad_to(general.concat(drawn), width)


def kept_share(now: float, base: float) -> float:
    """now / base: the share of what the base model had that is still there (nan when the
    base had nothing)."""
    return now / base if base > 0 else float("nan")


def bits_moved(bits_now: float, bits_base: float) -> float:
    """Bits about the new facts held in the weights now, less what the base model held."""
    return bits_now - bits_base
