"""`Griffin`: the Griffin / Hawk / MQA language model in Flax NNX."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Integer

from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.config import REMAT_POLICIES
from recurrentgemma_jax.config import check_token_ids
from recurrentgemma_jax.nn import logical
from recurrentgemma_jax.nn.embedding import Embedder
from recurrentgemma_jax.nn.normalization import RMSNorm
from recurrentgemma_jax.nn.residual import BlockCache
from recurrentgemma_jax.nn.residual import ResidualBlock

# Shape aliases (real objects, so typing.get_type_hints resolves them).
# Token ids and positions: on the device, or host arrays (checked eagerly).
Ids = Integer[Array, "B T"] | Integer[np.ndarray, "B T"]
Logits = Float[Array, "B T V"]


class GriffinCache(NamedTuple):
  """Decoding state of the whole model; its size does not grow with length.

  Attributes:
    blocks: one cache per residual block.
    num_tokens: `[B]` int32, tokens consumed so far in each row.
    doc_id: `[B]` int32, documents started so far in each row.
  """

  blocks: tuple[BlockCache, ...]
  num_tokens: jax.Array
  doc_id: jax.Array


class Griffin(nnx.Module):
  """Griffin-family language model (De et al. 2024, arXiv 2402.19427).

  `model(tokens, segment_pos)` returns logits `[B, T, vocab]`. Packed rows are
  supported: `segment_pos` restarts at 0 at every document, and no layer
  mixes information across a document start.

  Example:
    >>> config = presets.get("griffin-100m", vocab_size=256)
    >>> model = Griffin(config, rngs=nnx.Rngs(0))
    >>> logits = model(tokens, segment_pos)          # [B, T, 256]
  """

  def __init__(self, config: GriffinConfig, *, rngs: nnx.Rngs):
    self.config = config
    kw = dict(dtype=jnp.dtype(config.dtype),
              param_dtype=jnp.dtype(config.param_dtype), rngs=rngs)
    self.embedder = Embedder(
        config.vocab_size, config.width,
        scale_by_sqrt_dim=config.embeddings_scale_by_sqrt_dim, **kw,
    )
    self.blocks = nnx.List(
        [ResidualBlock(config, bt, rngs=rngs) for bt in config.block_types]
    )
    self.final_norm = RMSNorm(config.width, **kw)

  def init_cache(
      self, batch_size: int, length: int | None = None
  ) -> GriffinCache:
    """An empty decoding cache; `length` is needed for global attention."""
    dtype = jnp.dtype(self.config.dtype)
    return GriffinCache(
        blocks=tuple(b.init_cache(batch_size, dtype, length)
                     for b in self.blocks),
        num_tokens=jnp.zeros((batch_size,), jnp.int32),
        doc_id=jnp.zeros((batch_size,), jnp.int32),
    )

  def __call__(
      self,
      tokens: Ids,
      segment_pos: Ids,
      cache: GriffinCache | None = None,
      *,
      return_cache: bool = False,
      last_only: bool = False,
  ) -> Logits | tuple[Logits, GriffinCache]:
    """Runs the model.

    Token ids must lie in `[0, vocab_size)`. Concrete ids (an eager call)
    are checked and a bad one raises ValueError. Inside `jit` they cannot
    be: there an id >= vocab_size gives NaN logits and a negative id wraps
    around (-1 is vocab_size - 1), so check them where they are made
    (`recurrentgemma_jax.config.check_token_ids`; the sampler does).

    Args:
      tokens: `[B, T]` integer token ids in `[0, vocab_size)`.
      segment_pos: `[B, T]` integer position of each token in its document.
      cache: state after earlier tokens; the call then continues those rows
        (decoding one token, or a chunk of several).
      return_cache: also return the state after this call.
      last_only: the logits of the last position only, `[B, 1, vocab]`
        (prefill needs no others; XLA would not narrow the `[B, T, vocab]`
        product to a slice of it).

    Returns:
      logits `[B, T, vocab]` (`[B, 1, vocab]` with `last_only`), and the new
      `GriffinCache` when `return_cache`.
    """
    tokens, segment_pos = _check_inputs(tokens, segment_pos, self.config)
    b, t = tokens.shape
    if cache is not None and cache.num_tokens.shape != (b,):
      raise ValueError(
          f"cache is for batch {cache.num_tokens.shape[0]}, tokens have {b}"
      )
    start = cache.num_tokens if cache is not None else jnp.zeros((b,), jnp.int32)
    doc0 = cache.doc_id if cache is not None else jnp.zeros((b,), jnp.int32)
    positions = start[:, None] + jnp.arange(t, dtype=jnp.int32)
    doc_ids = doc0[:, None] + jnp.cumsum(segment_pos == 0, axis=1,
                                         dtype=jnp.int32)

    # Under `sharding.model_sharding` the embeddings and the logits are
    # pinned batch-sharded (no-ops elsewhere): otherwise XLA may copy the
    # table's `embed -> fsdp` split onto the residual stream and keep the
    # whole global batch on every chip (docs/tpu.md, row 3).
    x = logical.constrain(self.embedder.encode(tokens),
                          logical.RESIDUAL_AXES)
    new_blocks = []
    for i, block in enumerate(self.blocks):
      block_cache = None if cache is None else cache.blocks[i]
      if self.config.remat != "none" and cache is None and not return_cache:
        x = _remat_block(block, x, segment_pos, positions, doc_ids,
                         self.config.remat)
        continue
      x, block_cache = block(x, segment_pos, positions, doc_ids, block_cache,
                             return_cache)
      new_blocks.append(block_cache)

    if last_only:
      x = x[:, -1:]
    logits = self.embedder.decode(self.final_norm(x))
    logits = logical.constrain(logits, logical.LOGITS_AXES)
    cap = self.config.logits_soft_cap
    if cap:
      logits = jnp.tanh(logits / cap) * cap
    if not return_cache:
      return logits
    return logits, GriffinCache(
        blocks=tuple(new_blocks), num_tokens=start + t, doc_id=doc_ids[:, -1]
    )


def _remat_block(block, x, segment_pos, positions, doc_ids, policy: str):
  """Calls `block` under `nnx.remat` with the named checkpoint policy."""

  def run(block, x, segment_pos, positions, doc_ids):
    return block(x, segment_pos, positions, doc_ids)[0]

  return nnx.remat(run, policy=REMAT_POLICIES[policy])(
      block, x, segment_pos, positions, doc_ids
  )


def _check_inputs(tokens, segment_pos, config: GriffinConfig):
  """Rejects malformed inputs with a message, before any tracing work."""
  host_ids = tokens if not isinstance(tokens, jax.Array) else None
  tokens = jnp.asarray(tokens)
  segment_pos = jnp.asarray(segment_pos)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [batch, time], got shape {tokens.shape}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise TypeError(f"tokens must be integers, got dtype {tokens.dtype}")
  if segment_pos.shape != tokens.shape:
    raise ValueError(
        f"segment_pos shape {segment_pos.shape} must equal tokens shape "
        f"{tokens.shape}"
    )
  if not jnp.issubdtype(segment_pos.dtype, jnp.integer):
    raise TypeError(
        f"segment_pos must be integers, got dtype {segment_pos.dtype}"
    )
  if tokens.shape[1] == 0:
    raise ValueError("tokens must hold at least one time step")
  if host_ids is not None:  # read on the host, before it went to the device
    check_token_ids(host_ids, config.vocab_size)
  elif _is_concrete(tokens):  # an eager device array: one device-host copy
    check_token_ids(tokens, config.vocab_size)
  return tokens, segment_pos.astype(jnp.int32)


def _is_concrete(x) -> bool:
  """Whether `x`'s values can be read on this host (not traced under jit,
  not a multi-host array)."""
  if isinstance(x, jax.core.Tracer):
    return False
  return not isinstance(x, jax.Array) or x.is_fully_addressable
