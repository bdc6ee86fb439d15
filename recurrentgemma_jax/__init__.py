"""recurrentgemma_jax: train, evaluate and sample Griffin, Hawk and
RecurrentGemma models in JAX / Flax NNX.

    import recurrentgemma_jax as rg
    config = rg.GriffinConfig.from_preset("griffin-100m", vocab_size=256)
    model = rg.Griffin(config, rngs=nnx.Rngs(0))
    logits = model(tokens, segment_pos)            # [B, T, vocab]
    result = rg.train(experiment_config, "/tmp/workdir")
    model = rg.load_workdir("/tmp/workdir")
    rg.add_lora(model, rg.LoRAConfig(rank=8), rngs=nnx.Rngs(1))  # adapters
    plain = rg.merge_lora(model)  # folded into the weights (sampling, export)
    out = rg.Sampler(model).generate([[1, 2, 3]], max_new_tokens=8)
    rg.plot_metrics(["/tmp/workdir"], "/tmp/curves.png")

`train`, `evaluate`, `plot_metrics`, `load_workdir` and `load_official`
load the data and training stack (grain, TFDS, ml_collections) on first use
only. They also keep the package from importing the entry-point modules
(`python -m recurrentgemma_jax.sample` would then run a module that is
already imported, and Python warns).
"""

import importlib

from recurrentgemma_jax.config import BlockType
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.hf import from_hf
from recurrentgemma_jax.hf import to_hf
from recurrentgemma_jax.model import Griffin
from recurrentgemma_jax.model import GriffinCache
from recurrentgemma_jax.nn.lora import LoRAConfig
from recurrentgemma_jax.nn.lora import add_lora
from recurrentgemma_jax.nn.lora import merge_lora
from recurrentgemma_jax.official import config_from_official
from recurrentgemma_jax.official import from_official
from recurrentgemma_jax.official import load_official_checkpoint
from recurrentgemma_jax.official import to_official
from recurrentgemma_jax.presets import PRESETS
from recurrentgemma_jax.sampling import Conversation
from recurrentgemma_jax.sampling import DecodeState
from recurrentgemma_jax.sampling import Sampler
from recurrentgemma_jax.sampling import SamplerOutput
from recurrentgemma_jax.sampling import SamplingParams
from recurrentgemma_jax.sampling import StreamStep

__version__ = "0.1.0"

_LAZY = {
    "train": ("recurrentgemma_jax.training.loop", "train"),
    "evaluate": ("recurrentgemma_jax.training.loop", "evaluate"),
    "plot_metrics": ("recurrentgemma_jax.plot", "plot"),
    "load_workdir": ("recurrentgemma_jax.sample", "load_workdir"),
    "load_official": ("recurrentgemma_jax.sample", "load_official"),
}


def __getattr__(name: str):
  if name in _LAZY:
    module, attr = _LAZY[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BlockType",
    "ConfigError",
    "Conversation",
    "DecodeState",
    "Griffin",
    "GriffinCache",
    "GriffinConfig",
    "LoRAConfig",
    "PRESETS",
    "Sampler",
    "SamplerOutput",
    "SamplingParams",
    "StreamStep",
    "add_lora",
    "config_from_official",
    "evaluate",
    "from_hf",
    "from_official",
    "load_official",
    "load_official_checkpoint",
    "load_workdir",
    "merge_lora",
    "plot_metrics",
    "to_hf",
    "to_official",
    "train",
]
