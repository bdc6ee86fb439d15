"""What a user meets first at the command line: help texts, exit codes, one-
line errors, and no start-up noise (libtpu, runpy warnings)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("module", ["train", "evaluate"])
def test_absl_help_exits_0_and_keeps_the_usage_lines(module):
  result = _run("-m", f"recurrentgemma_jax.{module}", "--help")
  assert result.returncode == 0, result.stderr[-2000:]
  # The docstring's usage example keeps its line breaks ("\" continuations).
  assert re.search(rf"python -m recurrentgemma_jax\.{module} [^\n]*\\\n",
                   result.stdout)
  assert "--coordinator_address" in result.stdout
  if module == "train":
    assert "--[no]compile_only" in result.stdout
    assert "--topology" in result.stdout


@pytest.mark.parametrize("override", [[], ["--config.total_steps=5"]])
def test_missing_experiment_file_is_named(override):
  result = _run("-m", "recurrentgemma_jax.train",
                "--config=experiments/selctive_copy.py:runlocal", *override,
                "--workdir=/tmp/rg_never_created")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --config: config file experiments/selctive_copy.py not found")
  assert not os.path.exists("/tmp/rg_never_created")


def test_convert_help_keeps_the_usage_lines_and_lists_the_layouts():
  result = _run("-m", "recurrentgemma_jax.convert", "--help")
  assert result.returncode == 0, result.stderr[-2000:]
  assert re.search(r"python -m recurrentgemma_jax\.convert [^\n]*\\\n",
                   result.stdout)
  assert "--from: <official|hf|workdir>" in result.stdout
  assert "--to: <official|hf>" in result.stdout


def test_sample_help_shows_defaults_without_a_runpy_warning():
  result = _run("-m", "recurrentgemma_jax.sample", "--help")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "RuntimeWarning" not in result.stderr  # 'found in sys.modules'
  text = " ".join(result.stdout.split())
  assert "0 is greedy (argmax)" in text and "(default: 0.0)" in text
  assert "(default: 64)" in text  # max_new_tokens


def test_sample_rejects_bad_prompt_tokens_in_one_line():
  result = _run("-m", "recurrentgemma_jax.sample", "--workdir=/nonexistent",
                "--prompt_tokens=1,x")
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert ("argument --prompt_tokens: expected comma-separated integer token "
          "ids, got '1,x'") in result.stderr


def test_reproduce_run_help_shows_defaults():
  result = _run("-m", "recurrentgemma_jax.reproduce", "run", "--help")
  assert result.returncode == 0, result.stderr[-2000:]
  text = " ".join(result.stdout.split())
  assert "(default: runlocal)" in text and "(default: cpu)" in text
  assert "runs sharing each device (default: 1)" in text


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
