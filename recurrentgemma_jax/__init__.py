"""recurrentgemma_jax: train, evaluate and sample Griffin, Hawk and
RecurrentGemma models in JAX / Flax NNX.

    import recurrentgemma_jax as rg
    config = rg.presets.get("griffin-100m", vocab_size=256)
    model = rg.Griffin(config, rngs=nnx.Rngs(0))
    logits = model(tokens, segment_pos)            # [B, T, vocab]
    result = rg.train(experiment_config, "/tmp/workdir")
    model = rg.load_workdir("/tmp/workdir")
    rg.add_lora(model, rg.LoRAConfig(rank=8), rngs=nnx.Rngs(1))  # adapters
    plain = rg.merge_lora(model)  # folded into the weights (sampling, export)
    out = rg.Sampler(model).generate([[1, 2, 3]], max_new_tokens=8)
    rg.plot_metrics(["/tmp/workdir"], "/tmp/curves.png")

`train` and `evaluate` import the training loop (grain, TFDS, Orbax's
manager: half a second more) on their first call only. The command-line
tools are `recurrentgemma <verb>` (`recurrentgemma_jax.cli`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recurrentgemma_jax.config import BlockType
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.hf import from_hf
from recurrentgemma_jax.hf import to_hf
from recurrentgemma_jax.loading import load_official
from recurrentgemma_jax.loading import load_workdir
from recurrentgemma_jax.model import Griffin
from recurrentgemma_jax.model import GriffinCache
from recurrentgemma_jax.nn.lora import LoRAConfig
from recurrentgemma_jax.nn.lora import add_lora
from recurrentgemma_jax.nn.lora import merge_lora
from recurrentgemma_jax.official import config_from_official
from recurrentgemma_jax.official import from_official
from recurrentgemma_jax.official import load_official_checkpoint
from recurrentgemma_jax.official import to_official
from recurrentgemma_jax.plotting import plot as plot_metrics
from recurrentgemma_jax.presets import PRESETS
from recurrentgemma_jax.sampling import Conversation
from recurrentgemma_jax.sampling import DecodeState
from recurrentgemma_jax.sampling import Sampler
from recurrentgemma_jax.sampling import SamplerOutput
from recurrentgemma_jax.sampling import SamplingParams
from recurrentgemma_jax.sampling import StreamStep
from recurrentgemma_jax.sampling.quantize import quantize_int8

__version__ = "0.1.0"

if TYPE_CHECKING:
  from recurrentgemma_jax.training import loop


def train(config: Any, workdir: str) -> loop.TrainResult:
  """Trains (or resumes) the experiment `config` in `workdir`: see
  `recurrentgemma_jax.training.loop.train`."""
  from recurrentgemma_jax.training import loop  # pylint: disable=g-import-not-at-top,redefined-outer-name

  return loop.train(config, workdir)


def evaluate(config: Any, workdir: str,
             step: int | None = None) -> dict[str, float]:
  """Evaluates a checkpoint of `workdir` (the newest complete by default):
  see `recurrentgemma_jax.training.loop.evaluate`."""
  from recurrentgemma_jax.training import loop  # pylint: disable=g-import-not-at-top,redefined-outer-name

  return loop.evaluate(config, workdir, step)


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
    "quantize_int8",
    "to_hf",
    "to_official",
    "train",
]
