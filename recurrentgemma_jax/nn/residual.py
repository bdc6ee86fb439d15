"""Pre-norm residual block: temporal mixing, then the MLP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from recurrentgemma_jax.config import BlockType
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.nn import logical
from recurrentgemma_jax.nn.attention import AttentionCache
from recurrentgemma_jax.nn.attention import LocalAttentionBlock
from recurrentgemma_jax.nn.mlp import MLPBlock
from recurrentgemma_jax.nn.normalization import RMSNorm
from recurrentgemma_jax.nn.recurrent import RecurrentBlock
from recurrentgemma_jax.nn.recurrent import RecurrentCache

BlockCache = RecurrentCache | AttentionCache


class ResidualBlock(nnx.Module):
  """`h = x + T(norm(x))`, `out = h + MLP(norm(h))`.

  The temporal block `T` is a `recurrent_block` or an `attention_block`
  (attribute names follow the official parameter tree).
  """

  def __init__(
      self, config: GriffinConfig, block_type: BlockType, *, rngs: nnx.Rngs
  ):
    self.block_type = block_type
    kw = dict(dtype=jnp.dtype(config.dtype),
              param_dtype=jnp.dtype(config.param_dtype), rngs=rngs)
    final_scale = 2.0 / config.num_layers
    self.temporal_pre_norm = RMSNorm(config.width, **kw)
    if block_type == BlockType.RECURRENT:
      self.recurrent_block = RecurrentBlock(
          config.width, config.lru_width, config.lru_num_heads,
          conv_width=config.conv1d_temporal_width, final_scale=final_scale,
          scan_impl=config.scan_impl, fused=config.fused_rg_lru, **kw,
      )
    else:
      self.attention_block = LocalAttentionBlock(
          config.width, config.num_heads, config.attention_window_size,
          final_scale=final_scale, impl=config.attention_impl, **kw,
      )
    self.channel_pre_norm = RMSNorm(config.width, **kw)
    self.mlp_block = MLPBlock(
        config.width, config.mlp_expanded_width, final_scale=final_scale, **kw
    )

  def init_cache(
      self, batch_size: int, dtype: jnp.dtype, length: int | None = None
  ) -> BlockCache:
    if self.block_type == BlockType.RECURRENT:
      return self.recurrent_block.init_cache(batch_size, dtype)
    return self.attention_block.init_cache(batch_size, dtype, length)

  def __call__(
      self,
      x: jax.Array,
      segment_pos: jax.Array,
      positions: jax.Array,
      doc_ids: jax.Array,
      cache: BlockCache | None = None,
      return_cache: bool = False,
  ) -> tuple[jax.Array, BlockCache | None]:
    """`x [B, T, D]` -> `([B, T, D], cache or None)`; see `Griffin.__call__`.

    The residual stream (`x`, `h`, the output) is pinned batch-sharded with
    its width whole under `sharding.model_sharding` (a no-op elsewhere).
    """
    x = logical.constrain(x, logical.RESIDUAL_AXES)
    normed = self.temporal_pre_norm(x)
    if self.block_type == BlockType.RECURRENT:
      mixed, cache = self.recurrent_block(normed, segment_pos, cache,
                                          return_cache)
    else:
      mixed, cache = self.attention_block(normed, segment_pos, positions,
                                          doc_ids, cache, return_cache)
    h = logical.constrain(x + mixed, logical.RESIDUAL_AXES)
    out = h + self.mlp_block(self.channel_pre_norm(h))
    return logical.constrain(out, logical.RESIDUAL_AXES), cache
