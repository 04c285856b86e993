"""Memory methods, registered by name (the --mode of a run and the `mode` of a record).

Each module defines one `METHOD` (methods/base.py says what a method is); adding a method is
its module, one line here and its tests (docs/adding-a-method.md walks through one).
"""

from recall_bench.methods import in_tool, in_weight, retrieval_context, side_memory
from recall_bench.methods.base import Answers, Method

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        in_weight.METHOD,
        in_tool.METHOD,
        side_memory.METHOD,
        retrieval_context.METHOD,
    )
}
MODES = tuple(METHODS)


def get(name: str) -> Method:
    """The method registered as `name`; a ValueError listing the known ones otherwise."""
    if name not in METHODS:
        raise ValueError(f"mode must be one of {MODES}, got {name!r}")
    return METHODS[name]


__all__ = ["METHODS", "MODES", "Answers", "Method", "get"]
