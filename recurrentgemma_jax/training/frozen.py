"""The frozen part of the train state's parameters (a LoRA run's base model).

A LoRA run trains only its adapters. `trainable` is a pure-dict tree of
bools over the parameters (True: trained); `select` and `combine` split the
parameter dict into its trained and frozen parts and join them again.
Checkpoints hold only the trained part: the frozen one is the run's starting
point (released weights, or the seed's initialisation), loaded again on
every restore (`FrozenParams`), and a checkpoint keeps its `digest` so that
resuming on other base weights is refused instead of silently training a
different model.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

_DROP = object()


def _select(tree: Any, mask: Any, keep: bool) -> Any:
  if isinstance(mask, Mapping):
    out = {}
    for key, sub in mask.items():
      value = _select(tree[key], sub, keep)
      if value is not _DROP:
        out[key] = value
    return out or _DROP
  return tree if bool(mask) == keep else _DROP


def select(tree: Any, mask: Any, keep: bool = True) -> dict[Any, Any]:
  """The leaves of the nested dict `tree` whose `mask` leaf equals `keep`,
  as a nested dict (branches left empty are dropped)."""
  out = _select(tree, mask, keep)
  return {} if out is _DROP else out


def combine(a: Any, b: Any) -> dict[Any, Any]:
  """Nested dicts with disjoint leaves (`select`'s two parts), joined.

  Raises:
    ValueError: a leaf is in both.
  """
  if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
    raise ValueError("combine: the two trees share a leaf")
  out = dict(a)
  for key, value in b.items():
    out[key] = combine(a[key], value) if key in a else value
  return out


def paths(tree: Any) -> list[str]:
  """'/'-joined paths of the leaves, in `jax.tree.leaves` order."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return ["/".join(str(getattr(k, "key", k)) for k in path)
          for path, _ in flat]


_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def _leaf_digest(x: jax.Array) -> jax.Array:
  """uint32 hash of an array's bits and shape. A sum of per-element
  hashes modulo 2^32: independent of the reduction order, so every
  sharding and device gives the same value."""
  bits = jax.lax.bitcast_convert_type(x, _UINT[x.dtype.itemsize])
  bits = bits.astype(jnp.uint32)
  position = jnp.arange(bits.size, dtype=jnp.uint32).reshape(bits.shape)
  h = (bits ^ (position * jnp.uint32(0x9E3779B9))) * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  kind = zlib.crc32(f"{x.shape} {x.dtype}".encode())  # not hash(): salted
  return jnp.sum(h ^ (h >> 16), dtype=jnp.uint32) + jnp.uint32(kind)


def digest(tree: Any, sharding: NamedSharding | None = None) -> np.ndarray:
  """`uint32 [num_leaves]`: one hash per leaf of `tree` (device arrays),
  in `paths(tree)` order."""
  fn = jax.jit(lambda t: jnp.stack([_leaf_digest(x)
                                    for x in jax.tree.leaves(t)]),
               out_shardings=sharding)
  return np.asarray(jax.device_get(fn(tree)))


class FrozenParams:
  """The parameters a run does not train, loaded when first needed.

  Attributes:
    trainable: pure-dict tree of bools over the parameters (True: trained).
    paths: the frozen leaves' paths, in `digest` order.
  """

  def __init__(self, trainable: Any, load: Callable[[], Any],
               sharding: NamedSharding):
    """`load()` returns the frozen leaves as a nested dict of device arrays
    on their shardings; `sharding` is a replicated one of the mesh."""
    self.trainable = trainable
    self._load = load
    self.sharding = sharding
    self._values: Any | None = None
    self._digest: np.ndarray | None = None
    abstract = select(trainable, trainable, keep=False)
    self.paths = paths(abstract)

  def digest(self) -> np.ndarray:
    """`uint32 [len(paths)]`, the frozen parameters' fingerprint."""
    if self._digest is None:
      self._values = self._load()
      self._digest = digest(self._values, self.sharding)
    return self._digest

  def take(self) -> Any:
    """The frozen parameters, handed over to the caller's train state (its
    train step donates them): a later call loads them again."""
    values = self._values if self._values is not None else self._load()
    self._values = None
    if self._digest is None:
      self._digest = digest(values, self.sharding)
    return values

  def first_difference(self, stored: np.ndarray) -> str | None:
    """The path of the first frozen leaf whose stored digest differs, or
    None when `stored` matches."""
    mine = self.digest()
    if np.shape(stored) != mine.shape:
      return "the number of frozen parameters"
    for path, a, b in zip(self.paths, np.asarray(stored), mine):
      if a != b:
        return path
    return None
