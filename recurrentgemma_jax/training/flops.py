"""Model FLOPs per token and accelerator peaks, for MFU (see docs/flops.md).

A multiply-add counts 2 FLOPs. The forward pass per token counts every
matmul (MLP, recurrent and attention projections, the RG-LRU gates, the
logits), the causal depthwise conv, the RG-LRU's elementwise work and the
attention scores limited to the window. A training step counts three
forward passes (forward + backward); rematerialisation is not counted (MFU
measures model FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

import jax

from recurrentgemma_jax.config import BlockType
from recurrentgemma_jax.config import GriffinConfig

# Elementwise FLOPs per RG-LRU feature and token: two sigmoid gates (2),
# log a = -8 r softplus(Lambda) (2), a = exp(log a) (1), a^2 = exp(2 log a)
# (2), sqrt(1 - a^2) (2), i * x and the sqrt scaling (2), the recurrence
# a h + x (2) and the output gate h * y (1).
RG_LRU_ELEMENTWISE = 14

# Dense bfloat16 peak FLOP/s per device, matched by substring of
# `device.device_kind` (first match wins, so specific names come first).
PEAK_FLOPS = (
    ("TPU v6 lite", 918e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


def mean_visible_keys(seq_len: int, window: int | None) -> float:
  """Mean keys a causal query sees: `mean_t min(t + 1, window + 1)`."""
  if window is None or window + 1 >= seq_len:
    return (seq_len + 1) / 2
  span = window + 1
  # Positions t < span see t + 1 keys; the rest see `span`.
  ramp = span * (span + 1) / 2
  return (ramp + (seq_len - span) * span) / seq_len


def forward_flops_per_token(config: GriffinConfig, seq_len: int) -> float:
  """Forward-pass FLOPs per token at training length `seq_len`."""
  d, f, v = config.width, config.mlp_expanded_width, config.vocab_size
  e = config.lru_width
  total = 2.0 * d * v  # logits (the input embedding lookup is free)
  for block_type in config.block_types:
    total += 6.0 * d * f  # two up projections and the down projection
    if block_type == BlockType.RECURRENT:
      total += 6.0 * d * e  # linear_x, linear_y, linear_out
      total += 2.0 * config.conv1d_temporal_width * e
      total += 4.0 * e * (e // config.lru_num_heads)  # two block-diagonal gates
      total += RG_LRU_ELEMENTWISE * e
    else:
      hd = config.head_dim
      total += 4.0 * d * d + 4.0 * d * hd  # q, out; k, v (one head)
      keys = mean_visible_keys(seq_len, config.attention_window_size)
      total += 4.0 * d * keys  # q.k and p.v for all heads
  return total


def train_flops_per_token(config: GriffinConfig, seq_len: int) -> float:
  """Forward + backward: three forward passes."""
  return 3.0 * forward_flops_per_token(config, seq_len)


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  """The device's dense bf16 peak FLOP/s, or None when unknown (e.g. CPU)."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "")
  for name, peak in PEAK_FLOPS:
    if name in kind:
      return peak
  return None
