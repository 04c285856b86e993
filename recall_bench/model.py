"""A GPT-style decoder in Flax NNX: learned absolute positions, pre-LayerNorm blocks, tied
input/output embeddings, and optionally a product-key memory in one block: in place of its MLP
("replace"), or beside it as a residual side branch whose value table starts at zero ("add":
the model computes exactly what it did without the memory until the memory is trained).
Small enough to read in one sitting."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from recall_bench.pkm import ProductKeyMemory

# dtype name -> (parameter dtype, compute dtype): pure float32, pure bfloat16 (parameters and
# AdamW state too), or bfloat16 compute over float32 master weights and state (Morris et al.)
DTYPES = {
    "float32": (jnp.float32, jnp.float32),
    "bfloat16": (jnp.bfloat16, jnp.bfloat16),
    "bfloat16-mixed": (jnp.float32, jnp.bfloat16),
}
MEMORY_MODES = ("replace", "add")
GRAD_TRANSPOSES = ("input", "narrower")  # ModelConfig.grad_transpose: see _matmul_bwd


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x: jax.Array, w: jax.Array, grad_transpose: str) -> jax.Array:
    return x @ w


def _matmul_fwd(x, w, grad_transpose):
    return x @ w, (x, w)


def _matmul_bwd(grad_transpose, res, dy):
    """The weight gradient from an explicitly transposed operand. XLA's own transpose rule
    gives a dot contracting the token axis of both operands, which XLA:CPU runs on a slow
    path (a loop emitter when vmapped over an ensemble, a strided transpose of the larger
    operand otherwise); the barrier keeps XLA from folding the transpose back in.
    grad_transpose "input" transposes the input x; "narrower" transposes the narrower of x
    and dy, a wider input getting (dy^T x)^T (same product, another summation order)."""
    x, w = res
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    dx = dy @ w.T.astype(dy.dtype)
    if grad_transpose == "narrower" and x2.shape[1] > dy2.shape[1]:
        return dx, (jax.lax.optimization_barrier(dy2.T) @ x2).T.astype(w.dtype)
    x2t = jax.lax.optimization_barrier(jnp.swapaxes(x2, 0, 1))
    return dx, (x2t @ dy2).astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def linear_dot_general(
    lhs, rhs, dimension_numbers, precision=None, *, grad_transpose="input", **kwargs
):
    """nnx.Linear's dot_general ([..., in] x [in, out]) through _matmul."""
    (lc, rc), (lb, rb) = dimension_numbers
    plain = tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,) and not lb and not rb
    if plain and not kwargs.get("preferred_element_type"):
        return _matmul(lhs, rhs, grad_transpose)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kwargs)


@functools.cache
def dot_general_for(grad_transpose: str) -> functools.partial:
    """linear_dot_general with a grad_transpose setting, one object per setting, so that
    models of equal configs keep equal graphdefs (and share a compiled training chunk)."""
    return functools.partial(linear_dot_general, grad_transpose=grad_transpose)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    max_len: int
    layers: int = 2
    width: int = 32
    heads: int = 4
    mlp_ratio: int = 4
    dtype: str = "float32"  # a DTYPES name: parameters / activations; logits, loss float32
    memory_layer: int | None = None  # block with a product-key memory
    memory_mode: str = "replace"  # the memory replaces that block's MLP, or is added to it
    memory_size: int = 0  # value rows, a perfect square (0 without a memory)
    memory_topk: int = 8  # rows read per head and token
    memory_heads: int = 4
    memory_key_dim: int = 32  # query size per head, split in two halves
    # weight gradient of each Linear from the transposed input ("input") or from the narrower
    # of input and output gradient ("narrower": faster on CPU for d <= 128, not bitwise equal)
    grad_transpose: str = "input"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "layers", "width", "heads", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"model {name} must be >= 1, got {getattr(self, name)}")
        if self.memory_layer is not None:
            self._check_memory()
        elif self.memory_size:
            raise ValueError(f"memory_size {self.memory_size} given without a memory_layer")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.grad_transpose not in GRAD_TRANSPOSES:
            raise ValueError(
                f"grad_transpose must be one of {GRAD_TRANSPOSES}, got {self.grad_transpose!r}"
            )

    def _check_memory(self) -> None:
        if not 0 <= self.memory_layer < self.layers:
            raise ValueError(f"memory_layer must be in [0, {self.layers}), got {self.memory_layer}")
        side = math.isqrt(self.memory_size)
        if self.memory_size < 1 or side * side != self.memory_size:
            raise ValueError(f"memory_size must be a perfect square >= 1, got {self.memory_size}")
        if not 1 <= self.memory_topk <= side:
            raise ValueError(
                f"memory_topk must be in [1, sqrt(memory_size) = {side}], got {self.memory_topk}"
            )
        if self.memory_mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {MEMORY_MODES}, got {self.memory_mode!r}")
        if self.memory_heads < 1:
            raise ValueError(f"memory_heads must be >= 1, got {self.memory_heads}")
        if self.memory_key_dim < 2 or self.memory_key_dim % 2:
            raise ValueError(f"memory_key_dim must be even and >= 2, got {self.memory_key_dim}")


class Block(nnx.Module):
    """Pre-LN transformer block: causal self-attention then a GELU MLP, both residual; with
    memory=True a product-key memory replaces the MLP or is added to its output."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, memory: bool = False):
        pt, dt = DTYPES[cfg.dtype]
        dot_general = dot_general_for(cfg.grad_transpose)
        kw = dict(use_bias=False, dtype=dt, param_dtype=pt, dot_general=dot_general, rngs=rngs)
        self.heads = cfg.heads
        self.ln_attn = nnx.LayerNorm(cfg.width, dtype=dt, param_dtype=pt, rngs=rngs)
        self.qkv = nnx.Linear(cfg.width, 3 * cfg.width, **kw)
        self.attn_out = nnx.Linear(cfg.width, cfg.width, **kw)
        self.ln_mlp = nnx.LayerNorm(cfg.width, dtype=dt, param_dtype=pt, rngs=rngs)
        self.use_memory = memory
        self.use_mlp = not memory or cfg.memory_mode == "add"
        if memory:
            self.memory = ProductKeyMemory(
                cfg.width,
                cfg.memory_size,
                cfg.memory_topk,
                cfg.memory_heads,
                cfg.memory_key_dim,
                pt,  # a side memory computes in its parameters' dtype
                rngs,
                zero_values=self.use_mlp,
            )
        if self.use_mlp:
            self.mlp_in = nnx.Linear(cfg.width, cfg.mlp_ratio * cfg.width, **kw)
            self.mlp_out = nnx.Linear(cfg.mlp_ratio * cfg.width, cfg.width, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.ln_attn(x)), 3, axis=-1)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads) for z in (q, k, v))
        attended = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return self._finish(x, attended.reshape(b, t, d))

    def decode_step(self, x: jax.Array, pos: jax.Array, cache: tuple) -> tuple[jax.Array, tuple]:
        """One token per row: x [B, D] at positions pos [B]; cache (k, v) [B, T, H, Dh]."""
        b, d = x.shape
        q, k, v = jnp.split(self.qkv(self.ln_attn(x)), 3, axis=-1)
        q, k, v = (z.reshape(b, self.heads, d // self.heads) for z in (q, k, v))
        rows = jnp.arange(b)
        k_cache, v_cache = cache[0].at[rows, pos].set(k), cache[1].at[rows, pos].set(v)
        scores = jnp.einsum("bhd,bthd->bht", q, k_cache).astype(jnp.float32)
        visible = jnp.arange(k_cache.shape[1])[None, None, :] <= pos[:, None, None]
        scores = jnp.where(visible, scores / jnp.sqrt(d // self.heads), -jnp.inf)
        weights = jax.nn.softmax(scores, axis=-1).astype(v_cache.dtype)
        attended = jnp.einsum("bht,bthd->bhd", weights, v_cache).reshape(b, d)
        return self._finish(x, attended), (k_cache, v_cache)

    def _finish(self, x: jax.Array, attended: jax.Array) -> jax.Array:
        x = x + self.attn_out(attended)
        h = self.ln_mlp(x)
        if not self.use_memory:
            return x + self._mlp(h)
        if not self.use_mlp:
            return x + self.memory(h)
        return x + (self._mlp(h) + self.memory(h))

    def _mlp(self, h: jax.Array) -> jax.Array:
        return self.mlp_out(jax.nn.gelu(self.mlp_in(h)))


class GPT(nnx.Module):
    """tokens [B, T] int -> logits [B, T, vocab] float32."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        pt, dt = DTYPES[cfg.dtype]
        self.compute_dtype = dt
        self.token_embed = nnx.Embed(cfg.vocab_size, cfg.width, dtype=dt, param_dtype=pt, rngs=rngs)
        self.pos_embed = nnx.Embed(cfg.max_len, cfg.width, dtype=dt, param_dtype=pt, rngs=rngs)
        self.blocks = nnx.List(
            [Block(cfg, rngs, memory=i == cfg.memory_layer) for i in range(cfg.layers)]
        )
        self.ln_final = nnx.LayerNorm(cfg.width, dtype=dt, param_dtype=pt, rngs=rngs)

    def __call__(self, tokens: jax.Array, columns: tuple[int, int] | None = None) -> jax.Array:
        """With columns (start, stop): the logits of those positions only."""
        x = self.token_embed(tokens) + self.pos_embed(jnp.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        if columns is not None:
            x = x[:, columns[0] : columns[1]]
        return self.token_embed.attend(self.ln_final(x)).astype(jnp.float32)

    def empty_cache(self, batch: int) -> list[tuple[jax.Array, jax.Array]]:
        """Zeroed key/value caches, one (k, v) pair per block, for decode_step."""
        block = self.blocks[0]
        t, d = self.pos_embed.num_embeddings, self.token_embed.features
        shape = (batch, t, block.heads, d // block.heads)
        dtype = self.compute_dtype
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.blocks]

    def decode_step(self, tokens: jax.Array, pos: jax.Array, cache: list) -> tuple[jax.Array, list]:
        """Logits [B, vocab] for the token after tokens [B] at positions pos [B], with the
        key/value cache of earlier positions; equals __call__ on the full prefix."""
        x = self.token_embed(tokens) + self.pos_embed(pos)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache, strict=True):
            x, layer_cache = block.decode_step(x, pos, layer_cache)
            new_cache.append(layer_cache)
        return self.token_embed.attend(self.ln_final(x)).astype(jnp.float32), new_cache


def init_model(cfg: ModelConfig, seed: int) -> tuple[nnx.GraphDef, nnx.State]:
    """Build a model and split it into its static graph and its parameter state."""
    return nnx.split(GPT(cfg, nnx.Rngs(seed)))


def add_side_memory(cfg: ModelConfig, params: nnx.State, seed: int) -> nnx.State:
    """The parameters of a model of cfg (memory_mode "add") that carries `params`, those of
    the same model without a memory, and a fresh memory: it computes what `params` did."""
    if cfg.memory_layer is None or cfg.memory_mode != "add":
        raise ValueError("add_side_memory needs a config with memory_layer and memory_mode 'add'")
    graphdef, fresh = init_model(cfg, seed)
    model = nnx.merge(graphdef, fresh)
    nnx.update(model, params)
    return nnx.split(model)[1]


def apply(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tokens: jax.Array,
    columns: tuple[int, int] | None = None,
) -> jax.Array:
    """Functional forward pass: logits of `tokens` under `params` (of positions
    columns[0]:columns[1] only, if given)."""
    return nnx.merge(graphdef, params)(tokens, columns)


def count_params(params: nnx.State, cfg: ModelConfig | None = None) -> dict[str, int]:
    """Total parameters and non-embedding parameters (total minus token and position tables).

    With a product-key memory (cfg required) also: memory = its value table and sub-keys
    (the query projection and its norm count as dense), dense = total - memory, and
    active_per_token = dense + sub-keys (all scored for every token) + the value entries
    read per token, memory_heads x memory_topk x width (a row read by two heads counts twice).
    """

    def size(tree) -> int:
        return sum(int(leaf.size) for leaf in jax.tree.leaves(tree))

    total = size(params)
    counts = {
        "total": total,
        "non_embedding": total - size(params["token_embed"]) - size(params["pos_embed"]),
    }
    if not any("memory" in block for block in params["blocks"].values()):
        return counts
    if cfg is None or cfg.memory_layer is None:
        raise ValueError("count_params needs the model's ModelConfig to count its memory")
    memory = params["blocks"][cfg.memory_layer]["memory"]
    keys, table = size(memory["sub_keys"]), size(memory["value_table"])
    dense = total - keys - table
    read = cfg.memory_heads * cfg.memory_topk * cfg.width
    return {
        **counts,
        "memory": keys + table,
        "dense": dense,
        "active_per_token": dense + keys + read,
    }
