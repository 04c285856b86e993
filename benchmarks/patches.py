"""Alternative JAX formulations of the model's matmuls, applied in a benchmark worker before it
compiles (bench_train.py --variant 'name;patch=NAME'), to time them beside the package."""

from __future__ import annotations

import jax

from recall_bench import model


@jax.custom_vjp
def _matmul_small_t(x, w):
    return x @ w


def _fwd(x, w):
    return x @ w, (x, w)


def _bwd_small_t(res, dy):
    """As model._matmul_bwd, but the explicit transpose is of the narrower of the input and
    the output gradient (tokens x min(in, out)); a wider input gets (dy^T x)^T."""
    x, w = res
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    dx = dy @ w.T.astype(dy.dtype)
    if x2.shape[1] <= dy2.shape[1]:
        return dx, (jax.lax.optimization_barrier(x2.T) @ dy2).astype(w.dtype)
    return dx, (jax.lax.optimization_barrier(dy2.T) @ x2).T.astype(w.dtype)


_matmul_small_t.defvjp(_fwd, _bwd_small_t)


@jax.custom_vjp
def _matmul_barrier_t(x, w):
    return x @ w


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
    """matmul with the tokens flattened to one axis before the product (and back after)."""
    return lambda x, w: matmul(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], -1)


PATCHES = {
    "xla_t": lambda x, w: x @ w,  # XLA's own transpose rule for the weight gradient
    "small_t": _matmul_small_t,
    "flat": flat(model._matmul),
    "flat_small_t": flat(_matmul_small_t),
    "barrier_t": _matmul_barrier_t,
}


def apply(name: str) -> None:
    """Route the model's Linear layers through PATCHES[name] in this process."""
    if name not in PATCHES:
        raise ValueError(f"unknown patch {name!r}: one of {sorted(PATCHES)}")
    model._matmul = PATCHES[name]
