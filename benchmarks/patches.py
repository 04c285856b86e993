"""Candidate speed-ups to recall_bench/train.py and model.py, as local copies, so that
bench_train.py can time them beside the package's own code (`--variant 'name;patch=NAME'`).
Each entry of PATCHES has make_train_chunk's signature and contract: (graphdef, optimizer,
cfg) -> compiled-able (params, opt_state, rng, tokens, loss_mask, active) -> same + losses,
over a leading model axis. Nothing here is imported by the package.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from recall_bench import model as model_module
from recall_bench import train


def _one_step(graphdef, optimizer, cfg, params, opt_state, rng, tokens, loss_mask, active):
    """train.make_train_chunk's step body, for one model."""
    rng, sample = jax.random.split(rng)
    idx = jax.random.randint(sample, (cfg.batch_size,), 0, tokens.shape[0])
    loss, grads = jax.value_and_grad(train.masked_loss, argnums=1)(
        graphdef, params, tokens[idx], loss_mask[idx]
    )
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(active, new, old))
    return keep(new_params, params), keep(new_opt_state, opt_state), rng, loss


def unrolled_chunk(graphdef, optimizer, cfg) -> Callable:
    """The model axis unrolled in Python inside one scan body instead of jax.vmap: every
    model's matmuls stay unbatched 2-d dots (which XLA:CPU hands to its fast GEMM path;
    vmap's batched weight-gradient dots fall back to a slow loop emitter), and the K
    independent subgraphs can run concurrently on the CPU's threads."""

    def chunk(params, opt_state, rng, tokens, loss_mask, active):
        k = rng.shape[0]

        def body(carry, _):
            params, opt_state, rng = carry
            outs = [
                _one_step(
                    graphdef,
                    optimizer,
                    cfg,
                    train.take(params, m),
                    train.take(opt_state, m),
                    rng[m],
                    tokens[m],
                    loss_mask[m],
                    active[m],
                )
                for m in range(k)
            ]
            new = [train.stack([o[i] for o in outs]) for i in range(3)]
            return tuple(new), jnp.stack([o[3] for o in outs])

        (params, opt_state, rng), losses = jax.lax.scan(
            body, (params, opt_state, rng), None, length=cfg.steps_per_call
        )
        return params, opt_state, rng, losses.T

    return jax.jit(chunk, donate_argnums=(0, 1, 2))


def mapped_chunk(graphdef, optimizer, cfg, batch_size: int | None = None) -> Callable:
    """The model axis as jax.lax.map (a loop inside the compiled call) instead of jax.vmap:
    models train one after another (batch_size at a time), each with unbatched operands
    that stay in cache, while the ensemble still costs one compile and one dispatch."""

    def one_model(args):
        params, opt_state, rng, tokens, loss_mask, active = args

        def body(carry, _):
            *state, loss = _one_step(graphdef, optimizer, cfg, *carry, tokens, loss_mask, active)
            return tuple(state), loss

        (params, opt_state, rng), losses = jax.lax.scan(
            body, (params, opt_state, rng), None, length=cfg.steps_per_call
        )
        return params, opt_state, rng, losses

    def chunk(params, opt_state, rng, tokens, loss_mask, active):
        args = (params, opt_state, rng, tokens, loss_mask, active)
        return jax.lax.map(one_model, args, batch_size=batch_size)

    return jax.jit(chunk, donate_argnums=(0, 1, 2))


def _block_call_elementwise(self, x: jax.Array) -> jax.Array:
    """Block.__call__ with attention scores and mixing as broadcast-multiply-reduce (no
    dots): for T = 8 positions and 8-wide heads, batched [8 x 8] dots are mostly overhead."""
    b, t, d = x.shape
    h = self.heads
    q, k, v = jnp.split(self.qkv(self.ln_attn(x)), 3, axis=-1)
    q, k, v = (z.reshape(b, t, h, d // h) for z in (q, k, v))
    scores = jnp.sum(q[:, :, None] * k[:, None, :], axis=-1) / jnp.sqrt(d // h)  # b q k h
    causal = jnp.tril(jnp.ones((t, t), bool))[None, :, :, None]
    weights = jax.nn.softmax(jnp.where(causal, scores, -1e30), axis=2)
    attended = jnp.sum(weights[..., None] * v[:, None], axis=2)  # b q h dh
    return self._finish(x, attended.reshape(b, t, d))


def elementwise_attention_chunk(graphdef, optimizer, cfg) -> Callable:
    model_module.Block.__call__ = _block_call_elementwise  # this worker process only
    return train.make_train_chunk(graphdef, optimizer, cfg)


def elementwise_attention_unrolled_chunk(graphdef, optimizer, cfg) -> Callable:
    model_module.Block.__call__ = _block_call_elementwise
    return unrolled_chunk(graphdef, optimizer, cfg)


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ w


def _matmul_fwd(x, w):
    return x @ w, (x, w)


def _matmul_bwd(res, dy):
    """dW from an explicitly transposed input: under vmap, XLA:CPU's fast GEMM path does
    not take a batched dot contracting the token axis of both operands, and falls back to a
    slow loop emitter; the barrier keeps the transpose from being folded back into it."""
    x, w = res
    x2 = x.reshape(-1, x.shape[-1])
    xt = jax.lax.optimization_barrier(jnp.swapaxes(x2, 0, 1))
    dw = xt @ dy.reshape(-1, dy.shape[-1])
    return dy @ w.T, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _linear_call(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
    kernel = self.kernel[...]
    inputs, kernel, _ = self.promote_dtype((inputs, kernel, None), dtype=self.dtype)
    y = _matmul(inputs, kernel)
    if self.bias is not None:
        y = y + self.bias[...]
    return y


def transposed_weight_grad_chunk(graphdef, optimizer, cfg) -> Callable:
    from flax import nnx

    nnx.Linear.__call__ = _linear_call  # this worker process only
    return train.make_train_chunk(graphdef, optimizer, cfg)


def _loss_on_columns(cols: slice) -> Callable:
    """train.masked_loss computing logits only at the target columns that carry loss (for
    the in-weight fact task: the 2 value tokens and EOS, 3 of 8 positions), not at every
    position: the V x d projection and the softmax shrink to 3/8."""
    from flax import nnx

    def masked_loss(graphdef, params, tokens, loss_mask):
        model = nnx.merge(graphdef, params)
        inputs = tokens[:, :-1]
        x = model.token_embed(inputs) + model.pos_embed(jnp.arange(inputs.shape[1]))
        for block in model.blocks:
            x = block(x)
        logits = model.token_embed.attend(model.ln_final(x[:, cols])).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:][:, cols])
        mask = loss_mask[:, 1:][:, cols]
        return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    return masked_loss


def answer_columns_chunk(graphdef, optimizer, cfg) -> Callable:
    # in-weight facts: BOS, 4 key tokens, attribute | value, value, EOS -> targets 5..7
    train.masked_loss = _loss_on_columns(slice(5, 8))  # this worker process only
    return train.make_train_chunk(graphdef, optimizer, cfg)


def answer_columns_tdot_chunk(graphdef, optimizer, cfg) -> Callable:
    train.masked_loss = _loss_on_columns(slice(5, 8))
    return transposed_weight_grad_chunk(graphdef, optimizer, cfg)


PATCHES: dict[str, Callable] = {
    "cols": answer_columns_chunk,
    "cols_tdot": answer_columns_tdot_chunk,
    "tdot": transposed_weight_grad_chunk,
    "map": mapped_chunk,
    "map2": functools.partial(mapped_chunk, batch_size=2),
    "unroll": unrolled_chunk,
    "ew_attn": elementwise_attention_chunk,
    "ew_attn_unroll": elementwise_attention_unrolled_chunk,
}
