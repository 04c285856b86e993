"""Side memory: the in-weight format, answered by a model with a product-key memory layer in
place of one block's MLP (pkm.py; its shape is the run config's memory_* fields, and its
value table learns memory_lr_scale times faster)."""

from recall_bench import formats
from recall_bench.methods.base import Method

METHOD = Method(
    name="side-memory", track="side-memory", render=formats.render_in_weight, side_memory=True
)
