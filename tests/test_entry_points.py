"""What a user meets first at the command line: the `recurrentgemma` verbs
and their console script, help texts, exit codes, one-line errors, and no
start-up noise (libtpu, runpy warnings)."""

import importlib
import os
import pathlib
import re
import runpy
import subprocess
import sys
import types

import pytest

from recurrentgemma_jax import cli
from recurrentgemma_jax import platforms

ROOT = pathlib.Path(__file__).resolve().parents[1]
# libtpu's start-up errors where there is no TPU.
TPU_NOISE = ("Failed to find host bounds", "unexpected worker hostname",
             "Source Location Trace")


def _run(*args, env=None, timeout=180) -> subprocess.CompletedProcess:
  env = dict(os.environ if env is None else env)
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                        text=True, capture_output=True, timeout=timeout)


# What each verb's --help must show besides its usage line: flags of its
# own (absl lists the main module's), and shared ones it adopts.
HELP = {
    "train": ["--coordinator_address", "--[no]compile_only", "--topology"],
    "evaluate": ["--coordinator_address", "--length_multipliers"],
    "sample": ["0 is greedy (argmax)", "(default: '0.0')",
               "per prompt (default: '64')"],
    "convert": ["--from: <official|hf|workdir>", "--to: <official|hf>"],
    "plot": ["--out: output PNG path (default: 'curves.png')"],
    "reproduce": ["(default: 'runlocal')", "(default: 'cpu')",
                  "run: runs sharing each device (default: '1')"],
    "launch-local": ["--num_processes", "--module"],
    "launch-tpu": ["--accelerator", "--[no]dry_run"],
}


@pytest.mark.parametrize("verb", cli.MOVED)
def test_the_former_module_entry_points_still_run_their_verb(verb):
  """`python -m recurrentgemma_jax.sample` (and the other modules the verbs
  replaced, `cli.MOVED`) runs the verb, with a note of the new spelling."""
  result = _run("-m", f"recurrentgemma_jax.{verb}", "--help")
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"is now `recurrentgemma {verb}`" in result.stderr
  assert "RuntimeWarning" not in result.stderr
  # The verb's own program: the same help, word for word.
  assert result.stdout == _run("-m", "recurrentgemma_jax", verb,
                               "--help").stdout
  text = " ".join(result.stdout.split())
  assert all(expected in text for expected in HELP[verb])


def test_every_verb_has_its_help():
  assert sorted(HELP) == sorted(cli.COMMANDS)


@pytest.mark.parametrize("verb", list(HELP))
def test_verb_help_exits_0_with_its_usage_and_flags(verb):
  result = _run("-m", "recurrentgemma_jax", verb, "--help")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "RuntimeWarning" not in result.stderr  # 'found in sys.modules'
  # The docstring's usage example, with its line breaks ("\" continuations).
  assert re.search(rf"^ +recurrentgemma {verb} ", result.stdout, re.M)
  if verb in ("train", "evaluate", "convert", "launch-local"):
    assert re.search(rf"recurrentgemma {verb} [^\n]*\\\n", result.stdout)
  text = " ".join(result.stdout.split())
  for expected in HELP[verb]:
    assert expected in text, (verb, expected)


def test_unknown_or_missing_verb_fails_in_one_line(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["recurrentgemma", "trian"])
  assert e.value.code == 1
  assert capsys.readouterr().err == (
      "error: unknown verb 'trian'; one of " + ", ".join(cli.COMMANDS) + "\n")
  with pytest.raises(SystemExit) as e:
    cli.main(["recurrentgemma"])
  assert e.value.code == 1 and "verbs:" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    cli.main(["recurrentgemma", "--help"])
  assert e.value.code == 0 and "launch-tpu" in capsys.readouterr().out


def _setup_kwargs(monkeypatch) -> dict:
  """What setup.py passes to setuptools.setup (setuptools stubbed: the
  test venv need not have it)."""
  captured = {}
  stub = types.ModuleType("setuptools")
  stub.setup = lambda **kwargs: captured.update(kwargs)
  stub.find_packages = lambda **kwargs: []
  monkeypatch.setitem(sys.modules, "setuptools", stub)
  runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
  return captured


def test_console_scripts_resolve_to_callable_mains(monkeypatch):
  scripts = _setup_kwargs(monkeypatch)["entry_points"]["console_scripts"]
  assert scripts == cli.CONSOLE_SCRIPTS
  for script in scripts:
    name, target = (part.strip() for part in script.split("="))
    module, attr = target.split(":")
    assert callable(getattr(importlib.import_module(module), attr)), name
  # Each verb is a module with an absl main and an in-process entry.
  for verb in cli.COMMANDS:
    module = importlib.import_module(cli.module_name(verb))
    for attr in ("main", "define_flags", "run"):
      assert callable(getattr(module, attr)), (verb, attr)


@pytest.mark.parametrize("override", [[], ["--config.total_steps=5"]])
def test_missing_experiment_file_is_named(override):
  result = _run("-m", "recurrentgemma_jax.cli.train",
                "--config=experiments/selctive_copy.py:runlocal", *override,
                "--workdir=/tmp/rg_never_created")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --config: config file experiments/selctive_copy.py not found")
  assert not os.path.exists("/tmp/rg_never_created")


def test_sample_rejects_bad_prompt_tokens_in_one_line():
  result = _run("-m", "recurrentgemma_jax", "sample",
                "--workdir=/nonexistent", "--prompt_tokens=1,x")
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: flag --prompt_tokens=1,x: expected comma-separated integer "
      "token ids, got '1,x'")


def test_skip_absent_tpu_respects_a_choice_and_a_tpu(monkeypatch):
  # JAX_PLATFORMS is set in tests (conftest): nothing changes.
  assert platforms.skip_absent_tpu() is None
  assert platforms.tpu_present({"TPU_NAME": "my-tpu"})
  assert platforms.skip_absent_tpu({"TPU_ACCELERATOR_TYPE": "v5p-8"}) is None
  monkeypatch.setattr(platforms.glob, "glob",
                      lambda p: ["/dev/vfio/0"] if "vfio" in p else [])
  assert platforms.tpu_present({})


@pytest.mark.skipif(platforms.tpu_present(), reason="this machine has a TPU")
def test_no_libtpu_noise_without_a_tpu():
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  code = ("from recurrentgemma_jax import platforms\n"
          "print(platforms.skip_absent_tpu())\n"
          "import jax\n"
          "print(jax.default_backend())\n")
  result = _run("-c", code, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  chosen, backend = result.stdout.split()
  assert backend in chosen.split(",")
  for noise in TPU_NOISE:
    assert noise not in result.stderr


def test_call_takes_config_field_overrides(tmp_path):
  """`common.call` accepts `--config.<field>=...` as the command line does
  (ml_collections registers those flags from sys.argv)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.cli import common  # pylint: disable=g-import-not-at-top

  config_file = tmp_path / "exp.py"
  config_file.write_text(
      "import ml_collections\n"
      "def get_config():\n"
      "  return ml_collections.ConfigDict({'seed': 1, 'steps': 5})\n")

  class Tool:  # a CLI module's interface
    __name__ = "tool"

    @staticmethod
    def define_flags(flag_values):
      config_flags.DEFINE_config_file("config", flag_values=flag_values)

    @staticmethod
    def run(flag_values, argv):
      del argv
      return 10 * flag_values.config.seed + flag_values.config.steps

  argv_before = list(sys.argv)
  assert common.call(Tool, [f"--config={config_file}", "--config.seed=7"]) == 75
  assert sys.argv == argv_before
