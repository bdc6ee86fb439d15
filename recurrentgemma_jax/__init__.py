"""recurrentgemma_jax: train, evaluate and sample Griffin, Hawk and
RecurrentGemma models in JAX / Flax NNX.

    import recurrentgemma_jax as rg
    config = rg.GriffinConfig.from_preset("griffin-100m", vocab_size=256)
    model = rg.Griffin(config, rngs=nnx.Rngs(0))
    logits = model(tokens, segment_pos)            # [B, T, vocab]
"""

from recurrentgemma_jax.config import BlockType
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.model import Griffin
from recurrentgemma_jax.model import GriffinCache
from recurrentgemma_jax.official import config_from_official
from recurrentgemma_jax.official import from_official
from recurrentgemma_jax.official import load_official_checkpoint
from recurrentgemma_jax.official import to_official
from recurrentgemma_jax.presets import PRESETS

__version__ = "0.1.0"

__all__ = [
    "BlockType",
    "ConfigError",
    "Griffin",
    "GriffinCache",
    "GriffinConfig",
    "PRESETS",
    "config_from_official",
    "from_official",
    "load_official_checkpoint",
    "to_official",
]
