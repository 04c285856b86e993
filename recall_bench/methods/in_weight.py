"""In-weight: the model answers `BOS key ATTR -> value EOS` from its weights; loss on the
answer only. Bits memorized are bits held in the weights."""

from recall_bench import formats
from recall_bench.methods.base import Method

METHOD = Method(name="in-weight", track="in-weight-capacity", render=formats.render_in_weight)
