"""Activation sharding constraints (`logical.constrain`): traced only under
`logical.activation_sharding` / `sharding.model_sharding` on a multi-device
mesh, with the rules' layout; plain single-device use traces none."""

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import AbstractMesh, AxisType
from jax.sharding import PartitionSpec as P

import recurrentgemma_jax as rg
from recurrentgemma_jax import sharding
from recurrentgemma_jax.nn import logical

BATCH = ("data", "fsdp")


def _model():
  config = rg.GriffinConfig(
      vocab_size=40, width=16, mlp_expanded_width=32, num_heads=2,
      block_types=("recurrent", "attention", "recurrent"),
      attention_window_size=6,
  )
  return rg.Griffin(config, rngs=nnx.Rngs(0))


def _mesh(data, fsdp, tensor, sequence):
  return AbstractMesh((data, fsdp, tensor, sequence), sharding.MESH_AXES,
                      axis_types=(AxisType.Auto,) * 4)


def _constraints(model, batch=4, time=8):
  """(spec, shape) of every sharding constraint in the forward's jaxpr.

  A fresh function per call: jax caches traces by function, and the
  constraints are decided when tracing.
  """
  graphdef, state = nnx.split(model)

  def forward(state, tokens):
    return nnx.merge(graphdef, state)(tokens, jnp.zeros_like(tokens))

  tokens = jnp.zeros((batch, time), jnp.int32)
  jaxpr = jax.make_jaxpr(forward)(state, tokens).jaxpr
  return [(e.params["sharding"].spec, e.outvars[0].aval.shape)
          for e in jaxpr.eqns if e.primitive.name == "sharding_constraint"]


def test_no_constraint_without_a_mesh():
  assert not _constraints(_model())


def test_no_constraint_on_a_one_device_mesh():
  with logical.activation_sharding(_mesh(1, 1, 1, 1), sharding.DEFAULT_RULES):
    assert not _constraints(_model())


def test_residual_stream_mlp_and_logits_are_pinned():
  with logical.activation_sharding(_mesh(2, 2, 2, 1), sharding.DEFAULT_RULES):
    found = _constraints(_model())
  residual = P(BATCH, "sequence", None)
  # Embeddings, then per block: input, after the temporal mix, output.
  assert found.count((residual, (4, 8, 16))) == 1 + 3 * 3
  # Per block: the MLP input broadcast [2, B, T, D] and its up [2, B, T, F].
  assert found.count((P(None, BATCH, "sequence", None), (2, 4, 8, 16))) == 3
  assert found.count((P(None, BATCH, "sequence", "tensor"), (2, 4, 8, 32))) == 3
  assert found[-1] == (P(BATCH, "sequence", "tensor"), (4, 8, 40))
  assert len(found) == 17


def test_dimensions_a_mesh_axis_does_not_divide_stay_replicated():
  # One row (e.g. sampling) on a data x fsdp = 4 mesh; T = 1 (decoding)
  # with a sequence axis of 2.
  with logical.activation_sharding(_mesh(2, 2, 1, 2), sharding.DEFAULT_RULES):
    found = _constraints(_model(), batch=1, time=1)
  assert found and all(spec[:2] == (None, None) or spec[1:3] == (None, None)
                       for spec, _ in found)


def test_constrain_is_the_identity_outside_a_context():
  x = jnp.ones((2, 3, 4))
  assert logical.constrain(x, logical.RESIDUAL_AXES) is x
