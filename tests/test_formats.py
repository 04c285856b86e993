import numpy as np

from recall_bench import formats
from recall_bench.formats import CALL, CALL_END, EOS, RESULT, RESULT_END
from recall_bench.worlds import FactSpec, make_fact_world


def test_vocab_does_not_depend_on_fact_count():
    sizes = {formats.Vocab.of(FactSpec(n_entities=n)).size for n in (1, 100, 100_000)}
    assert sizes == {formats.N_SPECIAL + 1 + 64 + 64}


def test_in_weight_loss_only_on_the_answer():
    world = make_fact_world(FactSpec(n_entities=20, attribute_sizes=(4096, 10)))
    seqs = formats.render_in_weight(world)
    vocab = formats.Vocab.of(world.spec)
    assert seqs.tokens.shape == (40, 1 + 4 + 1 + 2 + 1)
    assert (seqs.loss_mask[:, :6] == 0).all() and (seqs.loss_mask[:, 6:] == 1).all()
    assert (seqs.value_mask.sum(axis=1) == 2).all()
    assert (seqs.tokens[:, -1] == EOS).all()
    # fact 3 = entity 1, attribute 1; its value tokens decode to the world's value
    digits = seqs.tokens[3, 6:8] - vocab.value_offset
    assert digits[0] * 64 + digits[1] == world.values[1, 1]
    assert seqs.tokens[3, 5] == vocab.attr_offset + 1


def test_in_tool_no_loss_on_the_tool_result():
    world = make_fact_world(FactSpec(n_entities=5))
    seqs = formats.render_in_tool(world)
    row, mask = seqs.tokens[0], seqs.loss_mask[0]
    assert len(row) == formats.max_length(world.spec)
    call, result = np.flatnonzero(row == CALL)[0], np.flatnonzero(row == RESULT)[0]
    end = np.flatnonzero(row == RESULT_END)[0]
    assert (
        row[np.flatnonzero(row == CALL_END)[0] - 5 : np.flatnonzero(row == CALL_END)[0]].tolist()
        == row[1:6].tolist()
    )
    assert mask[:call].sum() == 0
    assert mask[call:result].all()  # the call, CALL..CALL_END
    assert mask[result : end + 1].sum() == 0  # RESULT value RESULT_END: the store's tokens
    assert mask[end + 1 :].all()  # the final answer and EOS
    np.testing.assert_array_equal(row[result + 1 : end], row[end + 1 : end + 3])
    assert seqs.value_mask[0, end + 1 : end + 3].all() and seqs.value_mask[0].sum() == 2
