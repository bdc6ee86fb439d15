"""Config presets and validation, and the model's input checks."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recurrentgemma_jax as rg
from recurrentgemma_jax import presets

B_R, B_A = rg.BlockType.RECURRENT, rg.BlockType.ATTENTION


def test_recurrentgemma_presets():
  c2 = rg.presets.get("recurrentgemma-2b")
  assert (c2.width, c2.lru_width, c2.num_heads,
          c2.mlp_expanded_width, c2.num_layers) == (2560, 2560, 10, 7680, 26)
  assert (c2.attention_window_size, c2.vocab_size, c2.logits_soft_cap,
          c2.embeddings_scale_by_sqrt_dim) == (2048, 256000, 30.0, True)
  assert c2.block_types[:3] == (B_R, B_R, B_A)
  c9 = rg.presets.get("recurrentgemma-9b")
  assert (c9.width, c9.num_heads, c9.mlp_expanded_width,
          c9.num_layers) == (4096, 16, 12288, 38)


@pytest.mark.parametrize("size", list(presets.PAPER_SIZES))
def test_paper_presets(size):
  width, lru, depth, heads = presets.PAPER_SIZES[size]
  g = rg.presets.get(f"griffin-{size}")
  h = rg.presets.get(f"hawk-{size}")
  m = rg.presets.get(f"mqa-{size}")
  for c in (g, h, m):
    assert (c.width, c.num_layers, c.num_heads) == (width, depth, heads)
    assert c.mlp_expanded_width == 3 * width
  assert g.lru_width == lru and g.attention_window_size == 1024
  assert g.block_types == tuple((B_R, B_R, B_A)[i % 3] for i in range(depth))
  assert set(h.block_types) == {B_R}
  assert set(m.block_types) == {B_A} and m.attention_window_size is None
  assert lru % g.lru_num_heads == 0


def test_overrides_and_official_enum_names():
  c = rg.presets.get("griffin-100m", vocab_size=256, dtype=jnp.bfloat16)
  assert c.vocab_size == 256 and c.dtype == "bfloat16"
  from recurrentgemma import common
  c = c.replace(block_types=(common.TemporalBlockType.RECURRENT, "ATTENTION"))
  assert c.block_types == (B_R, B_A)


@pytest.mark.parametrize(
    "changes,field",
    [
        (dict(num_heads=5), "num_heads"),
        (dict(block_types=("recurrent", "mamba")), "block_types"),
        (dict(block_types=()), "block_types"),
        (dict(block_types="recurrent"), "block_types"),
        (dict(width=0), "width"),
        (dict(vocab_size=3.5), "vocab_size"),
        (dict(dtype="int8"), "dtype"),
        (dict(scan_impl="cuda"), "scan_impl"),
        (dict(remat="some"), "remat"),
        (dict(attention_window_size=-1), "attention_window_size"),
        (dict(logits_soft_cap=-1.0), "logits_soft_cap"),
        (dict(lru_width=48, lru_num_heads=5), "lru_num_heads"),
        (dict(colour="blue"), "unknown config field"),
    ],
)
def test_invalid_configs_name_the_field(changes, field):
  base = rg.GriffinConfig(vocab_size=10, width=32, mlp_expanded_width=64,
                          num_heads=4, block_types=("recurrent", "attention"))
  with pytest.raises(rg.ConfigError, match=field):
    base.replace(**changes)


def test_lru_fields_follow_width_and_heads_until_set():
  base = rg.GriffinConfig(vocab_size=10, width=32, mlp_expanded_width=64,
                          num_heads=4, block_types=("recurrent",))
  assert (base.lru_width, base.lru_num_heads) == (32, 4)
  wider = base.replace(width=64, num_heads=8)
  assert (wider.lru_width, wider.lru_num_heads) == (64, 8)
  set_ = base.replace(lru_width=48, lru_num_heads=2).replace(width=64)
  assert (set_.lru_width, set_.lru_num_heads) == (48, 2)
  # to_dict gives the fields as given: None where one follows another.
  assert base.to_dict()["lru_width"] is None
  assert set_.to_dict()["lru_width"] == 48
  rebuilt = rg.GriffinConfig(**base.to_dict()).replace(width=16)
  assert rebuilt.lru_width == 16
  with pytest.raises(rg.ConfigError, match="num_heads: 3 must divide "
                     "lru_width=32"):
    base.replace(width=36, num_heads=3, lru_width=32)


def test_a_following_field_is_not_equal_to_the_same_value_set():
  """Equal configs must behave alike under `replace` (jit and caches key
  on equality and hash)."""
  kw = dict(vocab_size=10, width=32, mlp_expanded_width=64, num_heads=4,
            block_types=("recurrent",))
  following = rg.GriffinConfig(**kw)
  pinned = rg.GriffinConfig(**kw, lru_width=32, lru_num_heads=4)
  assert following.lru_width == pinned.lru_width
  assert following != pinned
  assert following.replace(width=64).lru_width != pinned.replace(
      width=64).lru_width
  assert following == rg.GriffinConfig(**kw)
  assert hash(following) == hash(rg.GriffinConfig(**kw))
  assert len({following, pinned, rg.GriffinConfig(**kw)}) == 2


def test_remat_policies_are_the_allowed_names():
  assert tuple(rg.config.REMAT_POLICIES) == ("none", "full", "dots",
                                             "dots_no_batch")
  with pytest.raises(rg.ConfigError, match=r"remat: 'some' is not one of "
                     r"\('none', 'full', 'dots', 'dots_no_batch'\)"):
    rg.presets.get("griffin-100m", remat="some")


def test_unknown_preset():
  with pytest.raises(rg.ConfigError, match="unknown preset 'griffin-2b'.*"
                     "recurrentgemma-2b"):
    rg.presets.get("griffin-2b")


@pytest.fixture(scope="module")
def tiny_model():
  config = rg.GriffinConfig(vocab_size=10, width=16, mlp_expanded_width=32,
                            num_heads=2, block_types=("recurrent",))
  return rg.Griffin(config, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "tokens,seg,error,match",
    [
        (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int32), TypeError,
         "tokens must be integers"),
        (np.zeros((3,), np.int32), np.zeros((3,), np.int32), ValueError,
         r"tokens must be \[batch, time\]"),
        (np.zeros((2, 3), np.int32), np.zeros((2, 4), np.int32), ValueError,
         "segment_pos shape"),
        (np.zeros((2, 3), np.int32), np.zeros((2, 3), np.float32), TypeError,
         "segment_pos must be integers"),
    ],
)
def test_bad_inputs_get_clear_errors(tiny_model, tokens, seg, error, match):
  with pytest.raises(error, match=match):
    tiny_model(tokens, seg)


def test_every_parameter_has_logical_axes(tiny_model):
  config = rg.presets.get(
      "griffin-100m", vocab_size=32, width=32, mlp_expanded_width=64,
      num_heads=2, lru_width=32, lru_num_heads=2,
      block_types=("recurrent", "attention"),
  )
  model = nnx.eval_shape(lambda: rg.Griffin(config, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  for path, p in nnx.to_flat_state(params):
    axes = p.get_metadata("out_sharding", None)
    assert axes is not None and len(axes) == p.get_value().ndim, path
    assert any(a is not None for a in axes), path
