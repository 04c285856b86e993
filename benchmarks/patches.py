"""Alternative JAX formulations of the model's matmuls, applied in a benchmark worker before it
compiles (bench_train.py --variant 'name;patch=NAME'), to time them beside the package. The
package's own opt-in formulation is a model setting, not a patch: 'grad_transpose=narrower'
(ModelConfig.grad_transpose)."""

from __future__ import annotations

import jax

from recall_bench import model


@jax.custom_vjp
def _matmul_barrier_t(x, w):
    return x @ w


def _fwd(x, w):
    return x @ w, (x, w)


def _bwd_barrier_t(res, dy):
    """model._matmul_bwd with a second barrier before the transpose, so that XLA transposes
    the stored input alone instead of fusing it with the ops that produced it (same values,
    same product)."""
    x, w = res
    x2 = jax.lax.optimization_barrier(x.reshape(-1, x.shape[-1]))
    x2t = jax.lax.optimization_barrier(x2.T)
    return dy @ w.T.astype(dy.dtype), (x2t @ dy.reshape(-1, dy.shape[-1])).astype(w.dtype)


_matmul_barrier_t.defvjp(_fwd, _bwd_barrier_t)


def flat(matmul):
    """matmul with the tokens flattened to one axis before the product (and back after);
    with the package's _matmul it keeps the model's grad_transpose setting."""
    return lambda x, w, grad_transpose: matmul(
        x.reshape(-1, x.shape[-1]), w, grad_transpose
    ).reshape(*x.shape[:-1], -1)


PATCHES = {  # each takes model._matmul's arguments (x, w, grad_transpose)
    "xla_t": lambda x, w, _: x @ w,  # XLA's own transpose rule for the weight gradient
    "flat": flat(model._matmul),
    "barrier_t": lambda x, w, _: _matmul_barrier_t(x, w),
}


def apply(name: str) -> None:
    """Route the model's Linear layers through PATCHES[name] in this process."""
    if name not in PATCHES:
        raise ValueError(f"unknown patch {name!r}: one of {sorted(PATCHES)}")
    model._matmul = PATCHES[name]
