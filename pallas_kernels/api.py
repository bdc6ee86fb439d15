"""`linear_scan` and the dispatch table of the scan implementations.

The model calls only `linear_scan` (and `rg_lru.rg_lru`, which dispatches
through the same table). It validates its inputs, picks an implementation
for the backend and returns `(y, h_last)`:

    h_t = a_t * h_{t-1} + x_t,  h_{-1} = h0,  y_t = h_t

Shapes: `x, a: [B, T, D]` (float32 or bfloat16, they may differ),
`h0: [B, D]` float32 or None (zeros). Returns `y: [B, T, D]` in x's dtype
and `h_last: [B, D]` float32. Accumulation is always float32.

Inside `pallas_kernels.scan_sharding(...)` the call runs per shard through
`jax.shard_map` (see `pallas_kernels/sharded.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array
from jaxtyping import Float
from jaxtyping import Float32

from pallas_kernels import gpu_rg_lru
from pallas_kernels import gpu_scan
from pallas_kernels import reference
from pallas_kernels import sharded
from pallas_kernels import tpu_rg_lru
from pallas_kernels import tpu_scan

ScanFn = Callable[..., tuple[jax.Array, jax.Array]]
RgLruFn = Callable[..., tuple[jax.Array, jax.Array]]
# (shape [B, T, D], dtype) -> whether the fused kernel is the faster path.
AppliesFn = Callable[[tuple[int, int, int], jnp.dtype], bool]


class Kernels(NamedTuple):
  """The entry points of one implementation.

  Every Pallas backend exposes the same names: `linear_scan` in its
  `*_scan.py`, `rg_lru` (the fused RG-LRU) and `fused_kernel_applies` in
  its `*_rg_lru.py`; they take `interpret` and block-size options. The
  pure-JAX scans take neither and have no fused RG-LRU, so `rg_lru.rg_lru`
  runs their gates in XLA.
  """

  linear_scan: ScanFn
  rg_lru: RgLruFn | None = None
  # Where the fused `rg_lru` is used; elsewhere `rg_lru.rg_lru` runs the
  # gates in XLA and `linear_scan`, which may pick a better-suited kernel.
  fused_kernel_applies: AppliesFn | None = None


# The dispatch table: implementation name -> its kernels. Every backend
# module imports on any host (only compiling a Pallas kernel needs its
# device), and the whole package imports in about 0.2 s after JAX, so no
# backend is imported lazily.
KERNELS: dict[str, Kernels] = {
    "pallas_tpu": Kernels(
        tpu_scan.linear_scan, tpu_rg_lru.rg_lru,
        tpu_rg_lru.fused_kernel_applies,
    ),
    "pallas_gpu": Kernels(
        gpu_scan.linear_scan, gpu_rg_lru.rg_lru,
        gpu_rg_lru.fused_kernel_applies,
    ),
    "associative": Kernels(reference.associative_scan),
    "sequential": Kernels(reference.sequential_scan),
}

# The values of `impl` (and of `GriffinConfig.scan_impl`, which imports it).
IMPLS = ("auto", *KERNELS)


def resolve_impl(impl: str, backend: str | None = None) -> str:
  """Maps `impl` (possibly "auto") to a name of `KERNELS`.

  "auto" is the Pallas kernel of `backend` (default: JAX's) when it has
  one, else "associative".
  """
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  if impl != "auto":
    return impl
  backend = backend or jax.default_backend()
  preferred = {"tpu": "pallas_tpu", "gpu": "pallas_gpu", "cuda": "pallas_gpu"}
  return preferred.get(backend, "associative")


def _check_inputs(x, a, h0) -> None:
  if x.ndim != 3:
    raise ValueError(f"x must be [B, T, D], got shape {x.shape}")
  if a.shape != x.shape:
    raise ValueError(f"a must have x's shape {x.shape}, got {a.shape}")
  for name, arr in (("x", x), ("a", a)):
    if arr.dtype not in (jnp.float32, jnp.bfloat16):
      raise ValueError(f"{name} must be float32 or bfloat16, got {arr.dtype}")
  if h0 is not None and h0.shape != (x.shape[0], x.shape[2]):
    raise ValueError(
        f"h0 must be [B, D] = {(x.shape[0], x.shape[2])}, got {h0.shape}"
    )


def linear_scan(
    x: Float[Array, "B T D"],
    a: Float[Array, "B T D"],
    h0: Float[Array, "B D"] | None = None,
    *,
    reverse: bool = False,
    impl: str = "auto",
    interpret: bool = False,
    **kernel_options,
) -> tuple[Float[Array, "B T D"], Float32[Array, "B D"]]:
  """Runs `h_t = a_t * h_{t-1} + x_t` along axis 1.

  Args:
    x: `[B, T, D]` inputs, float32 or bfloat16.
    a: `[B, T, D]` gates, float32 or bfloat16.
    h0: optional `[B, D]` initial state (float32; zeros when None).
    reverse: run from the last step to the first (`h_last` is then the state
      after step 0).
    impl: one of `IMPLS`; "auto" picks the Pallas kernel of the backend when
      it has one and the associative scan otherwise (`resolve_impl`).
    interpret: run Pallas kernels in interpret mode (CPU testing).
    **kernel_options: block-size overrides forwarded to Pallas kernels.

  Returns:
    `(y [B, T, D] in x.dtype, h_last [B, D] float32)`.
  """
  x, a = jnp.asarray(x), jnp.asarray(a)
  _check_inputs(x, a, h0)
  name = resolve_impl(impl)
  if h0 is None:
    h0 = jnp.zeros((x.shape[0], x.shape[2]), jnp.float32)
  h0 = jnp.asarray(h0, jnp.float32)

  def local_scan(x, a, h0):
    return run_impl(
        name, x, a, h0, reverse=reverse, interpret=interpret, **kernel_options
    )

  layout = sharded.active_layout(*x.shape)
  if layout is None:
    return local_scan(x, a, h0)
  return sharded.linear_scan(
      remat_under_shard_map(name, local_scan),
      x, a, h0, reverse=reverse, layout=layout,
  )


def remat_under_shard_map(name: str, fn: ScanFn) -> ScanFn:
  """`fn`, which runs implementation `name`, made safe to differentiate
  inside `shard_map` on CPU.

  The VJP of `lax.associative_scan` saves zero-size slices, and XLA:CPU
  (jax 0.11.2) crashes compiling zero-size arrays passed from a forward
  `shard_map` to its backward one. Recomputing the associative scan in the
  backward passes only its inputs across. The other impls save no empty
  arrays and run unchanged.
  """
  return jax.checkpoint(fn) if name == "associative" else fn


def run_impl(
    name: str,
    x: jax.Array,
    a: jax.Array,
    h0: jax.Array,
    *,
    reverse: bool = False,
    interpret=False,
    **kernel_options,
) -> tuple[jax.Array, jax.Array]:
  """Runs the scan of implementation `name` on unsharded operands.

  `h0` must be a float32 `[B, D]` array; no sharding context is consulted.
  """
  fn = KERNELS[name].linear_scan
  if name.startswith("pallas"):
    y, h_last = fn(
        x, a, h0, reverse=reverse, interpret=interpret, **kernel_options
    )
  else:
    y, h_last = fn(x, a, h0, reverse=reverse)
  return y.astype(x.dtype), h_last.astype(jnp.float32)
