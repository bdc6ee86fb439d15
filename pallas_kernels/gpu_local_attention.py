"""Local multi-query attention on GPU: a flash-attention kernel (Pallas
Triton) with the sliding window and the document mask inside.

Why: the XLA attention of `recurrentgemma_jax.nn.attention` materialises
`[B, N, Tq, Tk]` logits per query block, and in the training step on an
H200 its elementwise work (mask, softmax and their backward) took 11.5 of
62.5 ms, more than all the attention matmuls (docs/benchmarks.md,
"Where our step's time goes"). Here the logits live only in registers, one
`[block_q, block_k]` tile at a time, and only key blocks inside the window
are visited.

The math is the model's: query `i` sees key `j` iff `0 <= i - j <= window`
(window + 1 keys, the official model's convention; no limit when `window`
is None) and both tokens belong to the same document. Queries arrive
scaled. Logits, softmax and accumulators are float32; the two matmuls per
tile take the inputs' dtype (bfloat16 in training) with float32
accumulation.

Kernels (grid axes in brackets), all one program per (batch row, head,
block of `block_q` queries or `block_k` keys):

* forward [B, N, T / block_q]: online softmax over the key blocks from
  `q_start - window` to the diagonal; writes the output and each row's
  log-sum-exp.
* backward, keys [B, N, T / block_k]: for one key block, walks the query
  blocks that can see it and accumulates dK and dV of that head; the N
  heads' partial dK / dV (one shared key/value head) are summed in XLA.
* backward, queries [B, N, T / block_q]: dQ over the same key range as the
  forward.

Any T: rows are padded to a multiple of the blocks with documents no real
token has, so padded keys are never visible and padded queries see
nothing.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# Logit of an invisible key. Finite, so a row that has seen no visible key
# yet stays finite; its garbage is wiped (rescaled by exp(MASKED - m) = 0)
# at its first visible key, and every real query sees at least itself.
MASKED = -1e30
_PAD_KEY_DOC = jnp.iinfo(jnp.int32).min
_PAD_QUERY_DOC = jnp.iinfo(jnp.int32).min + 1


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """Tiles of the kernels (not yet tuned on a GPU).

  Attributes:
    block_q: queries per program (a power of 2, at least 16).
    block_k: keys per loop step (a power of 2, at least 16).
    num_warps: warps per program.
    num_stages: software-pipelining stages of the loops.
  """

  block_q: int = 64
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for name in ("block_q", "block_k"):
      value = getattr(self, name)
      if value < 16 or value & (value - 1):
        raise ValueError(f"{name} must be a power of 2 >= 16, got {value}")
    if self.num_warps < 1 or self.num_stages < 1:
      raise ValueError("num_warps and num_stages must be positive, got "
                       f"{self.num_warps}, {self.num_stages}")


def _dot(a, b, **transposes):
  """`plgpu.dot` with float32 accumulation; float32 operands stay float32
  (no TF32 rounding), so the float32 path keeps float32 accuracy."""
  return plgpu.dot(a, b, allow_tf32=a.dtype != jnp.float32,
                   **transposes).astype(jnp.float32)


def _visible(q_idx, k_idx, q_doc, k_doc, window):
  """`[block_q, block_k]` bool: same document, causal, inside the window."""
  delta = q_idx[:, None] - k_idx[None, :]
  mask = (delta >= 0) & (q_doc[:, None] == k_doc[None, :])
  if window is not None:
    mask &= delta <= window
  return mask


def _key_blocks(q_start, block_q, block_k, window):
  """`[lo, hi)` key blocks a query block `[q_start, q_start + block_q)` can
  see: from `q_start - window` to its last query (causal)."""
  lo = 0 if window is None else jnp.maximum(q_start - window, 0) // block_k
  return lo, pl.cdiv(q_start + block_q, block_k)


def _query_blocks(k_start, block_q, block_k, window, n_q):
  """`[lo, hi)` query blocks that can see keys `[k_start, k_start + block_k)`."""
  lo = k_start // block_q
  if window is None:
    return lo, n_q
  return lo, jnp.minimum(pl.cdiv(k_start + block_k + window, block_q), n_q)


def _forward_kernel(q_ref, k_ref, v_ref, q_doc_ref, k_doc_ref, o_ref, lse_ref,
                    *, window, config):
  block_q, block_k = config.block_q, config.block_k
  q_start = pl.program_id(2) * block_q
  q = q_ref[...]  # [block_q, H]
  q_doc = q_doc_ref[...]
  q_idx = q_start + jnp.arange(block_q, dtype=jnp.int32)

  def body(j, carry):
    acc, m, l = carry
    keys = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
    k, v = k_ref[keys, :], v_ref[keys, :]
    k_idx = j * block_k + jnp.arange(block_k, dtype=jnp.int32)
    s = _dot(q, k, trans_b=True)
    s = jnp.where(_visible(q_idx, k_idx, q_doc, k_doc_ref[keys], window), s,
                  MASKED)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    rescale = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[:, None])
    l = l * rescale + jnp.sum(p, axis=1)
    acc = acc * rescale[:, None] + _dot(p.astype(v.dtype), v)
    return acc, m_new, l

  lo, hi = _key_blocks(q_start, block_q, block_k, window)
  acc, m, l = lax.fori_loop(lo, hi, body, (
      jnp.zeros(q.shape, jnp.float32),
      jnp.full((block_q,), MASKED, jnp.float32),
      jnp.zeros((block_q,), jnp.float32)))
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l)


def _probabilities(q, k, q_idx, k_idx, q_doc, k_doc, lse, window):
  """`[block_q, block_k]` float32 softmax probabilities of one tile, from
  the forward's log-sum-exp; exactly 0 where the key is invisible."""
  s = _dot(q, k, trans_b=True)
  return jnp.where(_visible(q_idx, k_idx, q_doc, k_doc, window),
                   jnp.exp(s - lse[:, None]), 0.0)


def _backward_keys_kernel(q_ref, k_ref, v_ref, q_doc_ref, k_doc_ref, do_ref,
                          lse_ref, delta_ref, dk_ref, dv_ref, *, window,
                          config, n_q):
  block_q, block_k = config.block_q, config.block_k
  k_start = pl.program_id(2) * block_k
  k, v = k_ref[...], v_ref[...]  # [block_k, H]
  k_doc = k_doc_ref[...]
  k_idx = k_start + jnp.arange(block_k, dtype=jnp.int32)

  def body(i, carry):
    dk, dv = carry
    queries = pl.ds(pl.multiple_of(i * block_q, block_q), block_q)
    q, do = q_ref[queries, :], do_ref[queries, :]
    q_idx = i * block_q + jnp.arange(block_q, dtype=jnp.int32)
    p = _probabilities(q, k, q_idx, k_idx, q_doc_ref[queries], k_doc,
                       lse_ref[queries], window)
    dv += _dot(p.astype(do.dtype), do, trans_a=True)
    dp = _dot(do, v, trans_b=True)
    ds = p * (dp - delta_ref[queries][:, None])
    dk += _dot(ds.astype(q.dtype), q, trans_a=True)
    return dk, dv

  lo, hi = _query_blocks(k_start, block_q, block_k, window, n_q)
  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(lo, hi, body, (zeros, zeros))
  dk_ref[...] = dk
  dv_ref[...] = dv


def _backward_queries_kernel(q_ref, k_ref, v_ref, q_doc_ref, k_doc_ref,
                             do_ref, lse_ref, delta_ref, dq_ref, *, window,
                             config):
  block_q, block_k = config.block_q, config.block_k
  q_start = pl.program_id(2) * block_q
  q, do = q_ref[...], do_ref[...]
  q_doc, lse, delta = q_doc_ref[...], lse_ref[...], delta_ref[...]
  q_idx = q_start + jnp.arange(block_q, dtype=jnp.int32)

  def body(j, dq):
    keys = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
    k, v = k_ref[keys, :], v_ref[keys, :]
    k_idx = j * block_k + jnp.arange(block_k, dtype=jnp.int32)
    p = _probabilities(q, k, q_idx, k_idx, q_doc, k_doc_ref[keys], lse,
                       window)
    dp = _dot(do, v, trans_b=True)
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k)

  lo, hi = _key_blocks(q_start, block_q, block_k, window)
  dq = lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = dq.astype(dq_ref.dtype)


# ----------------------------------------------------------------------------
# pallas_call wrappers. Shapes: q [B, T, N, H]; k, v [B, T, H]; docs [B, T];
# per-head rows (lse, delta) [B, N, T]. T is already padded.
# ----------------------------------------------------------------------------


def _specs(h: int, rows: int, own: bool):
  """BlockSpecs of q-shaped `[B, T, N, H]`, doc `[B, T]` and per-head row
  `[B, N, T]` operands on grid (b, head, r): the program's own block of
  `rows` rows (`own`), or all `rows` of them, for kernels that loop."""
  if own:
    return (pl.BlockSpec((None, rows, None, h), lambda b, i, r: (b, r, i, 0)),
            pl.BlockSpec((None, rows), lambda b, i, r: (b, r)),
            pl.BlockSpec((None, None, rows), lambda b, i, r: (b, i, r)))
  return (pl.BlockSpec((None, rows, None, h), lambda b, i, r: (b, 0, i, 0)),
          pl.BlockSpec((None, rows), lambda b, i, r: (b, 0)),
          pl.BlockSpec((None, None, rows), lambda b, i, r: (b, i, 0)))


def _kv_spec(h: int, rows: int, own: bool):
  """BlockSpec of a `[B, T, H]` key/value operand (see `_specs`)."""
  if own:
    return pl.BlockSpec((None, rows, h), lambda b, i, r: (b, r, 0))
  return pl.BlockSpec((None, rows, h), lambda b, i, r: (b, 0, 0))


def _compiler_params(config):
  return plgpu.CompilerParams(num_warps=config.num_warps,
                              num_stages=config.num_stages)


def _forward(q, k, v, q_doc, k_doc, window, interpret, config):
  b, t, n, h = q.shape
  q_spec, doc_spec, row_spec = _specs(h, config.block_q, own=True)
  _, all_docs, _ = _specs(h, t, own=False)
  all_kv = _kv_spec(h, t, own=False)
  kernel = functools.partial(_forward_kernel, window=window, config=config)
  return pl.pallas_call(
      kernel,
      grid=(b, n, t // config.block_q),
      in_specs=[q_spec, all_kv, all_kv, doc_spec, all_docs],
      out_specs=[q_spec, row_spec],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, n, t), jnp.float32)],
      interpret=interpret,
      compiler_params=_compiler_params(config),
      name="local_attention_fwd",
  )(q, k, v, q_doc, k_doc)


def _backward(q, k, v, q_doc, k_doc, out, lse, d_out, window, interpret,
              config):
  b, t, n, h = q.shape
  delta = jnp.einsum("btnh,btnh->bnt", d_out.astype(jnp.float32),
                     out.astype(jnp.float32))
  all_q, all_docs, all_rows = _specs(h, t, own=False)
  own_q, own_q_docs, own_rows = _specs(h, config.block_q, own=True)
  _, own_k_docs, _ = _specs(h, config.block_k, own=True)
  all_kv = _kv_spec(h, t, own=False)
  own_kv = _kv_spec(h, config.block_k, own=True)
  own_head_kv = pl.BlockSpec((None, None, config.block_k, h),
                             lambda b, i, r: (b, i, r, 0))
  keys_kernel = functools.partial(_backward_keys_kernel, window=window,
                                  config=config, n_q=t // config.block_q)
  dk, dv = pl.pallas_call(
      keys_kernel,
      grid=(b, n, t // config.block_k),
      in_specs=[all_q, own_kv, own_kv, all_docs, own_k_docs, all_q, all_rows,
                all_rows],
      out_specs=[own_head_kv, own_head_kv],
      out_shape=[jax.ShapeDtypeStruct((b, n, t, h), jnp.float32)] * 2,
      interpret=interpret,
      compiler_params=_compiler_params(config),
      name="local_attention_bwd_keys",
  )(q, k, v, q_doc, k_doc, d_out, lse, delta)
  queries_kernel = functools.partial(_backward_queries_kernel, window=window,
                                     config=config)
  dq = pl.pallas_call(
      queries_kernel,
      grid=(b, n, t // config.block_q),
      in_specs=[own_q, all_kv, all_kv, own_q_docs, all_docs, own_q, own_rows,
                own_rows],
      out_specs=own_q,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      interpret=interpret,
      compiler_params=_compiler_params(config),
      name="local_attention_bwd_queries",
  )(q, k, v, q_doc, k_doc, d_out, lse, delta)
  # One key/value head serves all N query heads: their gradients add up.
  return dq, dk.sum(axis=1).astype(k.dtype), dv.sum(axis=1).astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _attention(q, k, v, q_doc, k_doc, window, interpret, config):
  return _forward(q, k, v, q_doc, k_doc, window, interpret, config)[0]


def _attention_fwd(q, k, v, q_doc, k_doc, window, interpret, config):
  out, lse = _forward(q, k, v, q_doc, k_doc, window, interpret, config)
  return out, (q, k, v, q_doc, k_doc, out, lse)


def _attention_bwd(window, interpret, config, residuals, d_out):
  q, k, v, q_doc, k_doc, out, lse = residuals
  dq, dk, dv = _backward(q, k, v, q_doc, k_doc, out, lse, d_out, window,
                         interpret, config)
  return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def head_dim_supported(head_dim: int) -> bool:
  """The head sizes the kernels take: powers of 2 from 16."""
  return head_dim >= 16 and not head_dim & (head_dim - 1)


def local_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    doc_ids: jax.Array,
    window: int | None,
    *,
    interpret: bool = False,
    config: AttentionConfig | None = None,
) -> jax.Array:
  """Causal multi-query attention inside a window and a document.

  Args:
    q: `[B, T, N, H]` queries, already scaled; float32 or bfloat16.
    k, v: `[B, T, H]` the one key/value head, q's dtype.
    doc_ids: `[B, T]` int32 document id of each token.
    window: query `i` sees keys `i - window .. i`; None for no limit.
    interpret: run the kernels in Pallas interpret mode (CPU).
    config: tile sizes (`AttentionConfig()` by default).

  Returns:
    `[B, T, N, H]` in q's dtype. Differentiable in q, k and v.
  """
  config = config or AttentionConfig()
  b, t, n, h = q.shape
  if k.shape != (b, t, h) or v.shape != (b, t, h):
    raise ValueError(f"k and v must be [B, T, H] = {(b, t, h)}, got "
                     f"{k.shape} and {v.shape}")
  if doc_ids.shape != (b, t):
    raise ValueError(f"doc_ids must be [B, T] = {(b, t)}, got "
                     f"{doc_ids.shape}")
  if k.dtype != q.dtype or v.dtype != q.dtype:
    raise ValueError(f"q, k and v must share a dtype, got {q.dtype}, "
                     f"{k.dtype}, {v.dtype}")
  if not head_dim_supported(h):
    raise ValueError(f"head dimension must be a power of 2 >= 16, got {h}")
  if window is not None and window < 0:
    raise ValueError(f"window must be >= 0 or None, got {window}")
  block = max(config.block_q, config.block_k)
  pad = -t % block
  doc_ids = doc_ids.astype(jnp.int32)
  q_doc = jnp.pad(doc_ids, ((0, 0), (0, pad)), constant_values=_PAD_QUERY_DOC)
  k_doc = jnp.pad(doc_ids, ((0, 0), (0, pad)), constant_values=_PAD_KEY_DOC)
  q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  k = jnp.pad(k, ((0, 0), (0, pad), (0, 0)))
  v = jnp.pad(v, ((0, 0), (0, pad), (0, 0)))
  out = _attention(q, k, v, q_doc, k_doc, window, interpret, config)
  return out[:, :t]
