"""Logits processing: temperature, top-k, top-p (nucleus) and sampling.

Every function works on one decoding step, `logits [B, V]`, inside jit.
Parameters that change from call to call (temperature, top-p) are traced
arrays, so a new value does not recompile; `top_k` is static (`lax.top_k`
needs a static size) and so is the choice between greedy and sampling.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

# Logit of a filtered-out token (finite, so a softmax of a row never sees
# only -inf).
FILTERED = -1e30


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How the next token is chosen from the logits.

  Attributes:
    temperature: 0 means greedy (argmax); otherwise logits are divided by it.
    top_k: sample among the k most likely tokens only (None: all).
    top_p: sample among the smallest set of most likely tokens whose
      probability reaches top_p (None or 1.0: all).
  """

  temperature: float = 0.0
  top_k: int | None = None
  top_p: float | None = None

  def __post_init__(self):
    if not (_is_real(self.temperature) and math.isfinite(self.temperature)
            and self.temperature >= 0):
      raise ValueError(f"temperature must be a finite number >= 0 (0 is "
                       f"greedy), got {self.temperature!r}")
    if self.top_k is not None and (
        isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
        or self.top_k < 1):
      raise ValueError(f"top_k must be a positive int or None, got "
                       f"{self.top_k!r}")
    if self.top_p is not None and not (_is_real(self.top_p) and
                                       0.0 < self.top_p <= 1.0):
      raise ValueError(f"top_p must be a number in (0, 1] or None, got "
                       f"{self.top_p!r}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0.0

  @property
  def use_top_p(self) -> bool:
    return self.top_p is not None and self.top_p < 1.0

  @property
  def mode(self) -> "SamplingMode":
    """The static part (what a compiled decode loop depends on)."""
    return SamplingMode(greedy=self.greedy, top_k=self.top_k,
                        top_p=self.use_top_p)


def _is_real(x) -> bool:
  """A real number (Python or NumPy), not a bool."""
  return (isinstance(x, (int, float, np.integer, np.floating)) and
          not isinstance(x, (bool, np.bool_)))


@dataclasses.dataclass(frozen=True)
class SamplingMode:
  """Static sampling choices: greedy or not, top_k, whether top-p is on.

  The temperature and the top-p value are traced arrays, so changing them
  does not recompile.
  """

  greedy: bool = True
  top_k: int | None = None
  top_p: bool = False


def top_p_mask(sorted_logits: jax.Array, top_p: jax.Array) -> jax.Array:
  """Keeps the head of each row of descending `sorted_logits [B, K]`.

  Token i (in descending order) is kept when the probability of the tokens
  before it is below `top_p`; the most likely token is always kept.

  Returns:
    `[B, K]` bool, True for kept tokens.
  """
  probs = jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs
  return before < top_p


def filter_logits(
    logits: jax.Array,
    *,
    top_k: int | None,
    top_p: jax.Array | None,
) -> tuple[jax.Array, jax.Array | None]:
  """Applies top-k then top-p to `logits [B, V]` (already temperature-scaled).

  Returns:
    `(values, indices)`: with top_k, `values [B, k]` are the k best logits
    (filtered ones set to `FILTERED`) and `indices [B, k]` their token ids;
    without top_k, `values [B, V]` and `indices` None.
  """
  logits = logits.astype(jnp.float32)
  if top_k is not None and top_k < logits.shape[-1]:
    values, indices = jax.lax.top_k(logits, top_k)
    if top_p is not None:
      values = jnp.where(top_p_mask(values, top_p), values, FILTERED)
    return values, indices
  if top_p is not None:
    sorted_desc = -jnp.sort(-logits, axis=-1)
    keep = top_p_mask(sorted_desc, top_p)
    # The smallest kept logit of each row; ties with it are kept too.
    threshold = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1,
                        keepdims=True)
    logits = jnp.where(logits >= threshold, logits, FILTERED)
  return logits, None


def sample_tokens(
    logits: jax.Array,
    keys: jax.Array | None,
    mode: SamplingMode,
    temperature: jax.Array | float = 1.0,
    top_p: jax.Array | float = 1.0,
) -> jax.Array:
  """The next token of each row of `logits [B, V]`.

  Args:
    logits: `[B, V]` model logits (any float dtype).
    keys: `[B]` PRNG keys, one per row (unused when greedy).
    mode: the static sampling choices (greedy or not, top_k, top-p on).
    temperature: `[]` temperature (> 0; unused when greedy).
    top_p: `[]` nucleus probability (used when `mode.top_p`).

  Returns:
    `[B]` int32 token ids.
  """
  if mode.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits.astype(jnp.float32) / temperature
  values, indices = filter_logits(scaled, top_k=mode.top_k,
                                  top_p=top_p if mode.top_p else None)
  choice = jax.vmap(jax.random.categorical)(keys, values)
  if indices is not None:
    choice = jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0]
  return choice.astype(jnp.int32)


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """`[B]` log-probability of `tokens [B]` under the model's `logits [B, V]`.

  This is the model's own distribution (temperature 1, no filtering).
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]
