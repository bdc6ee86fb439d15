"""Sharded scans on 8 simulated CPU devices, against the unsharded result.

XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before JAX
initialises its backends, so this file runs in its own process: its name does
not match `test_*.py`, and `test_sharded.py` runs it as

    python -m pytest tests/kernels/sharded_cases.py

with the flag set (it sets the flag itself too, so that command also works
on its own). Every layout (batch, feature, sequence with 2/4/8 shards, and
mixes) must reproduce the unsharded outputs and gradients.
"""

import os

os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""),
    "--xla_force_host_platform_device_count=8",
]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import contextlib  # noqa: E402
import functools  # noqa: E402

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

import pallas_kernels  # noqa: E402

if jax.device_count() != 8:
  raise RuntimeError(
      "sharded_cases.py needs 8 CPU devices: run it in its own process "
      "(JAX was initialised before XLA_FLAGS could be set)"
  )

B, T, D = 8, 64, 16
# Axis names the model uses; "other" stands for mesh axes that the scan
# does not shard over (the kernel then runs replicated along them).
SHARDING = dict(
    batch_axes=("data", "fsdp"), feature_axes="tensor", sequence_axis="sequence"
)


def _mesh(shape, names):
  return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


def _assert_close(got, want, tol=2e-5):
  """Every leaf within `tol` of the largest |value| of its reference."""
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    scale = max(float(jnp.abs(w).max()), 1e-6)
    chex.assert_trees_all_close(g / scale, w / scale, atol=tol, rtol=0)


def _run_sharded(fn, args, mesh, set_mesh=False, **sharding):
  """Runs `jit(fn)` under `scan_sharding`; checks that it used shard_map.

  With `set_mesh`, the mesh comes from `jax.set_mesh` rather than from the
  `scan_sharding` argument; `sharding` overrides entries of SHARDING.
  """
  with contextlib.ExitStack() as stack:
    if set_mesh:
      stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(
        pallas_kernels.scan_sharding(
            None if set_mesh else mesh, **(SHARDING | sharding)
        )
    )
    traced = jax.jit(fn).trace(*args)
    assert "shard_map" in str(traced.jaxpr)
    return traced.lower().compile()(*args)


# ----------------------------------------------------------------------------
# linear_scan


def _scan_inputs(b=B):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((b, T, D)), jnp.float32)
  a = jnp.asarray(rng.uniform(0.6, 0.999, (b, T, D)), jnp.float32)
  a = a.at[:, T // 3].set(0.0)  # An exact zero gate, as at a document start.
  h0 = jnp.asarray(rng.standard_normal((b, D)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((b, T, D)), jnp.float32)
  dh_last = jnp.asarray(rng.standard_normal((b, D)), jnp.float32)
  return (x, a, h0), (dy, dh_last)


def _scan_value_and_grads(impl, reverse, args, cts):
  kwargs = {"interpret": True} if impl == "pallas_tpu" else {}

  def run(x, a, h0):
    (y, h_last), vjp = jax.vjp(
        lambda x, a, h0: pallas_kernels.linear_scan(
            x, a, h0, reverse=reverse, impl=impl, **kwargs
        ),
        x, a, h0,
    )
    return y, h_last, vjp(cts)

  return run


@functools.cache
def _scan_reference(reverse, b=B):
  args, cts = _scan_inputs(b)
  return jax.jit(_scan_value_and_grads("sequential", reverse, args, cts))(*args)


# The sharding logic is the same for every impl: most layouts run the
# sequential scan (the cheapest to compile), the Pallas kernel (interpret
# mode) runs in the mixed layout and the associative scan (rematerialised
# under shard_map) in one.
@pytest.mark.parametrize(
    "shape,names,impl,reverse",
    [
        ((8,), ("data",), "sequential", False),
        ((8,), ("tensor",), "sequential", True),
        ((2, 4), ("sequence", "other"), "sequential", False),
        ((4, 2), ("sequence", "other"), "sequential", True),
        ((8,), ("sequence",), "sequential", False),
        ((2, 4), ("fsdp", "sequence"), "associative", True),
        ((2, 2, 2), ("data", "tensor", "sequence"), "pallas_tpu", True),
    ],
)
def test_linear_scan_layouts(shape, names, impl, reverse):
  args, cts = _scan_inputs()
  fn = _scan_value_and_grads(impl, reverse, args, cts)
  got = _run_sharded(fn, args, _mesh(shape, names))
  _assert_close(got, _scan_reference(reverse))


def test_indivisible_batch_is_replicated():
  # B = 6 does not split over 4 data shards: the batch is replicated there
  # while T still splits over the 2 sequence shards. (The mesh comes from
  # jax.set_mesh here.)
  args, cts = _scan_inputs(b=6)
  fn = _scan_value_and_grads("sequential", False, args, cts)
  got = _run_sharded(
      fn, args, _mesh((4, 2), ("data", "sequence")), set_mesh=True
  )
  _assert_close(got, _scan_reference(False, b=6))


def test_sequence_over_two_mesh_axes():
  # T splits over ("sequence", "context") in row-major order: 8 shards.
  args, cts = _scan_inputs()
  fn = _scan_value_and_grads("sequential", True, args, cts)
  got = _run_sharded(
      fn, args, _mesh((2, 4), ("sequence", "context")),
      sequence_axis=("sequence", "context"),
  )
  _assert_close(got, _scan_reference(True))


def test_no_context_and_manual_axes_run_unsharded():
  args, cts = _scan_inputs()
  fn = _scan_value_and_grads("sequential", False, args, cts)
  assert "shard_map" not in str(jax.make_jaxpr(fn)(*args))
  mesh = _mesh((8,), ("data",))
  # Inside the caller's own shard_map the data axis is already manual.
  in_user_shard_map = jax.shard_map(
      lambda x, a, h0: pallas_kernels.linear_scan(x, a, h0, impl="sequential"),
      mesh=mesh,
      in_specs=jax.sharding.PartitionSpec("data"),
      out_specs=jax.sharding.PartitionSpec("data"),
  )
  with pallas_kernels.scan_sharding(mesh, **SHARDING):
    jaxpr = str(jax.make_jaxpr(in_user_shard_map)(*args))
    got = jax.jit(in_user_shard_map)(*args)
  assert jaxpr.count("shard_map") == 1
  _assert_close(got, _scan_reference(False)[:2])


# ----------------------------------------------------------------------------
# rg_lru


def _rg_lru_inputs():
  rng = np.random.default_rng(1)
  normal = lambda: jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
  x, gate_x, gate_a = normal(), normal(), normal()
  a_param = jnp.asarray(rng.uniform(-1.0, 3.0, D), jnp.float32)
  reset = rng.uniform(size=(B, T)) < 0.05
  reset[::2, 0] = True
  reset[1, T // 2] = True  # A document starts exactly at a shard boundary.
  h0 = jnp.asarray(rng.standard_normal((B, D)), jnp.float32)
  dy = normal()
  dh_last = jnp.asarray(rng.standard_normal((B, D)), jnp.float32)
  return (x, gate_x, gate_a, a_param, jnp.asarray(reset), h0), (dy, dh_last)


def _rg_lru_value_and_grads(impl, fused, cts):
  kwargs = {"interpret": True} if impl == "pallas_tpu" else {}

  def run(x, gate_x, gate_a, a_param, reset, h0):
    out, vjp = jax.vjp(
        lambda x, gx, ga, lam, h0: pallas_kernels.rg_lru(
            x, gx, ga, lam, reset, h0, impl=impl, fused=fused, **kwargs
        ),
        x, gate_x, gate_a, a_param, h0,
    )
    return out, vjp(cts)

  return run


@functools.cache
def _rg_lru_reference():
  args, cts = _rg_lru_inputs()
  return jax.jit(_rg_lru_value_and_grads("sequential", False, cts))(*args)


@pytest.mark.parametrize(
    "shape,names,impl,fused",
    [
        ((2, 2, 2), ("data", "tensor", "sequence"), "pallas_tpu", True),
        ((8,), ("sequence",), "sequential", False),
    ],
)
def test_rg_lru_layouts(shape, names, impl, fused):
  args, cts = _rg_lru_inputs()
  fn = _rg_lru_value_and_grads(impl, fused, cts)
  got = _run_sharded(fn, args, _mesh(shape, names))
  _assert_close(got, _rg_lru_reference())
