"""Multi-query attention, local (sliding window) or global, with RoPE.

Training and prefill use a blocked kernel whose memory is O(T x window):
queries are cut into blocks of `C >= window` tokens and each block attends to
itself and the block before it, so no T x T matrix is ever built. Decoding
appends to a ring-buffer cache of the last `window` keys and values.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from pallas_kernels import gpu_local_attention
from recurrentgemma_jax.config import ATTENTION_IMPLS
from recurrentgemma_jax.nn.linear import Dense

MAX_WAVELENGTH = 10_000
# Finite "minus infinity": keeps fully masked padding rows free of NaNs.
MASK_VALUE = -2.3819763e38


class AttentionCache(NamedTuple):
  """Ring buffer of the last `S` keys and values of one attention block.

  Attributes:
    keys: `[B, S, H]` rotated keys.
    values: `[B, S, H]` values.
    positions: `[B, S]` int32 absolute index of the token in each slot (-1 when
      empty); slot = position % S.
    doc_ids: `[B, S]` int32 document counter of each slot's token.
  """

  keys: jax.Array
  values: jax.Array
  positions: jax.Array
  doc_ids: jax.Array


def apply_rope(x: jax.Array, positions: jax.Array) -> jax.Array:
  """Rotary embedding on the first half of the head dimension.

  Args:
    x: `[B, T, N, H]` queries or keys.
    positions: `[B, T]` positions (restarting at 0 for each document).

  Returns:
    `[B, T, N, H]`: the first H/2 features rotated (split-halves style), the
    rest unchanged.
  """
  rope_dim = x.shape[-1] // 2
  x_rope, x_pass = x[..., :rope_dim], x[..., rope_dim:]
  freq_exponents = 2 * jnp.arange(rope_dim // 2) / rope_dim
  inv_frequencies = 1.0 / (MAX_WAVELENGTH**freq_exponents)
  angles = positions[..., None, None] * inv_frequencies
  sin = jnp.sin(angles).astype(x.dtype)
  cos = jnp.cos(angles).astype(x.dtype)
  first, second = jnp.split(x_rope, 2, axis=-1)
  return jnp.concatenate(
      [first * cos - second * sin, second * cos + first * sin, x_pass], axis=-1
  )


def _attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
) -> jax.Array:
  """Softmax attention in float32.

  Args:
    q: `[..., Tq, N, H]` queries, already scaled.
    k, v: `[..., Tk, H]` single-head keys and values.
    mask: `[..., Tq, Tk]` bool, True where attention is allowed.

  Returns:
    `[..., Tq, N, H]`.
  """
  logits = jnp.einsum("...qnh,...kh->...nqk", q, k)
  logits = jnp.where(mask[..., None, :, :], logits, MASK_VALUE)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum("...nqk,...kh->...qnh", probs, v)


def _visible(q_pos, q_doc, k_pos, k_doc, window: int | None) -> jax.Array:
  """`[..., Tq, Tk]` mask: same document, causal, within the window."""
  delta = q_pos[..., :, None] - k_pos[..., None, :]
  mask = (delta >= 0) & (q_doc[..., :, None] == k_doc[..., None, :])
  mask &= k_pos[..., None, :] >= 0
  if window is not None:
    mask &= delta <= window
  return mask


def blocked_local_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    doc_ids: jax.Array,
    window: int | None,
    block_size: int | None = None,
) -> jax.Array:
  """Causal MQA where query `i` sees keys `j` with `0 <= i - j <= window`.

  Args:
    q: `[B, T, N, H]` scaled queries.
    k, v: `[B, T, H]`.
    doc_ids: `[B, T]` document id of each token (attention stays inside one).
    window: attention window; None for global attention.
    block_size: query block; defaults to `window` (must be >= window).

  Returns:
    `[B, T, N, H]`. Memory is O(T * 2 * block_size) instead of O(T^2).
  """
  b, t = doc_ids.shape
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  if window is None or window >= t - 1:
    return _attend(q, k, v, _visible(pos, doc_ids, pos, doc_ids, window))
  c = block_size or window
  if c < window:
    raise ValueError(f"block_size {c} must be >= window {window}")
  n = math.ceil(t / c)
  pad = n * c - t

  def blocks(x, fill):
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2),
                constant_values=fill)
    return x.reshape(b, n, c, *x.shape[2:])

  def with_previous(x, fill):
    # [B, n, C, ...] -> [B, n, 2C, ...]: block i-1 (fill before the first)
    # followed by block i.
    prev = jnp.pad(x, [(0, 0), (1, 0)] + [(0, 0)] * (x.ndim - 2),
                   constant_values=fill)[:, :-1]
    return jnp.concatenate([prev, x], axis=2)

  q_b = blocks(q, 0)
  pos_b, doc_b = blocks(pos, -1), blocks(doc_ids, -1)
  k_b = with_previous(blocks(k, 0), 0)
  v_b = with_previous(blocks(v, 0), 0)
  k_pos = with_previous(pos_b, -1)
  k_doc = with_previous(doc_b, -1)
  mask = _visible(pos_b, doc_b, k_pos, k_doc, window)
  out = _attend(q_b, k_b, v_b, mask)
  return out.reshape(b, n * c, *out.shape[3:])[:, :t]


def resolve_attention_impl(backend: str, device_count: int,
                           head_dim: int) -> str:
  """The implementation `attention_impl="auto"` runs.

  The flash kernel on a single GPU, for the head sizes it takes (powers of
  2 from 16): it made the 8 x 2048 train step of benchmarks/train_step.py
  1.25x faster on an H200 (64.4 -> 51.7 ms, docs/benchmarks.md). With more
  devices XLA would gather the kernel's operands onto each one, so "xla"
  (the blocked einsum) stays the choice there, for other head sizes, and on
  TPU and CPU.
  """
  if (backend == "gpu" and device_count == 1
      and gpu_local_attention.head_dim_supported(head_dim)):
    return "pallas_gpu"
  return "xla"


def local_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    doc_ids: jax.Array,
    window: int | None,
    impl: str = "auto",
) -> jax.Array:
  """`blocked_local_attention`'s math by implementation `impl`.

  "xla" runs `blocked_local_attention`; "pallas_gpu" the flash kernel of
  `pallas_kernels.gpu_local_attention` (interpret mode off the GPU, for
  tests; on one device: under a multi-device mesh XLA gathers its
  operands); "auto" picks by `resolve_attention_impl`.
  """
  if impl == "auto":
    impl = resolve_attention_impl(jax.default_backend(), jax.device_count(),
                                  q.shape[-1])
  if impl == "xla":
    return blocked_local_attention(q, k, v, doc_ids, window)
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got "
                     f"{impl!r}")
  backend = jax.default_backend()
  if backend == "tpu":
    raise ValueError("attention_impl='pallas_gpu' is a GPU kernel; use "
                     "'auto' or 'xla' on TPU")
  return gpu_local_attention.local_attention(
      q, k, v, doc_ids, window, interpret=backend != "gpu")


class LocalAttentionBlock(nnx.Module):
  """Multi-query attention: N query heads, one key/value head.

  q, k, v projections without bias, output projection with bias; RoPE on the
  first half of each head at the tokens' `segment_pos`.
  """

  def __init__(
      self,
      width: int,
      num_heads: int,
      window_size: int | None,
      *,
      final_scale: float = 1.0,
      impl: str = "auto",
      dtype: jnp.dtype = jnp.float32,
      param_dtype: jnp.dtype = jnp.float32,
      rngs: nnx.Rngs,
  ):
    self.num_heads = num_heads
    self.head_dim = width // num_heads
    self.window_size = window_size
    self.impl = impl
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.proj_q = Dense(width, width, axes=("embed", "q_heads"),
                        use_bias=False, **kw)
    self.proj_k = Dense(width, self.head_dim, axes=("embed", "kv"),
                        use_bias=False, **kw)
    self.proj_v = Dense(width, self.head_dim, axes=("embed", "kv"),
                        use_bias=False, **kw)
    self.proj_final = Dense(width, width, axes=("q_heads", "embed"),
                            scale=final_scale, **kw)

  def init_cache(
      self, batch_size: int, dtype: jnp.dtype, length: int | None = None
  ) -> AttentionCache:
    """An empty cache of `window` slots (or `length` for global attention)."""
    size = self.window_size or length
    if size is None:
      raise ValueError("global attention needs the cache length")
    return AttentionCache(
        keys=jnp.zeros((batch_size, size, self.head_dim), dtype),
        values=jnp.zeros((batch_size, size, self.head_dim), dtype),
        positions=jnp.full((batch_size, size), -1, jnp.int32),
        doc_ids=jnp.full((batch_size, size), -1, jnp.int32),
    )

  def __call__(
      self,
      x: jax.Array,
      segment_pos: jax.Array,
      positions: jax.Array,
      doc_ids: jax.Array,
      cache: AttentionCache | None = None,
      return_cache: bool = False,
  ) -> tuple[jax.Array, AttentionCache | None]:
    """Attends over `x [B, T, D]`.

    Args:
      x: `[B, T, D]` normalised activations.
      segment_pos: `[B, T]` position within the document (RoPE).
      positions: `[B, T]` absolute index of each token in its row.
      doc_ids: `[B, T]` document counter of each token.
      cache: keys and values of earlier tokens (decoding / chunked prefill).
      return_cache: also return the cache after this chunk.

    Returns:
      `([B, T, D], cache or None)`.
    """
    b, t, _ = x.shape
    q = self.proj_q(x).reshape(b, t, self.num_heads, self.head_dim)
    k = self.proj_k(x)[:, :, None]
    v = self.proj_v(x)
    q = apply_rope(q, segment_pos) * (self.head_dim**-0.5)
    k = apply_rope(k, segment_pos)[:, :, 0]
    if cache is None:
      out = local_attention(q, k, v, doc_ids, self.window_size, self.impl)
    else:
      out = _attend_with_cache(q, k, v, positions, doc_ids, cache,
                               self.window_size)
      if return_cache:
        # Every read of the old cache happens before the ring-buffer write,
        # so XLA updates the cache in place instead of copying it each step.
        out, cache = jax.lax.optimization_barrier((out, cache))
    out = self.proj_final(out.reshape(b, t, -1))
    if not return_cache:
      return out, None
    if cache is None:
      cache = self.init_cache(b, k.dtype, length=t)
    return out, _write_cache(cache, k, v, positions, doc_ids)


def _attend_with_cache(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    positions: jax.Array,
    doc_ids: jax.Array,
    cache: AttentionCache,
    window: int | None,
) -> jax.Array:
  """Attention of a chunk over the cached keys and its own keys.

  Same result as attending over `concat(cache, chunk)`, without building
  that concatenation (a copy of the whole cache per decode step): the two
  parts' logits share one softmax and their values are summed.

  Args:
    q: `[B, T, N, H]` scaled queries; k, v: `[B, T, H]` the chunk's keys
      and values; positions, doc_ids: `[B, T]`.
    cache: the keys and values before the chunk.
    window: attention window (None: global).

  Returns:
    `[B, T, N, H]`.
  """
  size = cache.keys.shape[1]
  mask_cache = _visible(positions, doc_ids, cache.positions, cache.doc_ids,
                        window)
  mask_chunk = _visible(positions, doc_ids, positions, doc_ids, window)
  logits_cache = jnp.einsum("btnh,bsh->bnts", q, cache.keys.astype(q.dtype))
  logits_chunk = jnp.einsum("btnh,bsh->bnts", q, k)
  logits = jnp.concatenate([
      jnp.where(mask_cache[:, None], logits_cache, MASK_VALUE),
      jnp.where(mask_chunk[:, None], logits_chunk, MASK_VALUE),
  ], axis=-1)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  out = jnp.einsum("bnts,bsh->btnh", probs[..., :size],
                   cache.values.astype(v.dtype)).astype(jnp.float32)
  out += jnp.einsum("bnts,bsh->btnh", probs[..., size:], v)
  return out.astype(v.dtype)


def _write_cache(
    cache: AttentionCache,
    k: jax.Array,
    v: jax.Array,
    positions: jax.Array,
    doc_ids: jax.Array,
) -> AttentionCache:
  """Writes the chunk's last `min(T, S)` tokens into their ring slots."""
  size = cache.keys.shape[1]
  keep = min(k.shape[1], size)
  k, v = k[:, -keep:], v[:, -keep:]
  positions, doc_ids = positions[:, -keep:], doc_ids[:, -keep:]
  slots = positions % size
  rows = jnp.arange(k.shape[0])[:, None]
  return AttentionCache(
      keys=cache.keys.at[rows, slots].set(k.astype(cache.keys.dtype)),
      values=cache.values.at[rows, slots].set(v.astype(cache.values.dtype)),
      positions=cache.positions.at[rows, slots].set(positions),
      doc_ids=cache.doc_ids.at[rows, slots].set(doc_ids),
  )
