"""Ahead-of-time compilation of the full sharded train step for TPU slices
(libtpu's compile-only TPU devices; no TPU needed): slice names, a compile
per generation with the Pallas TPU scans, and the clear over-HBM error."""

import re

import pytest

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.training import aot

import train_testlib


@pytest.mark.parametrize("name,expected", [
    ("v5p-8", "v5p:2x2x1"),
    ("v5p-32", "v5p:2x2x4"),
    ("v5p-128", "v5p:4x4x4"),
    ("v5p-256", "v5p:4x4x8"),
    ("v4-32", "v4:2x2x4"),
    ("v4-64", "v4:2x4x4"),
    ("v5litepod-16", "v5e:4x4"),
    ("v5e-8", "v5e:2x4"),
    ("v6e-16", "v6e:4x4"),
    ("v6e-64", "v6e:8x8"),
    ("v5p:4x4x8", "v5p:4x4x8"),
])
def test_cloud_names_map_to_topologies(name, expected):
  assert aot.topology_name(name)[1] == expected


@pytest.mark.parametrize("name", ["v5p-12", "v3-8", "tpu", "v5p-2"])
def test_bad_slice_names_are_clear(name):
  with pytest.raises(ConfigError, match="topology"):
    aot.topology_name(name)


def _tiny(**overrides):
  config = train_testlib.tiny_config(batch_size=8, seq_len=128, **overrides)
  # Widths of whole TPU lanes (128) per tensor shard.
  config.model.update(width=128, lru_width=256, mlp_expanded_width=256,
                      dtype="bfloat16")
  return config


needs_libtpu = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("libtpu"),
    reason='libtpu is not installed (pip install "jax[tpu]==0.11.2")')


@needs_libtpu
@pytest.mark.parametrize("slice_name,mesh", [
    ("v4-8", {"data": 2, "fsdp": -1}),  # 4 chips
    ("v5litepod-4", {"data": 1, "fsdp": 2, "tensor": 2}),
    ("v5p-8", {"data": 1, "fsdp": -1}),
    ("v6e-4", {"data": -1}),
])
def test_train_step_compiles_for_tpu(slice_name, mesh):
  config = _tiny(**{"model.num_heads": 2, "model.lru_num_heads": 2})
  config.mesh.update(data=1, fsdp=1, tensor=1, sequence=1)
  config.mesh.update(mesh)
  report = aot.compile_train_step(config, slice_name)
  print("\n" + report.summary())
  assert report.pallas_kernels > 0  # the Mosaic scans, not a fallback
  assert report.fits and 0 < report.peak_bytes < report.hbm_bytes
  assert report.params_bytes > 0 and report.opt_state_bytes > 0
  assert report.flops > 0 and report.model_flops > 0
  assert sum(report.mesh.values()) > 1
  # The state (parameters + optimizer) is donated: outputs alias inputs.
  assert report.alias_bytes >= report.params_bytes


@needs_libtpu
def test_over_hbm_config_fails_with_a_clear_error():
  # 1.5B parameters replicated (pure data parallelism) with Adam in float32:
  # 1.5e9 x 12 bytes = 17 GiB of state per chip > the 16 GiB of a v5e.
  config = _tiny()
  config.model.update(kind="hawk", depth=4, width=4096, lru_width=4096,
                      mlp_expanded_width=4 * 4096, vocab_size=128_000)
  config.model.update(num_heads=8)
  with pytest.raises(aot.DoesNotFitError, match="does not fit v5e:2x2"):
    aot.compile_train_step(config, "v5litepod-4")


def test_command_line_compile_only(tmp_path):
  if not __import__("importlib").util.find_spec("libtpu"):
    pytest.skip("libtpu is not installed")
  config_file = tmp_path / "tiny.py"
  config_file.write_text(
      "import train_testlib\n"
      "def get_config(arg=None):\n"
      "  return train_testlib.tiny_config(batch_size=8, seq_len=64)\n")
  tests = train_testlib.REPO / "tests" / "train"
  common = ["-m", "recurrentgemma_jax.cli.train", f"--config={config_file}",
            f"--workdir={tmp_path / 'w'}", "--compile_only"]
  env = train_testlib.env(PYTHONPATH=f"{train_testlib.REPO}:{tests}")
  result = train_testlib.python(*common, "--topology=v5p-8", env=env,
                                timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "compiled the train step for v5p:2x2x1" in result.stdout
  assert "HBM" in result.stdout
  assert (tmp_path / "w" / "aot_v5p_2x2x1.json").exists()
  result = train_testlib.python(*common, "--topology=v9-8", env=env,
                                timeout=300)
  assert result.returncode == 1
  assert "error: topology 'v9-8'" in result.stderr


@needs_libtpu
def test_fsdp_keeps_activations_batch_sharded_on_tpu():
  # The batch and the parameters' `embed` dimension share the fsdp axis.
  # Without activation constraints XLA:TPU gathered whole-batch activations
  # (docs/tpu.md row 3: 345 GiB of temporaries per chip); with them only
  # parameters (and int32 token ids) are gathered.
  config = _tiny(**{"model.num_heads": 2, "model.lru_num_heads": 2,
                    "model.vocab_size": 1024})
  config.update(seq_len=40)  # no parameter has a dimension pair (8, 40)
  config.mesh.update(data=1, fsdp=-1, tensor=1, sequence=1)
  hlo = aot.compiled_text(config, "v5p-8")  # 4 chips, 2 rows each
  whole_batch = re.findall(
      r"= (?:f32|bf16)\[(?:\d+,)*8,40(?:,\d+)*\][^ ]* "
      r"(?:all-gather|all-reduce|reduce-scatter|all-to-all)", hlo)
  assert not whole_batch


def test_tpu_compilation_uses_xla_attention_whatever_the_host():
  """"auto" would resolve for the host's backend (the GPU kernel on a GPU
  host); a TPU program gets the XLA attention and the TPU scans."""
  config = _tiny()
  model = aot._model_config(config, tpu=True)  # pylint: disable=protected-access
  assert (model.attention_impl, model.scan_impl) == ("xla", "pallas_tpu")
  config.model.attention_impl = "pallas_gpu"  # an explicit choice stays
  assert aot._model_config(config, tpu=True).attention_impl == "pallas_gpu"  # pylint: disable=protected-access
