"""Every experiment file's `runlocal` variant trains on the CPU.

For each `experiments/*.py` (found by glob, so new files are covered) and
each model family the file takes (`model=`), the runlocal config keeps its
sizes (model, sequence length, batch, data) and trains for two steps
through the shared loop, with an evaluation and a checkpoint at the end.
The fine-tuning file needs released weights: a tiny model saved in the
official checkpoint format stands in for them (as in
test_loop.py::test_fine_tuning_starts_from_released_weights).

The language-modelling files train on their default corpus, the Python
standard library's source (`data/code_corpus.py`), prepared once in a
temporary folder; test_fresh_clone.py runs the same defaults from a copy of
the repository.
"""

import json
import math

import pytest

from recurrentgemma_jax.config import ConfigError
from recurrentgemma_jax.training import checkpointing
from recurrentgemma_jax.training import config as config_lib
from recurrentgemma_jax.training import loop

import train_testlib

EXPERIMENTS = train_testlib.EXPERIMENTS
MODELS = ("griffin", "hawk", "mqa")
STEPS = 2


_load = train_testlib.load_experiment


def _accepts(module, arg: str) -> bool:
  try:
    module.get_config(f"runlocal,{arg}")
  except ConfigError:  # parse_arg: unknown config argument
    return False
  return True


def _cases():
  for path in EXPERIMENTS:
    module = _load(path)
    models = MODELS if _accepts(module, "model=hawk") else (None,)
    for model in models:
      # Every file runs by default (its default family, Griffin); the other
      # families compile different programs, ~20 s each on a cold cache, so
      # they run with `bash scripts/test.sh -m slow`.
      marks = () if model in (None, "griffin") else (pytest.mark.slow,)
      yield pytest.param(path, model, id=f"{path.stem}-{model or 'default'}",
                         marks=marks)


def test_every_experiment_file_is_covered():
  names = {p.name for p in EXPERIMENTS}
  assert {"selective_copy.py", "induction_heads.py", "mqar.py", "lm.py",
          "paper_scaling.py", "recurrentgemma_finetune.py"} <= names
  for path in EXPERIMENTS:
    assert hasattr(_load(path), "get_config"), path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """One prepared copy of the default corpus for every text experiment."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  """A tiny Griffin saved as an official (released-format) checkpoint, with
  the hyperparameters a fine-tuning config must then name."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax import official  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.model import Griffin  # pylint: disable=g-import-not-at-top

  hypers = {"attention_window_size": 16, "logits_soft_cap": 30.0,
            "embeddings_scale_by_sqrt_dim": True}
  model = config_lib.model_config(
      "", kind="griffin", depth=3, width=32, mlp_expanded_width=64,
      num_heads=2, lru_width=32, dtype="float32", **hypers)
  # A byte vocabulary (259 ids) padded like the loop pads it.
  weights = Griffin(config_lib.build_model_config(model, 384),
                    rngs=nnx.Rngs(7))
  path = tmp_path_factory.mktemp("released") / "ckpt"
  ocp.PyTreeCheckpointer().save(path, official.to_official(weights))
  return str(path), hypers


def _runlocal_config(path, model, released):
  module = _load(path)
  arg = "runlocal" + (f",model={model}" if model else "")
  if _accepts(module, "ckpt=x"):  # fine-tuning: needs released weights
    ckpt, hypers = released
    config = module.get_config(f"{arg},ckpt={ckpt},tokenizer=bytes")
    config.init_from.preset = ""  # the stand-in is no released preset
    config.model.update(hypers)
  else:
    config = module.get_config(arg)
  return config


@pytest.mark.parametrize("path, model", list(_cases()))
def test_runlocal_trains(path, model, tmp_path, data_dir, released):
  config = _runlocal_config(path, model, released)
  sizes = {"seq_len": config.seq_len, "batch_size": config.batch_size,
           "mesh": config.mesh.to_dict()}
  sizes["model"] = config.model.to_dict()
  sizes["data"] = config.data.to_dict()
  if model:
    assert config.model.kind in ("", model)
  config.total_steps = STEPS
  config.warmup_steps = min(config.warmup_steps, 1)
  config.eval_every = config.checkpoint_every = STEPS
  config.log_every = 1
  config.eval_batches = 1
  if config.data.task == "lm":  # prepare the corpus in a temporary folder
    assert config.data.source == "python"  # built here, read from nowhere
    assert not config.data.files
    config.data.data_dir = data_dir
    sizes["data"]["data_dir"] = data_dir

  workdir = tmp_path / "run"
  result = loop.train(config, str(workdir))
  assert (result.step, result.preempted) == (STEPS, False)
  saved = json.loads((workdir / "config.json").read_text())
  assert {k: saved[k] for k in ("seq_len", "batch_size", "mesh")} == {
      k: sizes[k] for k in ("seq_len", "batch_size", "mesh")}
  assert saved["model"] == sizes["model"] and saved["data"] == sizes["data"]

  assert math.isfinite(result.metrics["train/loss"])
  assert math.isfinite(result.metrics["eval/loss"])
  assert 0 <= result.metrics["eval/accuracy"] <= 1
  assert result.metrics["eval/tokens"] > 0
  records = [json.loads(line) for line in
             (workdir / "metrics.jsonl").read_text().splitlines()]
  assert sorted(r["step"] for r in records if "train/loss" in r) == [1, 2]
  assert [r["step"] for r in records if "eval/loss" in r] == [STEPS]
  ckpt = checkpointing.Checkpointer(str(workdir / "checkpoints"), keep=3)
  try:
    assert ckpt.complete_steps() == [STEPS]
  finally:
    ckpt.close()


@pytest.mark.parametrize("name, arg, match", [
    ("lm", "model=griffen", "model='griffen' is not one of griffin, hawk, mqa"),
    ("lm", "size=1b", "size='1b' is not one of 100m, small"),
    ("lm", "corpus=c4", "corpus='c4' is not one of python"),
    ("lm", "corpus=python,files=/x.txt", "at most one of corpus=, dataset="),
    ("lm", "files=/x.txt,site_packages", "apply to corpus=python"),
    ("paper_scaling", "model=griffen", "model='griffen' is not one of"),
    ("paper_scaling", "size=2b", "size='2b' is not one of 100m, 400m"),
    ("recurrentgemma_finetune", "size=7b", "size='7b' is not one of 2b, 9b"),
])
def test_bad_arguments_are_rejected_by_get_config(name, arg, match):
  """Before any data is prepared (the loop prepares it in setup)."""
  module = _load(train_testlib.REPO / "experiments" / f"{name}.py")
  with pytest.raises(ConfigError, match=match):
    module.get_config(arg)


@pytest.mark.slow
def test_selective_copy_runlocal_learns_the_task(tmp_path):
  """The README Quickstart run in full (600 steps of Griffin on selective
  copy; ~0.94 eval accuracy measured, chance is 1/14). Several CPU-minutes:
  slow tests run with `bash scripts/test.sh -m slow` (or
  `python -m pytest tests/train/test_experiments_runlocal.py -m slow`)."""
  path = train_testlib.REPO / "experiments" / "selective_copy.py"
  config = _load(path).get_config("runlocal")
  result = loop.train(config, str(tmp_path / "run"))
  assert result.step == config.total_steps == 600
  assert result.metrics["eval/accuracy"] > 0.8, result.metrics
