"""Experiment config schema, argument parsing and model-config building."""

import dataclasses
import pathlib
import subprocess
import sys

import pytest

from recurrentgemma_jax.config import BlockType
from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.config import GriffinConfig
from recurrentgemma_jax.training import config as config_lib

import train_testlib

EXPERIMENTS = train_testlib.EXPERIMENTS


_load = train_testlib.load_experiment
common = _load("common")  # experiments/common.py


def test_parse_arg_types_and_unknown_keys():
  arg = common.parse_arg("runlocal,model=hawk,steps=5", runlocal=False,
                         model="griffin", steps=1)
  assert (arg.runlocal, arg.model, arg.steps) == (True, "hawk", 5)
  assert common.parse_arg("", runlocal=False).runlocal is False
  with pytest.raises(ConfigError, match="unknown"):
    common.parse_arg("nope=1", runlocal=False)
  with pytest.raises(ConfigError, match="expected int"):
    common.parse_arg("steps=x", steps=1)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
@pytest.mark.parametrize("arg", ["", "runlocal"])
def test_every_experiment_validates(path, arg):
  module = _load(path)
  if path.stem == "recurrentgemma_finetune":  # must name its weights
    arg = ",".join(filter(None, [arg, "weights=none"]))
  config = config_lib.validate(module.get_config(arg))
  for field in ("total_steps", "batch_size", "seq_len", "learning_rate",
                "warmup_steps", "eval_every", "checkpoint_every",
                "keep_checkpoints", "seed", "model", "mesh"):
    assert field in config
  doc = module.__doc__
  assert "recurrentgemma train" in doc
  assert "Expected" in doc and "Runtime" in doc


@pytest.mark.parametrize("kind", ["griffin", "hawk", "mqa"])
def test_synthetic_models_match_the_paper_setup(kind):
  module = _load(train_testlib.REPO / "experiments" / "selective_copy.py")
  config = module.get_config(f"model={kind}")
  model = config_lib.build_model_config(config.model, vocab_size=16)
  assert (model.width, model.num_layers, model.vocab_size) == (64, 5, 16)
  attention = [i for i, b in enumerate(model.block_types)
               if b == BlockType.ATTENTION]
  assert attention == {"griffin": [2], "hawk": [], "mqa": [0, 1, 2, 3, 4]}[
      kind]
  window = {"griffin": 512, "hawk": 512, "mqa": None}[kind]
  assert model.attention_window_size == window
  assert config.seq_len == 1024 and config.data.num_tokens == 16


@pytest.mark.parametrize("kind", ["griffin", "hawk", "mqa"])
def test_mqar_wide_is_learnable_size_and_checked(kind):
  """size=wide (docs/results.md, MQAR): width 128, 8 pairs, queries mostly
  more than Griffin's window after their keys."""
  module = _load(train_testlib.REPO / "experiments" / "mqar.py")
  config = config_lib.validate(module.get_config(f"model={kind},size=wide"))
  model = config_lib.build_model_config(config.model,
                                        vocab_size=config.data.vocab_size)
  assert (model.width, model.lru_width, model.num_layers) == (128, 128, 5)
  assert (model.num_heads, model.mlp_expanded_width) == (2, 384)
  assert (config.seq_len, config.batch_size) == (128, 32)
  assert (config.data.vocab_size, config.data.num_pairs) == (512, 8)
  window = {"griffin": 32, "hawk": 32, "mqa": None}[kind]
  assert model.attention_window_size == window
  paper = module.get_config(f"model={kind}")
  assert (paper.model.width, paper.data.num_pairs) == (64, 32)
  with pytest.raises(ConfigError, match="size='huge': expected paper or wide"):
    module.get_config("size=huge")
  with pytest.raises(ConfigError, match="give one"):
    module.get_config("size=wide,runlocal")


def test_paper_scaling_budgets():
  module = _load(train_testlib.REPO / "experiments" / "paper_scaling.py")
  config = module.get_config("model=hawk,size=400m")
  assert config.model.preset == "hawk-400m"
  tokens = config.total_steps * config.batch_size * config.seq_len
  assert abs(tokens - 7.8e9) / 7.8e9 < 1e-3


def test_validate_rejects_unknown_and_mistyped_fields():
  c = train_testlib.tiny_config().to_dict()
  c["learning_rat"] = 1.0
  with pytest.raises(ConfigError, match="unknown config field.*learning_rat"):
    config_lib.validate(c)
  c = train_testlib.tiny_config().to_dict()
  c["batch_size"] = "8"
  with pytest.raises(ConfigError, match="batch_size='8' should be int"):
    config_lib.validate(c)
  c = train_testlib.tiny_config().to_dict()
  c["model"]["widht"] = 3
  with pytest.raises(ConfigError, match="model.widht"):
    config_lib.validate(c)
  with pytest.raises(ConfigError, match="warmup_steps"):
    config_lib.validate(train_testlib.tiny_config(warmup_steps=100))


def test_validated_config_is_locked():
  config = config_lib.validate(train_testlib.tiny_config())
  with pytest.raises(AttributeError):
    config.new_field = 1


def test_build_model_config_from_preset_and_from_scratch():
  section = config_lib.model_config("griffin-100m", width=256,
                                    mlp_expanded_width=768, num_heads=4,
                                    lru_width=256, lru_num_heads=4,
                                    remat="dots")
  model = config_lib.build_model_config(section, vocab_size=384)
  assert (model.width, model.vocab_size, model.remat) == (256, 384, "dots")
  assert model.num_layers == 12 and model.attention_window_size == 1024
  scratch = config_lib.model_config(
      "", kind="mqa", depth=2, width=32, mlp_expanded_width=64, num_heads=2,
      attention_window_size=0)
  model = config_lib.build_model_config(scratch, vocab_size=16)
  assert model.attention_window_size is None
  assert model.block_types == (BlockType.ATTENTION,) * 2
  with pytest.raises(ConfigError, match="kind and model.depth"):
    config_lib.build_model_config(
        config_lib.model_config("", kind="hawk"), vocab_size=16)


def test_every_model_field_is_set_from_the_model_section():
  fields = {f.name for f in dataclasses.fields(GriffinConfig)}
  assert fields == {*config_lib.MODEL_OVERRIDES, *config_lib.COMPUTE_FIELDS,
                    "block_types"}
  values = dict(vocab_size=40, width=48, mlp_expanded_width=96, num_heads=4,
                attention_window_size=7, logits_soft_cap=5.0,
                embeddings_scale_by_sqrt_dim=True, lru_width=64,
                lru_num_heads=8, conv1d_temporal_width=3)
  assert set(values) == set(config_lib.MODEL_OVERRIDES)
  for name, value in values.items():  # the section's types take them
    assert type(value) is config_lib.MODEL_OVERRIDES[name], name
  model = config_lib.build_model_config(
      config_lib.model_config("", kind="griffin", depth=3, **values))
  assert {k: getattr(model, k) for k in values} == values


def test_experiment_files_load_by_path_from_any_directory(tmp_path):
  # As `--config=/path/to/experiments/x.py` loads them: by path, from a
  # directory where neither `experiments` nor the repository is importable.
  script = ("import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('cfg', "
            "sys.argv[1])\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "print(module.get_config('runlocal').data.task)\n")
  env = {k: v for k, v in train_testlib.env().items() if k != "PYTHONPATH"}
  result = subprocess.run(
      [sys.executable, "-c", script,
       str(train_testlib.REPO / "experiments" / "mqar.py")],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "mqar"


def test_config_file_flags_override_and_reject(tmp_path):
  """The CLI: --config.field overrides; unknown fields and bad types fail
  at flag parsing with a one-line message."""
  common = ["-m", "recurrentgemma_jax.cli.train",
            "--config=experiments/mqar.py:runlocal",
            f"--workdir={tmp_path}"]
  result = train_testlib.python(*common, "--config.bogus_field=1")
  assert result.returncode != 0
  assert "bogus_field" in result.stderr
  result = train_testlib.python(*common, "--config.batch_size=abc")
  assert result.returncode != 0
  assert "batch_size" in result.stderr


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("change, match", [
    # Each of these trained without complaint before (gradient ascent for a
    # negative learning rate, a diverging Adam for b1 > 1, ...).
    ({"min_lr_ratio": -1.0},
     r"min_lr_ratio=-1.0 must be a finite number in \[0, 1\]"),
    ({"optimizer.b1": 1.5},
     r"optimizer.b1=1.5 must be a finite number in \[0, 1\)"),
    ({"optimizer.b2": 1.0}, r"optimizer.b2=1.0 must be .* in \[0, 1\)"),
    ({"optimizer.grad_clip": -1.0},
     "optimizer.grad_clip=-1.0 must be a finite number >= 0"),
    ({"optimizer.eps": 0.0}, "optimizer.eps=0.0 must be a finite number > 0"),
    ({"optimizer.weight_decay": NAN}, "optimizer.weight_decay=nan"),
    ({"learning_rate": NAN}, "learning_rate=nan must be a finite number > 0"),
    ({"learning_rate": INF}, "learning_rate=inf must be a finite number > 0"),
    ({"learning_rate": -1e-3}, "learning_rate=-0.001 must be"),
    ({"loss.z_loss": -1.0}, "loss.z_loss=-1.0 must be a finite number >= 0"),
    ({"peak_tflops": 0.0}, "peak_tflops=0.0 must be a finite number > 0"),
    ({"eval_every": 0}, "eval_every=0 must be an integer >= 1"),
    ({"seed": -3}, "seed=-3 must be an integer >= 0"),
    ({"mesh.fsdp": 0}, "mesh.fsdp=0 must be an integer >= 1 or -1"),
    ({"model.width": 0}, "model.width=0 must be an integer >= 1"),
    ({"model.depth": 0}, "model.depth=0 must be an integer >= 1"),
    ({"profile_steps": (2, 7)},
     r"profile_steps=\(2, 7\) must be \(\) or \(first, last\) with 1 <= "
     r"first <= last <= total_steps=6"),
    ({"profile_steps": (3, 2)}, "profile_steps=.3, 2."),
    ({"lr_schedule": "step"}, "lr_schedule='step' is not one of cosine"),
    ({"optimizer.no_decay": "(bias"}, "optimizer.no_decay=.* is not a regex"),
])
def test_validate_rejects_out_of_range_values(change, match):
  with pytest.raises(ConfigError, match=match):
    config_lib.validate(train_testlib.tiny_config(**change))


@pytest.mark.parametrize("change", [
    {"eval_batches": 0},  # no evaluation
    {"optimizer.grad_clip": 0.0},  # no clipping
    {"min_lr_ratio": 0.0}, {"min_lr_ratio": 1.0},
    {"optimizer.b1": 0.0}, {"warmup_steps": 0}, {"warmup_steps": 6},
    {"profile_steps": (1, 6)}, {"mesh.data": -1, "mesh.fsdp": 1},
    {"model.attention_window_size": 0},  # global attention
    {"peak_tflops": 459.0},
])
def test_validate_accepts_the_edges_of_every_range(change):
  config_lib.validate(train_testlib.tiny_config(**change))


def test_every_numeric_field_has_a_range():
  def numeric(section, prefix=""):
    for key in section.keys():
      value = section[key]
      if hasattr(value, "keys"):
        if key != "data":
          yield from numeric(value, f"{prefix}{key}.")
      elif section.get_type(key) in (int, float):
        yield prefix + key

  fields = set(numeric(config_lib.base_config()))
  assert "optimizer.b1" in fields and "model.depth" in fields
  assert fields - set(config_lib.RANGES) == set()
  assert set(config_lib.RANGES) - fields == set()


def test_every_experiment_rejects_an_unknown_model_in_its_file():
  # In get_config, before the loop prepares any data.
  selective_copy = _load("selective_copy")
  with pytest.raises(ConfigError, match="model.kind='griffen' is not one of "
                     "griffin, hawk, mqa"):
    selective_copy.get_config("model=griffen")
  with pytest.raises(ConfigError, match="unknown preset 'griffin-7'"):
    config_lib.model_config("griffin-7")


def test_experiment_files_load_their_own_common_whatever_sys_path_holds(
    monkeypatch, tmp_path):
  """Another `experiments` package (the user's, found first on sys.path,
  or already imported) does not stand in for the file beside ours."""
  theirs = tmp_path / "experiments"
  theirs.mkdir()
  (theirs / "__init__.py").write_text("")
  (theirs / "common.py").write_text("raise ImportError('the wrong common')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  for name in [m for m in sys.modules if m == "experiments" or
               m.startswith("experiments.")]:
    monkeypatch.delitem(sys.modules, name)
  lm = _load("lm")
  mqar = _load("mqar")
  assert lm.common is mqar.common  # loaded once per process
  assert pathlib.Path(lm.common.__file__) == EXPERIMENTS[0].parent / "common.py"
  assert lm.get_config("runlocal").model.kind == "griffin"
