"""Sampling from Griffin models: the `Sampler`, its decode loop, logits
processing (temperature, top-k, top-p) and stop criteria.

    from recurrentgemma_jax.sampling import Sampler
    sampler = Sampler(model, tokenizer)
    out = sampler.generate(["Hello"], max_new_tokens=20)
"""

from recurrentgemma_jax.sampling.decode import DecodeState
from recurrentgemma_jax.sampling.logits import SamplingParams
from recurrentgemma_jax.sampling.sampler import Conversation
from recurrentgemma_jax.sampling.sampler import Sampler
from recurrentgemma_jax.sampling.sampler import SamplerOutput
from recurrentgemma_jax.sampling.sampler import Stream
from recurrentgemma_jax.sampling.sampler import StreamStep

__all__ = [
    "Conversation",
    "DecodeState",
    "Sampler",
    "SamplerOutput",
    "SamplingParams",
    "Stream",
    "StreamStep",
]
