"""Named model configurations: the released RecurrentGemma models and the
paper's scaling sizes (De et al. 2024, Table 2) for Griffin, Hawk and MQA.

Paper models: local-attention window 1024, MLP expansion 3, no embedding
scaling or soft cap; the MQA baseline uses global causal multi-query attention.
Where the paper's head count does not divide its RNN width (100M, 400M, 3B,
14B), the RG-LRU gates use blocks of 128 features instead (`lru_num_heads`).
"""

from __future__ import annotations

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.config import block_pattern
from recurrentgemma_jax.config import griffin_pattern

DEFAULT_VOCAB_SIZE = 256_000

# size -> (width, lru_width, depth, num_heads), paper Table 2.
PAPER_SIZES: dict[str, tuple[int, int, int, int]] = {
    "100m": (768, 1024, 12, 6),
    "400m": (1536, 2048, 12, 12),
    "1b": (2048, 2560, 24, 16),
    "3b": (3072, 4096, 24, 24),
    "7b": (4096, 5632, 32, 32),
    "14b": (5120, 8192, 40, 40),
}
PAPER_WINDOW = 1024
MODEL_KINDS = ("griffin", "hawk", "mqa")


def _recurrentgemma(width: int, heads: int, depth: int) -> GriffinConfig:
  return GriffinConfig(
      vocab_size=DEFAULT_VOCAB_SIZE,
      width=width,
      mlp_expanded_width=3 * width,
      num_heads=heads,
      lru_width=width,
      block_types=griffin_pattern(depth),
      attention_window_size=2048,
      logits_soft_cap=30.0,
      embeddings_scale_by_sqrt_dim=True,
  )


def paper_config(kind: str, size: str) -> GriffinConfig:
  """The paper's `kind` in {griffin, hawk, mqa} at `size` (e.g. "400m")."""
  if size not in PAPER_SIZES:
    raise ConfigError(f"size {size!r} is not one of {list(PAPER_SIZES)}")
  width, lru_width, depth, heads = PAPER_SIZES[size]
  lru_heads = heads if lru_width % heads == 0 else lru_width // 128
  return GriffinConfig(
      vocab_size=DEFAULT_VOCAB_SIZE,
      width=width,
      mlp_expanded_width=3 * width,
      num_heads=heads,
      lru_width=lru_width,
      lru_num_heads=lru_heads,
      block_types=block_pattern(kind, depth),
      attention_window_size=None if kind == "mqa" else PAPER_WINDOW,
  )


def _all_presets() -> dict[str, GriffinConfig]:
  presets = {
      "recurrentgemma-2b": _recurrentgemma(2560, 10, 26),
      "recurrentgemma-9b": _recurrentgemma(4096, 16, 38),
  }
  for kind in MODEL_KINDS:
    for size in PAPER_SIZES:
      presets[f"{kind}-{size}"] = paper_config(kind, size)
  return presets


PRESETS: dict[str, GriffinConfig] = _all_presets()


def names() -> tuple[str, ...]:
  return tuple(PRESETS)


def get(name: str, **overrides) -> GriffinConfig:
  """The preset called `name`, with `overrides` of its fields applied
  (`GriffinConfig.replace`); a clear error lists the known names.

    config = presets.get("griffin-100m", vocab_size=256)
  """
  if name not in PRESETS:
    raise ConfigError(f"preset: unknown preset {name!r}; known: {names()}")
  return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
