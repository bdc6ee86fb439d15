"""Schedule, weight-decay mask, masked loss / z-loss, and the train step
(gradient accumulation equals the one-shot step)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recurrentgemma_jax import sharding
from recurrentgemma_jax.training import config as config_lib
from recurrentgemma_jax.training import loss as loss_lib
from recurrentgemma_jax.training import optimizer as optimizer_lib
from recurrentgemma_jax.training import state as state_lib
from recurrentgemma_jax.training import step as step_lib

import train_testlib


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_schedule_warms_up_then_decays(kind):
  config = train_testlib.tiny_config(total_steps=100, warmup_steps=10,
                                     learning_rate=1.0, min_lr_ratio=0.1,
                                     lr_schedule=kind)
  schedule = optimizer_lib.learning_rate_schedule(config)
  np.testing.assert_allclose(schedule(0), 0.0)
  np.testing.assert_allclose(schedule(5), 0.5)
  np.testing.assert_allclose(schedule(10), 1.0)
  final = {"cosine": 0.1, "linear": 0.1, "constant": 1.0}[kind]
  np.testing.assert_allclose(schedule(100), final, rtol=1e-6)
  if kind == "cosine":  # halfway through the decay: (1 + 0.1) / 2
    np.testing.assert_allclose(schedule(55), 0.55, rtol=1e-5)


def test_decay_mask_excludes_norms_biases_lambda_and_embeddings():
  config = train_testlib.tiny_config()
  model_config = config_lib.build_model_config(config.model, vocab_size=32)
  tx = optimizer_lib.make_optimizer(config)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  params = state_lib.state_spec(model_config, tx, mesh).abstract["params"]
  mask = optimizer_lib.decay_mask(params, config.optimizer.no_decay)
  block = mask["blocks"][0]
  assert block["recurrent_block"]["linear_x"]["kernel"]
  assert not block["recurrent_block"]["linear_x"]["bias"]
  assert not block["recurrent_block"]["rg_lru"]["a_param"]
  assert block["recurrent_block"]["rg_lru"]["a_gate"]["w"]
  assert not block["recurrent_block"]["rg_lru"]["a_gate"]["b"]
  assert not block["temporal_pre_norm"]["scale"]
  assert block["mlp_block"]["ffw_up"]["w"]
  assert not block["mlp_block"]["ffw_up"]["b"]
  assert not mask["embedder"]["input_embedding"]
  assert not mask["final_norm"]["scale"]


def test_weight_decay_is_decoupled_and_masked():
  """With zero gradients, AdamW moves exactly the decayed parameters by
  lr * wd * p (Adam's own step is 0)."""
  config = train_testlib.tiny_config(learning_rate=0.1, warmup_steps=0)
  config.optimizer.weight_decay = 0.5
  config.optimizer.grad_clip = 0.0
  tx = optimizer_lib.make_optimizer(config)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params),
                         tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.05)
  np.testing.assert_allclose(updates["bias"], 0.0)


def test_token_stats_match_numpy_and_ignore_masked_tokens():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
  targets = rng.integers(0, 5, (2, 3))
  mask = np.array([[1, 1, 0], [0, 1, 1]], np.float32)
  stats = loss_lib.token_stats(jnp.asarray(logits, jnp.bfloat16),
                               jnp.asarray(targets), jnp.asarray(mask))
  lf = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(np.float32))
  log_z = np.log(np.exp(lf).sum(-1))
  nll = log_z - np.take_along_axis(lf, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(stats["loss"], (nll * mask).sum(), rtol=1e-5)
  np.testing.assert_allclose(stats["z_loss"], (log_z**2 * mask).sum(),
                             rtol=1e-5)
  np.testing.assert_allclose(stats["tokens"], 4.0)
  correct = (lf.argmax(-1) == targets) * mask
  np.testing.assert_allclose(stats["correct"], correct.sum())
  # Changing a masked position's logits changes nothing.
  logits2 = logits.copy()
  logits2[0, 2] += 100.0
  stats2 = loss_lib.token_stats(jnp.asarray(logits2, jnp.bfloat16),
                                jnp.asarray(targets), jnp.asarray(mask))
  for key in loss_lib.STATS:
    np.testing.assert_allclose(stats2[key], stats[key])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_token_stats_gradient_matches_float64(dtype):
  # The hand-written backward of `log_z_and_target_logit` against the
  # float64 softmax gradient, with the z-loss term and fractional weights;
  # V=37 and targets at both ends of the vocabulary.
  rng = np.random.default_rng(5)
  b, t, v, z = 3, 7, 37, 0.3
  logits = jnp.asarray(rng.normal(size=(b, t, v)) * 3, dtype)
  targets = rng.integers(0, v, (b, t))
  targets[0, :2] = (0, v - 1)
  weights = rng.uniform(0, 2, (b, t)).astype(np.float32)
  weights[1, 3] = 0.0

  def objective(x):
    stats = loss_lib.token_stats(x, jnp.asarray(targets), jnp.asarray(weights))
    return stats["loss"] + z * stats["z_loss"]

  grad = jax.jit(jax.grad(objective))(logits)
  assert grad.dtype == dtype
  x = np.asarray(logits.astype(jnp.float32), np.float64)
  log_z = np.log(np.exp(x).sum(-1, keepdims=True))
  probs = np.exp(x - log_z)
  onehot = np.eye(v)[targets]
  want = weights[..., None] * (probs - onehot + 2 * z * log_z * probs)
  tol = 1e-6 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(np.asarray(grad, np.float64), want,
                             atol=tol * np.abs(want).max(), rtol=0)
  assert np.all(np.asarray(grad[1, 3], np.float64) == 0)  # weight 0
  # The value is the float64 one too.
  nll = (log_z[..., 0] - np.take_along_axis(x, targets[..., None], -1)[..., 0])
  np.testing.assert_allclose(
      float(objective(logits)),
      (weights * (nll + z * log_z[..., 0] ** 2)).sum(), rtol=1e-5)


def test_token_stats_gradient_equals_autodiff_of_the_formula():
  # Same gradient as differentiating the plain float32 formula.
  rng = np.random.default_rng(6)
  logits = jnp.asarray(rng.normal(size=(2, 5, 11)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 11, (2, 5)))

  def plain(x):
    log_z = jax.nn.logsumexp(x, -1)
    tl = jnp.take_along_axis(x, targets[..., None], -1)[..., 0]
    return jnp.sum(log_z - tl) + 0.1 * jnp.sum(log_z**2)

  def ours(x):
    log_z, tl = loss_lib.log_z_and_target_logit(x, targets)
    return jnp.sum(log_z - tl) + 0.1 * jnp.sum(log_z**2)

  np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(plain)(logits),
                             rtol=1e-5, atol=1e-7)


@functools.cache
def _one_step(grad_accum_steps, z_loss=0.0):
  config = train_testlib.tiny_config(grad_accum_steps=grad_accum_steps)
  config.loss.z_loss = z_loss
  model_config = config_lib.build_model_config(config.model, vocab_size=32)
  tx = optimizer_lib.make_optimizer(config)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  spec = state_lib.state_spec(model_config, tx, mesh)
  state = state_lib.init_train_state(spec, tx, seed=0)
  rng = np.random.default_rng(1)
  batch = {
      "inputs": rng.integers(0, 32, (8, 16)).astype(np.int32),
      "targets": rng.integers(0, 32, (8, 16)).astype(np.int32),
      "segment_pos": np.tile(np.arange(16, dtype=np.int32), (8, 1)),
      # Uneven real-token counts per row: the mean must be over tokens.
      "mask": (rng.random((8, 16)) < np.linspace(0.2, 1, 8)[:, None]
               ).astype(np.float32),
  }
  step = jax.jit(step_lib.make_train_step(
      spec.graphdef, tx, optimizer_lib.learning_rate_schedule(config),
      grad_accum_steps=grad_accum_steps, z_loss=z_loss))
  return step(state, batch)


def test_gradient_accumulation_equals_the_one_shot_step():
  state1, metrics1 = _one_step(1)
  state4, metrics4 = _one_step(4)
  for key in ("loss", "accuracy", "tokens", "grad_norm"):
    np.testing.assert_allclose(metrics4[key], metrics1[key], rtol=2e-5)
  for a, b in zip(jax.tree.leaves(state1["params"]),
                  jax.tree.leaves(state4["params"])):
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)
  assert int(state4["step"]) == 1


def test_z_loss_adds_to_the_gradient_not_to_the_reported_loss():
  _, plain = _one_step(1)
  _, with_z = _one_step(1, z_loss=1e-2)
  np.testing.assert_allclose(with_z["loss"], plain["loss"], rtol=1e-6)
  assert float(with_z["z_loss"]) > 0
  assert abs(float(with_z["grad_norm"]) - float(plain["grad_norm"])) > 1e-4


def test_optimizer_state_follows_parameter_shardings():
  config = train_testlib.tiny_config()
  model_config = config_lib.build_model_config(config.model, vocab_size=32)
  tx = optimizer_lib.make_optimizer(config)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  spec = state_lib.state_spec(model_config, tx, mesh)
  adam = [s for s in jax.tree.leaves(
      spec.shardings["opt_state"],
      is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)][0]
  assert jax.tree.structure(adam.mu) == jax.tree.structure(
      spec.param_shardings)
  assert (adam.mu["embedder"]["input_embedding"]
          == spec.param_shardings["embedder"]["input_embedding"])
