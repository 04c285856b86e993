"""Weight editors for the GPT of model.py: a rank-one edit of one MLP output projection
(ROME-style), applied to facts one after another, and a batched least-squares edit spread
over several layers (MEMIT-style). Written from the papers' ideas for this model.

A fact's *keys* are the MLP hidden activations gelu(mlp_in(ln(x))) of a block at the
positions that predict its value tokens: the prompt's last position and, for a value of v
tokens, the next v - 1 positions, read with the new value teacher-forced (what greedy
decoding feeds back once the first tokens come out right). Its *values* are that block's MLP
outputs there. The targets are changes δ [v, width] of the block's output at those positions,
solved together by a few Adam steps on the whole new answer's NLL (plus a small L2 penalty on
δ). The output projection W [hidden, width] then changes so that K W' = K W + δ for the
fact's keys K [v, hidden] while the keys of other prompts, of second moment C = E[k kᵀ] (over
the same positions of every fact, old values), move as little as possible:

    ROME   W' = W + C⁻¹Kᵀ (K C⁻¹ Kᵀ)⁻¹ δ       one fact at a time (rank v; for v = 1,
                                                C⁻¹k δᵀ / (kᵀ C⁻¹ k))
    MEMIT  ΔW_l = (λ C_l + Kᵀ K)⁻¹ Kᵀ R_l       a batch (a row per fact and value position),
           R_l = (target residual - current residual) / (layers left), at the top layer
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx


@dataclasses.dataclass(frozen=True)
class WeightEditConfig:
    """How the rank-one and least-squares edits solve for their targets."""

    rome_layer: int | None = None  # block whose MLP output projection ROME edits (None: last)
    memit_layers: tuple[int, ...] | None = None  # blocks MEMIT spreads over (None: all)
    value_steps: int = 25  # Adam steps solving each fact's target δ
    value_lr: float = 0.5  # their learning rate
    value_decay: float = 1e-2  # L2 penalty on δ, keeping the target close to the old output
    ridge: float = 1e-3  # added to C's diagonal, relative to its mean diagonal
    memit_weight: float = 30.0  # λ: how many "other prompts" C counts for against the batch

    def __post_init__(self) -> None:
        layers = self.memit_layers
        if layers is not None and (list(layers) != sorted(set(layers)) or not layers):
            raise ValueError(f"memit_layers must be distinct and ascending, got {layers}")
        if self.value_steps < 1 or not self.value_lr > 0 or self.value_decay < 0:
            raise ValueError("value_steps must be >= 1, value_lr > 0 and value_decay >= 0")
        if not self.ridge > 0 or not self.memit_weight > 0:
            raise ValueError("ridge and memit_weight must be > 0")


def edit_layers(graphdef, params, cfg: WeightEditConfig) -> tuple[int, tuple[int, ...]]:
    """(ROME's block, MEMIT's blocks): cfg's, or the last block and every block."""
    n = len(nnx.merge(graphdef, params).blocks)
    rome = n - 1 if cfg.rome_layer is None else cfg.rome_layer
    return rome, tuple(range(n)) if cfg.memit_layers is None else tuple(cfg.memit_layers)


def check_editable(graphdef, params, cfg: WeightEditConfig) -> None:
    """A ValueError unless every edited block has a plain MLP (no side memory)."""
    model = nnx.merge(graphdef, params)
    n = len(model.blocks)
    rome, memit = edit_layers(graphdef, params, cfg)
    for layer in (rome, *memit):
        if not 0 <= layer < n:
            raise ValueError(f"edit layer {layer} is not a block of this {n}-layer model")
        if model.blocks[layer].use_memory:
            raise ValueError(f"block {layer} holds a side memory: edit a model without one")


def kernel(params, layer: int) -> jax.Array:
    """The MLP output projection [hidden, width] of block `layer`."""
    return params["blocks"][layer]["mlp_out"]["kernel"][...]


def with_kernels(graphdef, params, kernels: dict[int, jax.Array]):
    """The model of `params` with the MLP output projections of `kernels` replaced."""
    return nnx.merge(graphdef, replace_kernels(params, kernels))


def replace_kernels(params, kernels: dict[int, jax.Array]):
    """A parameter state equal to `params` but for the given MLP output projections."""

    def pick(path, leaf):
        names = [getattr(p, "key", None) for p in path]
        if names[0] == "blocks" and names[2:4] == ["mlp_out", "kernel"] and names[1] in kernels:
            return kernels[names[1]]
        return leaf

    return jax.tree_util.tree_map_with_path(pick, params)


def _attend(block, x: jax.Array) -> jax.Array:
    """The block's causal self-attention with its residual, as Block.__call__ computes it."""
    b, t, d = x.shape
    q, k, v = jnp.split(block.qkv(block.ln_attn(x)), 3, axis=-1)
    q, k, v = (z.reshape(b, t, block.heads, d // block.heads) for z in (q, k, v))
    attended = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return x + block.attn_out(attended.reshape(b, t, d))


def value_positions(prompt_length: int, value_length: int) -> jax.Array:
    """[value_length] the positions whose next-token predictions are the value tokens."""
    return jnp.arange(prompt_length - 1, prompt_length + value_length - 1)


def traced(model, tokens: jax.Array, pos: jax.Array, layer: int, delta: jax.Array):
    """(logits [B, T, V], keys [layers, B, P, hidden], residuals [layers, B, P, width]) of
    tokens, with delta [B, P, width] added to block `layer`'s output at the positions pos [P];
    keys and residuals (the stream after each block) are read there."""
    x = model.token_embed(tokens) + model.pos_embed(jnp.arange(tokens.shape[1]))
    keys, residuals = [], []
    for i, block in enumerate(model.blocks):
        x = _attend(block, x)
        hidden = jax.nn.gelu(block.mlp_in(block.ln_mlp(x)))
        x = x + block.mlp_out(hidden)
        if i == layer:
            x = x.at[:, pos].add(delta)
        keys.append(hidden[:, pos])
        residuals.append(x[:, pos])
    logits = model.token_embed.attend(model.ln_final(x)).astype(jnp.float32)
    return logits, jnp.stack(keys), jnp.stack(residuals)


def answer_nll(model, tokens, prompt_length: int, value_length: int, layer: int, delta):
    """[B] NLL (nats) of the value tokens of sequences tokens [B, L] (prompt value EOS) with
    delta [B, value_length, width] added at block `layer`'s output at the value positions."""
    stop = prompt_length + value_length
    pos = value_positions(prompt_length, value_length)
    logits, _, _ = traced(model, tokens[:, : stop - 1], pos, layer, delta)
    logp = jax.nn.log_softmax(logits[:, prompt_length - 1 :], axis=-1)
    targets = tokens[:, prompt_length:stop]
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0].sum(axis=1)


def solve_delta(model, tokens, prompt_length, value_length, layer, cfg: WeightEditConfig):
    """[B, value_length, width] per sequence: the changes of block `layer`'s output at the
    value positions that make the model emit the sequence's whole value (Adam on its NLL +
    decay‖δ‖²)."""

    def loss(delta):
        nll = answer_nll(model, tokens, prompt_length, value_length, layer, delta)
        return nll.sum() + cfg.value_decay * jnp.sum(delta**2)

    opt = optax.adam(cfg.value_lr)
    shape = (tokens.shape[0], value_length, model.token_embed.features)
    delta = jnp.zeros(shape, jnp.float32)

    def step(carry, _):
        delta, state = carry
        updates, state = opt.update(jax.grad(loss)(delta), state)
        return (optax.apply_updates(delta, updates), state), None

    (delta, _), _ = jax.lax.scan(step, (delta, opt.init(delta)), None, length=cfg.value_steps)
    return delta


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def key_moments(
    graphdef, params, prompts: jax.Array, layers: tuple[int, ...], value_length: int = 1
) -> jax.Array:
    """[len(layers), hidden, hidden] second moments E[k kᵀ] of the keys at the last
    value_length positions of `prompts` [N, T] (prompts followed by their first
    value_length - 1 value tokens), over every row and position."""
    model = nnx.merge(graphdef, params)
    n, t = prompts.shape
    zero = jnp.zeros((n, value_length, model.token_embed.features), jnp.float32)
    _, keys, _ = traced(model, prompts, jnp.arange(t - value_length, t), -1, zero)
    keys = keys[jnp.asarray(layers)]
    return jnp.einsum("lnpi,lnpj->lij", keys, keys) / (n * value_length)


def ridged(moment: jax.Array, ridge: float) -> jax.Array:
    """C + ridge · mean(diag C) · I: invertible whatever the keys span."""
    scale = ridge * jnp.mean(jnp.diag(moment))
    return moment + scale * jnp.eye(moment.shape[0], dtype=moment.dtype)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
def rome_edits(graphdef, params, tokens, valid, prompt_length, value_length, cfg, layer, moment):
    """ROME applied to the facts of tokens [k, L] one after another (each sees the earlier
    edits; rows with valid False are skipped): the new MLP output projection [hidden, width]
    of block `layer`. A fact's update has rank value_length: one key and target per value
    position, solved together."""
    inverse = jnp.linalg.inv(ridged(moment, cfg.ridge))
    pos = value_positions(prompt_length, value_length)

    def one(w, row):
        seq, ok = row
        model = with_kernels(graphdef, params, {layer: w})
        delta = solve_delta(model, seq[None], prompt_length, value_length, layer, cfg)
        head = seq[None, : prompt_length + value_length - 1]
        _, keys, _ = traced(model, head, pos, -1, 0 * delta)
        key = keys[layer, 0]  # [value_length, hidden]
        u = inverse @ key.T  # [hidden, value_length]
        return w + ok * u @ jnp.linalg.solve(key @ u, delta[0]), None

    w, _ = jax.lax.scan(one, kernel(params, layer), (tokens, valid))
    return w


def _flat(a: jax.Array) -> jax.Array:
    """[B, P, features] -> [B * P, features]: one row per fact and value position."""
    return a.reshape(-1, a.shape[-1])


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
def memit_edit(graphdef, params, tokens, valid, prompt_length, value_length, cfg, layers, moments):
    """MEMIT on the facts of tokens [k, L] at once (rows with valid False count for nothing):
    targets solved at the top layer's output, then each layer (ascending) takes its share of
    the remaining residual by least squares, one row per fact and value position. Returns
    {layer: new output projection}."""
    top, pos = layers[-1], value_positions(prompt_length, value_length)
    prompts = tokens[:, : prompt_length + value_length - 1]
    model = nnx.merge(graphdef, params)
    delta = solve_delta(model, tokens, prompt_length, value_length, top, cfg)
    _, _, residuals = traced(model, prompts, pos, -1, 0 * delta)
    target = residuals[top] + delta
    rows = jnp.repeat(valid, value_length)[:, None]
    kernels = {layer: kernel(params, layer) for layer in layers}
    for i, layer in enumerate(layers):
        model = with_kernels(graphdef, params, kernels)
        _, keys, residuals = traced(model, prompts, pos, -1, 0 * delta)
        share = rows * _flat(target - residuals[top]) / (len(layers) - i)
        k = rows * _flat(keys[layer])
        a = cfg.memit_weight * ridged(moments[i], cfg.ridge) + k.T @ k
        kernels[layer] = kernels[layer] + jnp.linalg.solve(a, k.T @ share)
    return kernels
