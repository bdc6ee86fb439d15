"""A fresh clone runs its own defaults: nothing it ships reads outside it.

Two checks: no file of the checkout names a folder beside it (such as the
data folder CI happens to have there), and the data-dependent defaults
(experiments/lm.py's corpus through `reproduce run --study=lm`, train, eval
and report) run from a copy of the repository in a temporary folder, with
HOME there too, so that a default reading a file outside the repository
fails here.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import train_testlib

# Built from pieces so that this file does not match itself.
_SHARED = "sha" + "red"
FORBIDDEN = re.compile("|".join([
    r"\.\./" + _SHARED + r"\b",  # the folder beside the checkout
    r"[\"']" + _SHARED + r"[\"']",  # that name as a path component
    "/" + _SHARED + "/data",
    r"\b(?:REPO|ROOT)\.parent\b",  # a folder beside the checkout
    "/wo" + "rk/",  # this development machine's checkout
]))
# Recorded commands of past runs (data, not defaults).
EXEMPT = ("docs/results/",)


def _checkout_files() -> list[str]:
  """What a clone of the committed working tree holds: tracked and new
  (not ignored) files; outside a git checkout, every file but caches."""
  try:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=train_testlib.REPO, capture_output=True, text=True, check=True)
    names = listed.stdout.splitlines()
  except (OSError, subprocess.CalledProcessError):  # e.g. a Bazel sandbox
    names = [str(p.relative_to(train_testlib.REPO))
             for p in train_testlib.REPO.rglob("*")
             if p.is_file() and not {".git", ".venv", "__pycache__"} & set(
                 p.relative_to(train_testlib.REPO).parts)]
  return [n for n in names if (train_testlib.REPO / n).is_file()]


def test_no_file_names_a_folder_outside_the_repository():
  files = _checkout_files()
  assert "experiments/lm.py" in files and "README.md" in files
  found = []
  for name in files:
    if name.startswith(EXEMPT):
      continue
    try:
      text = (train_testlib.REPO / name).read_text(encoding="utf-8")
    except UnicodeDecodeError:  # images
      continue
    for line_no, line in enumerate(text.splitlines(), 1):
      if FORBIDDEN.search(line):
        found.append(f"{name}:{line_no}: {line.strip()}")
  assert not found, "\n".join(found)


def _copy_checkout(dest: pathlib.Path) -> pathlib.Path:
  for name in _checkout_files():
    target = dest / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(train_testlib.REPO / name, target)
  return dest


def _env(clone, home):
  env = train_testlib.env(HOME=str(home), PYTHONPATH=str(clone))
  env.pop("TFDS_DATA_DIR", None)  # the documented default: ~/tensorflow_datasets
  return env


def _run(clone, home, *args):
  return subprocess.run([sys.executable, "-m", *args], cwd=clone,
                        env=_env(clone, home), text=True,
                        capture_output=True, timeout=600)


def test_lm_study_runs_from_a_copy_of_the_repository(tmp_path):
  """About 30 s: one tiny training and length evaluation of the lm study."""
  clone = _copy_checkout(tmp_path / "clone")
  home = tmp_path / "home"
  home.mkdir()
  out = tmp_path / "out"

  # A bad argument fails before any data is prepared.
  bad = _run(clone, home, "recurrentgemma_jax.cli.train",
             "--config=experiments/lm.py:model=griffen",
             f"--workdir={tmp_path / 'bad'}")
  assert bad.returncode == 1, bad.stderr[-2000:]
  (error,) = bad.stderr.strip().splitlines()
  assert error.startswith("error: ") and error.endswith(
      "model='griffen' is not one of griffin, hawk, mqa"), bad.stderr
  assert not (home / "tensorflow_datasets").exists()

  run = _run(clone, home, "recurrentgemma_jax.cli.reproduce", "run",
             "--study=lm", "--models=griffin", "--size=runlocal",
             f"--outdir={out}", "--override=total_steps=2",
             "--override=warmup_steps=1", "--override=eval_every=2",
             "--override=checkpoint_every=2", "--override=log_every=1",
             "--override=eval_batches=1", "--override=seq_len=32",
             "--override=batch_size=4")
  workdir = out / "lm" / "griffin_s0"
  log = (workdir / "log.txt").read_text() if workdir.exists() else ""
  assert run.returncode == 0, run.stdout[-3000:] + log[-3000:]
  assert "lm griffin seed 0: done" in run.stdout
  # The copy's own experiment file and package ran.
  assert f"--config={clone}/experiments/lm.py:model=griffin,runlocal" in log
  config = json.loads((workdir / "config.json").read_text())
  assert config["data"]["source"] == "python" and not config["data"]["files"]

  # Prepared where the docs say: TFDS's default folder in HOME.
  (manifest,) = (home / "tensorflow_datasets" / "local_text").rglob(
      "manifest.json")
  splits = json.loads(manifest.read_text())["splits"]
  assert splits["train"]["bytes"] > 10 * splits["validation"]["bytes"] > 0

  lengths = json.loads((workdir / "length_eval.json").read_text())
  assert [r["seq_len"] for r in lengths["lengths"]] == [32, 64, 128, 256]
  report = _run(clone, home, "recurrentgemma_jax.cli.reproduce", "report",
                f"--outdir={out}")
  assert report.returncode == 0, report.stderr[-2000:]
  summary = json.loads((out / "summary.json").read_text())
  assert set(summary["lm"]["griffin"]["lengths"]) == {"32", "64", "128",
                                                      "256"}
  assert not os.path.exists(tmp_path / _SHARED)
