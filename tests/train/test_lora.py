"""LoRA: fresh adapters leave the model unchanged, training moves only them,
merging is exact, checkpoints hold only them (and a digest of the base),
resuming is exact, bad configs and another base are refused, and the
adapters shard like their weights (8 CPU devices)."""

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import recurrentgemma_jax as rg
from recurrentgemma_jax import sharding
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.nn import logical
from recurrentgemma_jax.nn import lora as lora_lib
from recurrentgemma_jax.training import checkpointing
from recurrentgemma_jax.training import config as config_lib
from recurrentgemma_jax.training import flops
from recurrentgemma_jax.training import frozen as frozen_lib
from recurrentgemma_jax.training import loop
from recurrentgemma_jax.training import optimizer as optimizer_lib
from recurrentgemma_jax.training import state as state_lib
from recurrentgemma_jax.training import step as step_lib
from recurrentgemma_jax.training.workdir import WorkdirError

import train_testlib

MODEL = rg.GriffinConfig(
    vocab_size=40, width=16, mlp_expanded_width=32, num_heads=2,
    block_types=("recurrent", "attention", "recurrent"),
    attention_window_size=6,
)


def _inputs(batch=2, time=20, vocab=40, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (batch, time)).astype(np.int32)
  # Two packed documents per row.
  pos = np.concatenate([np.arange(time // 2), np.arange(time - time // 2)])
  return tokens, np.tile(pos.astype(np.int32), (batch, 1))


def _with_random_b(model, seed=3):
  """Nonzero B everywhere (a trained adapter), in place."""
  adapters = nnx.state(model, nnx.LoRAParam)
  keys = iter(jax.random.split(jax.random.key(seed), 1000))
  nnx.update(model, jax.tree.map(
      lambda x: 0.3 * jax.random.normal(next(keys), x.shape, x.dtype),
      adapters))
  return model


@pytest.mark.parametrize("targets, kinds", [
    ("all", {"attention_block", "mlp_block", "recurrent_block"}),
    ("attention", {"attention_block"}),
    ("mlp+recurrent", {"mlp_block", "recurrent_block"}),
    (r"proj_q/kernel$", {"attention_block"}),
])
def test_fresh_adapters_leave_the_model_exactly_unchanged(targets, kinds):
  tokens, pos = _inputs()
  model = rg.Griffin(MODEL, rngs=nnx.Rngs(0))
  base = model(tokens, pos)
  lora_lib.add_lora(model, lora_lib.LoRAConfig(rank=4, targets=targets),
                    rngs=nnx.Rngs(1))
  adapted = lora_lib.adapted_paths(model)
  assert adapted and {p.split("/")[2] for p in adapted} == kinds
  if targets == "all":  # every projection of the three kinds
    assert adapted == lora_lib.projection_paths(model)
    assert "blocks/1/mlp_block/ffw_up/w" in adapted
  adapters = nnx.state(model, nnx.LoRAParam).to_pure_dict()
  for path, x in zip(frozen_lib.paths(adapters), jax.tree.leaves(adapters)):
    assert np.any(x != 0) == path.endswith("lora_a"), path  # B = 0
  np.testing.assert_array_equal(model(tokens, pos), base)


def test_adapters_carry_their_weights_logical_axes():
  model = lora_lib.add_lora(rg.Griffin(MODEL, rngs=nnx.Rngs(0)),
                            lora_lib.LoRAConfig(rank=4), rngs=nnx.Rngs(1))
  axes = sharding.logical_axes(nnx.state(model, nnx.Param))
  q = axes["blocks"][1]["attention_block"]["proj_q"]
  assert q["kernel"] == ("embed", "q_heads")
  assert q["lora"] == {"lora_a": ("embed", "lora_rank"),
                       "lora_b": ("lora_rank", "q_heads")}
  up = axes["blocks"][0]["mlp_block"]["ffw_up_lora"]
  assert up == {"lora_a": (None, "embed", "lora_rank"),
                "lora_b": (None, "lora_rank", "mlp")}
  # A splits like the weight's input, B like its output, the rank whole.
  P = jax.sharding.PartitionSpec
  rules = sharding.DEFAULT_RULES
  assert logical.logical_to_mesh(q["lora"]["lora_a"], rules) == P("fsdp", None)
  assert logical.logical_to_mesh(q["lora"]["lora_b"], rules) == P(
      None, "tensor")


def test_merge_equals_the_unmerged_model():
  tokens, pos = _inputs()
  model = lora_lib.add_lora(rg.Griffin(MODEL, rngs=nnx.Rngs(0)),
                            lora_lib.LoRAConfig(rank=4, alpha=8.0),
                            rngs=nnx.Rngs(1))
  base = model(tokens, pos)
  _with_random_b(model)
  unmerged = model(tokens, pos)
  assert np.abs(unmerged - base).max() > 0.1  # the adapters matter
  merged = lora_lib.merge_lora(model)
  np.testing.assert_allclose(merged(tokens, pos), unmerged, rtol=0,
                             atol=2e-5)
  plain = nnx.state(rg.Griffin(MODEL, rngs=nnx.Rngs(0)),
                    nnx.Param).to_pure_dict()
  got = nnx.state(merged, nnx.Param).to_pure_dict()
  assert jax.tree.structure(got) == jax.tree.structure(plain)
  assert not lora_lib.adapted_paths(merged)
  rg.to_official(merged)  # exports like a plain model
  np.testing.assert_array_equal(model(tokens, pos), unmerged)  # a copy


def _loss_and_grads(remat, capsys=None, fused=None):
  """Loss and adapter gradients of a LoRA model (nonzero B) remat'ed with
  `remat`; with `capsys`, also the shapes of the residuals it saves.
  `fused` overrides the adapters' choice of one matmul or two."""
  from jax import ad_checkpoint  # pylint: disable=g-import-not-at-top

  model = _with_random_b(lora_lib.add_lora(
      rg.Griffin(MODEL.replace(remat=remat), rngs=nnx.Rngs(0)),
      lora_lib.LoRAConfig(rank=4), rngs=nnx.Rngs(1)))
  for _, module in nnx.iter_modules(model):
    if isinstance(module, lora_lib.LoRA) and fused is not None:
      module.fused = fused
  graphdef, adapters, base = nnx.split(model, nnx.LoRAParam, nnx.Param)
  base = base.to_pure_dict()
  tokens, pos = _inputs()

  def loss(adapters):
    params = frozen_lib.combine(base, adapters)
    return jnp.mean(nnx.merge(graphdef, params)(tokens, pos) ** 2)

  adapters = adapters.to_pure_dict()
  saved = None
  if capsys is not None:
    capsys.readouterr()
    ad_checkpoint.print_saved_residuals(loss, adapters)
    saved = [line.split()[0] for line in capsys.readouterr().out.splitlines()
             if " output of " in line]
  return jax.value_and_grad(loss)(adapters), saved


def test_dots_remat_saves_no_second_activation_per_adapter(capsys):
  """Under remat "dots" each adapted projection is one matmul with its
  update (`LoRA.project`): against two matmuls it saves one `[B, T, out]`
  activation less per adapter and nothing more, with the same gradients."""
  import collections  # pylint: disable=g-import-not-at-top

  (loss, grads), fused = _loss_and_grads("dots", capsys)
  (_, two_grads), two = _loss_and_grads("dots", capsys, fused=False)
  (want_loss, want_grads), _ = _loss_and_grads("none")
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for got in (grads, two_grads):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want_grads)):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
  saved_less = collections.Counter(two) - collections.Counter(fused)
  assert not collections.Counter(fused) - collections.Counter(two)
  model = lora_lib.add_lora(rg.Griffin(MODEL, rngs=nnx.Rngs(0)),
                            lora_lib.LoRAConfig(rank=4), rngs=nnx.Rngs(1))
  # Each block's MLP down projection only feeds the block's output, which
  # the remat boundary saves: neither form keeps its matmul output.
  assert sum(saved_less.values()) == (len(lora_lib.adapted_paths(model))
                                      - len(MODEL.block_types))


def test_dropout_only_inside_dropout_rng_and_replayed_by_its_key():
  tokens, pos = _inputs()
  model = _with_random_b(lora_lib.add_lora(
      rg.Griffin(MODEL, rngs=nnx.Rngs(0)),
      lora_lib.LoRAConfig(rank=4, dropout=0.5), rngs=nnx.Rngs(1)))
  plain = model(tokens, pos)
  with lora_lib.dropout_rng(jax.random.key(0)):
    first = model(tokens, pos)
    again = model(tokens, pos)
  with lora_lib.dropout_rng(jax.random.key(1)):
    other = model(tokens, pos)
  assert np.abs(first - plain).max() > 1e-3
  np.testing.assert_array_equal(first, again)  # the key fixes the masks
  assert np.abs(other - first).max() > 1e-3
  np.testing.assert_array_equal(model(tokens, pos), plain)  # off outside


def _fixed_batch(batch=8, time=16, vocab=32):
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, vocab, (batch, time + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "segment_pos": np.tile(np.arange(time, dtype=np.int32), (batch, 1)),
          "mask": np.ones((batch, time), np.float32)}


@pytest.mark.parametrize("base_dtype", ["", "bfloat16"])
def test_training_moves_only_the_adapters(base_dtype):
  config = config_lib.validate(train_testlib.tiny_config(**{
      "lora.rank": 4, "lora.base_dtype": base_dtype, "learning_rate": 3e-2,
      "warmup_steps": 0, "optimizer.weight_decay": 0.1}))
  model_config = config_lib.build_model_config(config.model, vocab_size=32)
  tx = optimizer_lib.make_optimizer(config)
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  spec = state_lib.state_spec(model_config, tx, mesh,
                              lora=config_lib.lora_config(config),
                              base_dtype=base_dtype or None)
  state = state_lib.init_train_state(spec, tx, seed=0)
  base0 = jax.device_get(spec.frozen(state["params"]))
  adapters0 = jax.device_get(spec.trained(state["params"]))
  # The base is exactly the plain model of the seed (in its storage dtype).
  plain = state_lib.init_train_state(
      state_lib.state_spec(model_config, tx, mesh), tx, seed=0)["params"]
  for a, b in zip(jax.tree.leaves(base0), jax.tree.leaves(plain)):
    want = np.asarray(b).astype(jnp.dtype(base_dtype or "float32"))
    np.testing.assert_array_equal(a, want)
  assert {np.dtype(x.dtype).name for x in jax.tree.leaves(base0)} == {
      base_dtype or "float32"}
  # The optimizer holds moments of the adapters only.
  adam = [s for s in jax.tree.leaves(
      state["opt_state"], is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)][0]
  assert frozen_lib.paths(adam.mu) == frozen_lib.paths(adapters0)
  assert all("lora" in p for p in frozen_lib.paths(adapters0))
  assert state_lib.num_trained(spec) == sum(
      x.size for x in jax.tree.leaves(adapters0))
  assert state_lib.num_trained(spec) < state_lib.num_params(spec) / 4

  step = jax.jit(step_lib.make_train_step(
      spec.graphdef, tx, optimizer_lib.learning_rate_schedule(config),
      trainable=spec.trainable), donate_argnums=(0,))
  batch = _fixed_batch()
  losses = []
  for _ in range(8):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 0.3, losses
  for a, b in zip(jax.tree.leaves(spec.frozen(state["params"])),
                  jax.tree.leaves(base0)):
    np.testing.assert_array_equal(a, b)  # bitwise
  moved = [float(np.abs(np.asarray(a) - b).max()) for a, b in zip(
      jax.tree.leaves(spec.trained(state["params"])),
      jax.tree.leaves(adapters0))]
  assert min(moved) > 0  # every A and B moved


def test_bad_lora_fields_are_refused_by_validate():
  for change, match in [
      ({"lora.rank": -1}, "lora.rank=-1 must be an integer >= 0"),
      ({"lora.alpha": 0.0}, "lora.alpha=0.0 must be a finite number > 0"),
      ({"lora.dropout": 1.0}, r"lora.dropout=1.0 must be .* \[0, 1\)"),
      ({"lora.base_dtype": "float16"}, "lora.base_dtype='float16' is not "
       "one of '' .*float32, bfloat16"),
      ({"lora.targets": ""}, "lora.targets is empty"),
      ({"lora.targets": "proj_(q"}, "lora.targets='proj_\\(q' is neither "
       "presets .* nor a regex"),
  ]:
    config = train_testlib.tiny_config(**{"lora.rank": 4, **change})
    with pytest.raises(ConfigError, match=match):
      config_lib.validate(config)
  with pytest.raises(ConfigError, match="lora.rank=0 must be"):
    lora_lib.LoRAConfig(rank=0)


def test_targets_naming_no_projection_fail_before_the_data(tmp_path,
                                                           monkeypatch):
  def no_data(*_):
    raise AssertionError("the data was read")

  monkeypatch.setattr(loop.pipeline, "make_task", no_data)
  config = train_testlib.tiny_config(**{"lora.rank": 4,
                                        "lora.targets": "embedder"})
  with pytest.raises(ConfigError, match=(
      r"lora.targets='embedder' matches none of the model's 16 projection "
      r"weights, e.g. blocks/0/mlp_block/ffw_down/kernel, .*; presets: ")):
    loop.setup(config, str(tmp_path / "a"))
  hawk = train_testlib.tiny_config(**{"lora.rank": 4,
                                      "lora.targets": "attention"})
  hawk.model.kind = "hawk"
  with pytest.raises(ConfigError, match="'attention' matches none .* "
                     "blocks/0/recurrent_block/linear_out/kernel"):
    loop.setup(hawk, str(tmp_path / "b"))


# LoRA runs of the tiny model: dropout on (its masks must replay on resume),
# two micro-batches and remat (the dropout key inside a scan and remat).
def _lora_config(**overrides):
  return train_testlib.tiny_config(**{
      "lora.rank": 4, "lora.dropout": 0.1, "lora.alpha": 8.0,
      "grad_accum_steps": 2, "model.remat": "dots", "learning_rate": 1e-2,
      **overrides})


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("lora") / "run"
  config = _lora_config()
  result = loop.train(config, str(workdir))
  assert result.step == 6
  return config, workdir


def _stored(workdir, step):
  path = workdir / "checkpoints" / str(step) / "state"
  tree = ocp.PyTreeCheckpointer().metadata(path)
  return getattr(tree, "item_metadata", tree).tree


def test_checkpoints_hold_only_adapters_optimizer_state_and_step(lora_run):
  config, workdir = lora_run
  tree = _stored(workdir, 6)
  assert sorted(tree) == ["base_digest", "opt_state", "params", "step"]
  params = frozen_lib.paths(tree["params"])
  assert params and all("/lora/lora_" in p or "/ffw_up_lora/lora_" in p
                        for p in params)
  exp = loop.setup(config, str(workdir), read_only=True)
  n_base = len(jax.tree.leaves(exp.spec.frozen(exp.spec.abstract["params"])))
  assert tree["base_digest"].shape == (n_base,)
  opt_shapes = [tuple(x.shape) for x in jax.tree.leaves(tree["opt_state"])]
  adapter_shapes = [tuple(x.shape) for x in jax.tree.leaves(
      exp.spec.trained(exp.spec.abstract["params"]))]
  assert sorted(s for s in opt_shapes if s) == sorted(2 * adapter_shapes)


def test_checkpoint_round_trip_and_merged_load(lora_run):
  config, workdir = lora_run
  exp = loop.setup(config, str(workdir), read_only=True)
  state = exp.checkpointer.restore(6, exp.spec.abstract)
  assert int(state["step"]) == 6
  # The base comes back from the seed, bitwise; the adapters were trained.
  base = state_lib.init_base(exp.spec, config.seed)
  for a, b in zip(jax.tree.leaves(exp.spec.frozen(state["params"])),
                  jax.tree.leaves(base)):
    np.testing.assert_array_equal(a, b)
  lora_b = [x for p, x in zip(
      frozen_lib.paths(state["params"]), jax.tree.leaves(state["params"]))
            if p.endswith("lora_b")]
  assert lora_b and all(np.abs(x).max() > 0 for x in lora_b)
  # The sampler's loader gives the plain model with the adapters merged.
  merged, _, step = rg.load_workdir(str(workdir))
  assert step == 6 and not lora_lib.adapted_paths(merged)
  unmerged = nnx.merge(exp.spec.graphdef, state["params"])
  tokens, pos = _inputs(vocab=32)
  np.testing.assert_allclose(merged(tokens, pos), unmerged(tokens, pos),
                             rtol=0, atol=2e-5)
  # Evaluating the checkpoint reproduces the run's final evaluation.
  records = [json.loads(line) for line in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  final = [r for r in records if "eval/loss" in r][-1]
  again = loop.evaluate(config, str(workdir))
  assert again["eval/loss"] == pytest.approx(final["eval/loss"], rel=1e-6)


def test_resumed_lora_run_is_exact(lora_run, tmp_path, monkeypatch, capsys):
  config, reference = lora_run
  workdir = tmp_path / "resumed"
  with monkeypatch.context() as m:  # preempted after step 3
    m.setattr(checkpointing.Checkpointer, "should_stop",
              lambda self, step: step == 3)
    stopped = loop.train(config, str(workdir))
  assert (stopped.step, stopped.preempted) == (3, True)
  result = loop.train(config, str(workdir))
  assert result.step == 6
  # MFU counts two forward passes: the frozen base has no weight gradients.
  forward = flops.forward_flops_per_token(
      config_lib.build_model_config(config.model, 32), config.seq_len)
  out = capsys.readouterr().out
  assert "(0.01M trained: LoRA rank 4)" in out
  assert f"{2 * forward / 1e6:.1f} MFLOP/token" in out
  expected = train_testlib.losses(reference)
  assert train_testlib.losses(workdir) == expected
  exp = loop.setup(config, str(reference), read_only=True)
  a = exp.checkpointer.restore(6, exp.spec.abstract)
  b = checkpointing.Checkpointer(
      str(workdir / "checkpoints"), keep=1, read_only=True,
      frozen=exp.frozen).restore(6, exp.spec.abstract)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_lora_on_released_weights_refuses_another_base(tmp_path):
  from recurrentgemma_jax import official  # pylint: disable=g-import-not-at-top

  config = train_testlib.tiny_config(**{
      "lora.rank": 2, "lora.targets": "attention", "total_steps": 3,
      "eval_batches": 0})
  model_config = config_lib.build_model_config(config.model, 32)
  released = rg.Griffin(model_config, rngs=nnx.Rngs(7))
  ckpt = tmp_path / "released"
  ocp.PyTreeCheckpointer().save(ckpt, official.to_official(released))
  config.init_from.checkpoint = str(ckpt)
  config.init_from.preset = ""
  config.model.logits_soft_cap = 0.0
  config.model.embeddings_scale_by_sqrt_dim = False
  workdir = tmp_path / "run"
  loop.train(config, str(workdir))
  exp = loop.setup(config, str(workdir), read_only=True)
  state = exp.checkpointer.restore(3, exp.spec.abstract)
  want = nnx.state(released, nnx.Param).to_pure_dict()
  for a, b in zip(jax.tree.leaves(exp.spec.frozen(state["params"])),
                  jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  merged, _, _ = rg.load_workdir(str(workdir))
  tokens, pos = _inputs(vocab=32)
  unmerged = nnx.merge(exp.spec.graphdef, state["params"])
  np.testing.assert_allclose(merged(tokens, pos), unmerged(tokens, pos),
                             rtol=0, atol=2e-5)

  # Other weights at the same path: resuming and loading are refused.
  other = rg.Griffin(model_config, rngs=nnx.Rngs(8))
  ocp.PyTreeCheckpointer().save(ckpt, official.to_official(other),
                                force=True)
  saved = (workdir / "config.json").read_text()
  config.total_steps = 6
  with pytest.raises(WorkdirError, match="checkpoint step 3 .* was trained "
                     "on other base weights .*: blocks/0/"):
    loop.train(config, str(workdir))
  assert (workdir / "config.json").read_text() == saved
  assert checkpointing.Checkpointer(
      str(workdir / "checkpoints"), keep=3).complete_steps() == [3]
  with pytest.raises(ConfigError, match="trained on other base weights"):
    rg.load_workdir(str(workdir))


SHARDED_RUNS = textwrap.dedent("""
    import json, sys
    import jax
    from recurrentgemma_jax import sharding
    from recurrentgemma_jax.training import loop
    import train_testlib

    out = {}
    for name, devices, mesh in [("one", 1, {"data": 1}),
                                ("fsdp4_tensor2", 8, {"data": 1, "fsdp": 4,
                                                      "tensor": 2})]:
      config = train_testlib.tiny_config(**{
          "lora.rank": 4, "lora.alpha": 8.0, "learning_rate": 1e-2,
          "eval_batches": 0, "model.num_heads": 4,
          "model.lru_num_heads": 4,
          # One matmul of [x, x a] and [w; b] per projection (remat "dots"):
          # the fsdp-split w is joined to the replicated b.
          "model.remat": "dots"})
      config.mesh.update(mesh)
      make = sharding.make_mesh
      loop.sharding.make_mesh = (
          lambda s, _=None, n=devices: make(s, jax.devices()[:n]))
      workdir = f"{sys.argv[1]}/{name}"
      loop.train(config, workdir)
      exp = loop.setup(config, workdir, read_only=True)
      state = exp.checkpointer.restore(6, exp.spec.abstract)
      loop.sharding.make_mesh = make
      block = state["params"]["blocks"][2]
      out[name] = {
          "losses": [v[-1] for _, v in
                     sorted(train_testlib.losses(workdir).items())],
          "q_a": str(block["attention_block"]["proj_q"]["lora"]["lora_a"]
                     .sharding.spec),
          "q_b": str(block["attention_block"]["proj_q"]["lora"]["lora_b"]
                     .sharding.spec),
          "up_b": str(block["mlp_block"]["ffw_up_lora"]["lora_b"]
                      .sharding.spec),
          "q_kernel": str(block["attention_block"]["proj_q"]["kernel"]
                          .sharding.spec),
      }
    # The single-device run's checkpoint restores onto the 8-device mesh:
    # its digest of the base does not depend on the sharding.
    config.mesh.update(data=1, fsdp=4, tensor=2)
    exp = loop.setup(config, f"{sys.argv[1]}/one", read_only=True)
    state = exp.checkpointer.restore(6, exp.spec.abstract)
    out["resharded_step"] = int(state["step"])
    print("RUNS", json.dumps(out))
""")


def test_lora_trains_the_same_on_an_fsdp_tensor_mesh(tmp_path):
  result = train_testlib.python(
      "-c", SHARDED_RUNS, str(tmp_path),
      env=train_testlib.env(
          XLA_FLAGS="--xla_force_host_platform_device_count=8",
          PYTHONPATH=f"{train_testlib.REPO}:{train_testlib.REPO}/tests/train"),
      timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith("RUNS")][0]
  runs = json.loads(line[len("RUNS"):])
  one, sharded = runs["one"], runs["fsdp4_tensor2"]
  assert len(one["losses"]) == 6
  # float32: the mesh only changes reduction orders.
  np.testing.assert_allclose(sharded["losses"], one["losses"], rtol=0,
                             atol=1e-5)
  P = jax.sharding.PartitionSpec
  assert sharded["q_kernel"] == str(P("fsdp", "tensor"))
  assert sharded["q_a"] == str(P("fsdp", None))  # the kernel's input split
  assert sharded["q_b"] == str(P(None, "tensor"))  # ... and its output's
  assert sharded["up_b"] == str(P(None, None, "tensor"))
  assert runs["resharded_step"] == 6


needs_libtpu = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("libtpu"),
    reason='libtpu is not installed (pip install "jax[tpu]==0.11.2")')


@pytest.mark.parametrize("topology", [
    "local",  # this machine's devices: the CPU here, a GPU on a GPU host
    pytest.param("v5p-8", marks=needs_libtpu),
])
def test_compile_only_reports_lora_memory(topology):
  from recurrentgemma_jax.training import aot  # pylint: disable=g-import-not-at-top

  def report(**lora):
    config = train_testlib.tiny_config(batch_size=8, seq_len=128, **lora)
    config.model.update(width=128, lru_width=256, mlp_expanded_width=256,
                        dtype="bfloat16")
    config.mesh.update(data=1, fsdp=-1)
    return aot.compile_train_step(config, topology)

  full = report()
  lora = report(**{"lora.rank": 8, "lora.base_dtype": "bfloat16"})
  assert lora.num_params > full.num_params  # base + adapters
  # Adam moments of the adapters only; the base in bfloat16.
  assert lora.opt_state_bytes < full.opt_state_bytes / 4
  assert lora.params_bytes < full.params_bytes
  # The donated state (the base passing through included) is aliased.
  assert lora.alias_bytes >= lora.params_bytes + lora.opt_state_bytes
  if topology == "local":
    assert lora.topology == "local" and lora.pallas_kernels == 0
    assert lora.device_kind == jax.devices()[0].device_kind
    assert 0 < lora.peak_bytes < lora.hbm_bytes
