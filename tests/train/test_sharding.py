"""Mesh construction, logical-axis rules, divisibility checks, and the same
losses under data, FSDP x tensor and sequence parallelism (8 CPU devices)."""

import json
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from recurrentgemma_jax import sharding
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.model import Griffin
from recurrentgemma_jax.nn import logical
from recurrentgemma_jax.training import config as config_lib

import train_testlib

RULES = sharding.DEFAULT_RULES


def test_mesh_shape_resolves_the_free_axis():
  assert sharding.mesh_shape({"data": -1}, 8) == (8, 1, 1, 1)
  assert sharding.mesh_shape({"data": 1, "fsdp": -1, "tensor": 2}, 8) == (
      1, 4, 2, 1)
  assert sharding.mesh_shape({"fsdp": 4, "tensor": 2}, 8) == (1, 4, 2, 1)


@pytest.mark.parametrize("sizes, match", [
    ({"data": 3}, "multiply to 3 but there are 8"),
    ({"data": -1, "tensor": 3}, "does not divide the 8 devices"),
    ({"data": -1, "fsdp": -1}, "only one axis may be -1"),
    ({"model": 2}, "unknown axes"),
])
def test_mesh_shape_errors(sizes, match):
  with pytest.raises(ConfigError, match=match):
    sharding.mesh_shape(sizes, 8)


def test_logical_to_mesh_rules():
  assert logical.logical_to_mesh(("vocab", "embed"), RULES) == P(
      "tensor", "fsdp")
  assert logical.logical_to_mesh(("batch", "length"), RULES) == P(
      ("data", "fsdp"), "sequence")
  assert logical.logical_to_mesh(("norm",), RULES) == P(None)
  # Activations: rows over data x fsdp, time over sequence, width whole.
  assert logical.logical_to_mesh(logical.RESIDUAL_AXES, RULES) == P(
      ("data", "fsdp"), "sequence", None)
  assert logical.logical_to_mesh(logical.LOGITS_AXES, RULES) == P(
      ("data", "fsdp"), "sequence", "tensor")
  # A mesh axis is used once per array: the second "mlp" stays replicated.
  assert logical.logical_to_mesh(("mlp", "mlp"), RULES) == P("tensor", None)
  with pytest.raises(ConfigError, match="no rule"):
    logical.logical_to_mesh(("nope",), RULES)


def _abstract(config):
  model = nnx.eval_shape(lambda: Griffin(config, rngs=nnx.Rngs(0)))
  _, state = nnx.split(model, nnx.Param)
  return state.to_pure_dict(), sharding.logical_axes(state)


def test_every_parameter_has_logical_axes_and_a_sharding():
  config = config_lib.build_model_config(
      train_testlib.tiny_config().model, vocab_size=32)
  shapes, axes = _abstract(config)
  flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
  assert len(flat_axes) == len(jax.tree.leaves(shapes))
  for ax, leaf in zip(flat_axes, jax.tree.leaves(shapes)):
    assert len(ax) == len(leaf.shape)
  assert axes["embedder"]["input_embedding"] == ("vocab", "embed")


def test_check_model_fits_mesh_names_the_problem():
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  config = config_lib.build_model_config(
      train_testlib.tiny_config().model, vocab_size=32)
  shapes, axes = _abstract(config)
  sharding.check_model_fits_mesh(config, shapes, axes, mesh)  # fits
  tensor4 = jax.sharding.AbstractMesh((1, 1, 4, 1), sharding.MESH_AXES)
  with pytest.raises(ConfigError, match="num_heads=2 is not divisible by "
                     "the tensor axis"):
    sharding.check_model_fits_mesh(config, shapes, axes, tensor4)
  config = config.replace(num_heads=4, lru_num_heads=4, vocab_size=30)
  shapes, axes = _abstract(config)
  with pytest.raises(ConfigError, match="input_embedding.*vocab=30"):
    sharding.check_model_fits_mesh(config, shapes, axes, tensor4)


PARALLEL_RUNS = textwrap.dedent("""
    import json, sys
    import jax
    from recurrentgemma_jax import sharding
    from recurrentgemma_jax.training import loop
    import train_testlib

    meshes = json.loads(sys.argv[1])
    out = {}
    for name, (devices, mesh) in meshes.items():
      config = train_testlib.tiny_config(
          total_steps=10, checkpoint_every=10, eval_every=10, log_every=1,
          batch_size=8, seq_len=32, **{"model.num_heads": 4,
                                       "model.lru_num_heads": 4})
      config.mesh.update(mesh)
      make = sharding.make_mesh
      loop.sharding.make_mesh = (
          lambda s, _=None, n=devices: make(s, jax.devices()[:n]))
      workdir = f"{sys.argv[2]}/{name}"
      loop.train(config, workdir)
      loop.sharding.make_mesh = make
      out[name] = [v[-1] for _, v in sorted(train_testlib.losses(workdir).items())]
    print("LOSSES", json.dumps(out))
""")


def _parallel_losses(tmp_path, meshes):
  out = _run_on_8_devices(PARALLEL_RUNS, "LOSSES", 900, json.dumps(meshes),
                          str(tmp_path))
  return {k: np.array(v) for k, v in out.items()}


def _run_on_8_devices(script: str, tag: str, timeout: int, *args):
  """Runs `script` in a Python with 8 CPU devices; returns the JSON it
  printed after `tag` on one line."""
  result = train_testlib.python(
      "-c", script, *args,
      env=train_testlib.env(
          XLA_FLAGS="--xla_force_host_platform_device_count=8",
          PYTHONPATH=f"{train_testlib.REPO}:{train_testlib.REPO}/tests/train"),
      timeout=timeout,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith(tag)][0]
  return json.loads(line[len(tag):])


# float32 compute; the shardings only change reduction orders, so losses
# agree to float32 rounding (observed: < 2e-6) after 10 Adam steps.
TOLERANCE = 1e-5


def test_same_losses_with_data_fsdp_tensor_parallelism_and_one_device(
    tmp_path):
  losses = _parallel_losses(tmp_path, {
      "one": [1, {"data": 1}],
      "data8": [8, {"data": 8}],
      "fsdp4_tensor2": [8, {"data": 1, "fsdp": 4, "tensor": 2}],
  })
  assert len(losses["one"]) == 10
  assert losses["one"][-1] < losses["one"][0]  # it trains
  for name in ("data8", "fsdp4_tensor2"):
    np.testing.assert_allclose(losses[name], losses["one"], rtol=0,
                               atol=TOLERANCE, err_msg=name)


@pytest.mark.slow
def test_same_losses_with_sequence_parallelism(tmp_path):
  losses = _parallel_losses(tmp_path, {
      "one": [1, {"data": 1}],
      "data2_tensor2_sequence2": [8, {"data": 2, "tensor": 2,
                                      "sequence": 2}],
  })
  np.testing.assert_allclose(losses["data2_tensor2_sequence2"],
                             losses["one"], rtol=0, atol=TOLERANCE)


FULL_BATCH_COLLECTIVES = textwrap.dedent("""
    import json, re, sys
    from recurrentgemma_jax.nn import logical
    from recurrentgemma_jax.training import aot
    from recurrentgemma_jax.training import config as config_lib
    from recurrentgemma_jax.training import loop
    import train_testlib

    B, T = 8, 40  # T = 40: no parameter has a dimension pair (8, 40)
    if sys.argv[1] == "off":  # the model as before the constraints
      logical.constrain = lambda x, axes: x
    config = config_lib.validate(train_testlib.tiny_config(
        batch_size=B, seq_len=T, **{"model.num_heads": 4,
                                    "model.lru_num_heads": 4,
                                    "model.vocab_size": 512}))
    config.unlock()
    config.mesh.update(data=1, fsdp=8)
    program = loop.build_program(config, loop.experiment_mesh(config),
                                 config_lib.build_model_config(config.model))
    hlo = loop.jit_train_step(program).lower(
        program.spec.abstract, aot.abstract_batch(program)).compile().as_text()
    # Collectives moving a float activation of the whole global batch.
    found = re.findall(
        r"= (?:f32|bf16)\\[(?:\\d+,)*8,40(?:,\\d+)*\\][^ ]* "
        r"(all-gather|all-reduce|reduce-scatter|all-to-all)\\(", hlo)
    print("FOUND", json.dumps(found))
""")


@pytest.mark.parametrize("constraints", ["on", "off"])
def test_activations_stay_batch_sharded_under_fsdp(constraints):
  # fsdp splits parameters along `embed` and the batch over the same mesh
  # axis. Without the activation constraints XLA copies the embedding
  # table's split onto the residual stream and moves whole-batch
  # activations (the 345 GiB of docs/tpu.md row 3 on a TPU); with them
  # only parameters (and int32 token ids) are gathered.
  found = _run_on_8_devices(FULL_BATCH_COLLECTIVES, "FOUND", 600, constraints)
  if constraints == "on":
    assert found == []
  else:  # the test sees the problem when it is there
    assert found
