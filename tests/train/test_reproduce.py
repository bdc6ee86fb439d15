"""The paper-reproduction tools (`recurrentgemma reproduce`, over
`recurrentgemma_jax.paper`: studies, runner, report): commands, argument
errors, a tiny end-to-end study, the figures and tables, and stopping /
resuming with SIGTERM."""

import json
import math
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from recurrentgemma_jax.cli import common
from recurrentgemma_jax.cli import reproduce as reproduce_cli
from recurrentgemma_jax.paper import report
from recurrentgemma_jax.paper import runner
from recurrentgemma_jax.paper import studies
from recurrentgemma_jax.training import checkpointing

import train_testlib

REPO = str(train_testlib.REPO)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _reproduce(args) -> int:
  """`recurrentgemma reproduce ARGS` in this process; its exit code."""
  return common.call(reproduce_cli, args)


def _load_config(flag: str):
  """The config a `--config=FILE:ARG` flag names, loaded as train would."""
  assert flag.startswith("--config=")
  path, _, arg = flag[len("--config="):].partition(":")
  return train_testlib.load_experiment(path).get_config(arg)


@pytest.fixture
def keep_signal_handlers():
  """`reproduce run` installs SIGTERM / SIGINT handlers."""
  saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  yield
  for s, handler in saved.items():
    signal.signal(s, handler)


def test_train_and_eval_commands():
  job = studies.Job("selective_copy", "hawk", 3, "/out/sc/hawk_s3")
  overrides = ["total_steps=5", "lm:total_steps=7",
               "selective_copy:eval_every=2", "data.files=/a:b"]
  cmd = studies.train_command(job, "runlocal", overrides,
                                {"lm": "files=/x.txt"})
  assert cmd == [
      sys.executable, "-m", "recurrentgemma_jax.cli.train",
      f"--config={REPO}/experiments/selective_copy.py:model=hawk,runlocal",
      "--config.seed=3", "--workdir=/out/sc/hawk_s3",
      "--config.total_steps=5",  # every study
      "--config.eval_every=2",  # this study's; lm's left out
      "--config.data.files=/a:b",  # a ':' in the value is no study prefix
  ]
  assert _load_config(cmd[3]).seq_len == 64  # the runlocal size
  paper = studies.train_command(job, "paper", [], {})
  assert paper[3].endswith("selective_copy.py:model=hawk")
  assert _load_config(paper[3]).seq_len == 1024

  lm = studies.Job("lm", "mqa", 0, "/out/lm/mqa_s0")
  cmd = studies.train_command(lm, "paper", overrides,
                                {"lm": "files=/x.txt",
                                 "mqar": "model=griffin"})
  assert cmd[3] == (f"--config={REPO}/experiments/lm.py:"
                    "model=mqa,size=small,files=/x.txt")
  assert cmd[6:] == ["--config.total_steps=5", "--config.total_steps=7",
                     "--config.data.files=/a:b"]
  small = _load_config(studies.config_flag(studies.STUDIES["lm"], "mqa",
                                             "paper"))
  assert (small.seq_len, small.model.width, small.model.kind) == (
      512, 256, "mqa")
  runlocal = studies.config_flag(studies.STUDIES["lm"], "hawk",
                                   "runlocal", "tokenizer=bytes")
  assert runlocal.endswith("lm.py:model=hawk,runlocal,tokenizer=bytes")
  assert _load_config(runlocal).seq_len == 256

  # The study's own result file, the one `report` reads.
  assert studies.eval_command(job, "runlocal") == [
      sys.executable, "-m", "recurrentgemma_jax.cli.evaluate",
      "--workdir=/out/sc/hawk_s3", "--length_multipliers=1",
      "--examples=128", "--length_eval_file=length_eval.json"]
  induction = studies.Job("induction_heads", "griffin", 0, "/w")
  assert studies.eval_command(induction, "paper")[4:] == [
      "--length_multipliers=1,2,4,8,16,32,64", "--examples=512",
      "--length_eval_file=length_eval.json"]
  assert studies.eval_command(lm, "paper")[4:] == [
      "--length_multipliers=1,2,4,8", "--examples=4096",
      "--length_eval_file=length_eval.json", "--per_position"]
  assert studies.eval_command(lm, "runlocal")[5:] == [
      "--examples=128", "--length_eval_file=length_eval.json",
      "--per_position"]


@pytest.mark.parametrize("args, message", [
    (["--study=copy"], "--study='copy': allowed values are"),
    (["--study="], "--study='': allowed values are"),
    (["--models=hawk,rnn"], "--models='hawk,rnn': allowed values are hawk,"),
    (["--seeds=0,x"], "--seeds='0,x': give integers"),
    (["--size=huge"], "--size='huge': allowed values are runlocal, paper"),
    (["--override=copy:total_steps=1"], "--override='copy:total_steps=1': "
     "'copy' is not a study"),
    (["--config_arg=lm"], "--config_arg='lm': expected STUDY:ARGS"),
    (["--config_arg=nope:x=1"], "--config_arg='nope:x=1': expected"),
])
def test_argument_errors(tmp_path, args, message, keep_signal_handlers):
  out = tmp_path / "out"
  with pytest.raises(SystemExit) as e:
    _reproduce(["run", "--outdir", str(out), *args])
  assert str(e.value).startswith("error: ") and message in str(e.value)
  assert not out.exists()  # nothing ran


def test_parser_errors(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    _reproduce(["run", "--outdir", str(tmp_path), "--jobs_per_device=0"])
  assert e.value.code == 1
  assert capsys.readouterr().err == ("error: flag --jobs_per_device=0: 0 is "
                                     "not a positive integer\n")
  assert _reproduce(["report"]) == 2
  assert capsys.readouterr().err == "error: report needs --outdir\n"
  assert _reproduce(["report", "--outdir", str(tmp_path)]) == 1
  assert capsys.readouterr().err == (
      f"error: no finished runs under {tmp_path}\n")
  # Each action takes its own flags; no action, or two, is an error.
  assert _reproduce(["report", "--outdir", str(tmp_path), "--seeds=1"]) == 2
  assert "--seeds not allowed with report" in capsys.readouterr().err
  assert _reproduce(["run", "--outdir", str(tmp_path), "--figures=f"]) == 2
  assert "--figures not allowed with run" in capsys.readouterr().err
  for args in ([], ["plot"], ["run", "report"]):
    assert _reproduce([*args, "--outdir", str(tmp_path)]) == 2
    assert "give one action, run, report or control" in (
        capsys.readouterr().err)


def _records(workdir):
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]


def _complete_steps(workdir):
  ckpt = checkpointing.Checkpointer(str(pathlib.Path(workdir) /
                                        "checkpoints"), keep=3)
  try:
    return ckpt.complete_steps()
  finally:
    ckpt.close()


RUN = ["run", "--study=selective_copy", "--models=hawk,mqa", "--seeds=0",
       "--size=runlocal", "--jobs_per_device=2",
       "--override=total_steps=6", "--override=warmup_steps=1",
       "--override=eval_every=3", "--override=checkpoint_every=3",
       "--override=log_every=3"]


def test_run_rerun_and_report(tmp_path, capsys, keep_signal_handlers):
  out = tmp_path / "out"
  assert _reproduce([*RUN, "--outdir", str(out)]) == 0
  printed = capsys.readouterr().out
  assert f"2 runs on 2 slots (cpu x 2) -> {out}" in printed
  for model in ("hawk", "mqa"):
    assert f"selective_copy {model} seed 0: done" in printed

  last_accuracy = {}
  for model in ("hawk", "mqa"):
    workdir = out / "selective_copy" / f"{model}_s0"
    record = json.loads((workdir / "run.json").read_text())
    assert record["status"] == "done", (workdir / "log.txt").read_text()
    assert (record["study"], record["model"], record["seed"],
            record["size"], record["device"]) == (
                "selective_copy", model, 0, "runlocal", "cpu")
    assert record["train_done"] and record["eval_done"]
    assert record["train_seconds"] > 0 and record["eval_seconds"] > 0
    assert record["train_command"].startswith(
        "python -m recurrentgemma_jax.cli.train --config=experiments/"
        f"selective_copy.py:model={model},runlocal --config.seed=0 ")
    assert "--config.total_steps=6" in record["train_command"]
    assert record["eval_command"].endswith(
        "--length_multipliers=1 --examples=128 "
        "--length_eval_file=length_eval.json")

    records = _records(workdir)
    assert sorted(r["step"] for r in records if "train/loss" in r) == [3, 6]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(math.isfinite(r["eval/loss"]) for r in evals)
    last_accuracy[model] = evals[-1]["eval/accuracy"]
    assert _complete_steps(workdir) == [3, 6]

    lengths = json.loads((workdir / "length_eval.json").read_text())
    assert (lengths["step"], lengths["train_seq_len"]) == (6, 64)
    assert lengths["settings"] == {"multipliers": [1], "examples": 128,
                                   "per_position": False}
    (row,) = lengths["lengths"]
    assert (row["multiplier"], row["seq_len"], row["batch_size"],
            row["examples"], row["tokens"]) == (1, 64, 32, 128, 128 * 8)
    # 128 sequences at 1x are the loop's final evaluation (4 x 32).
    assert row["loss"] == pytest.approx(evals[-1]["eval/loss"], rel=1e-5)
    log = (workdir / "log.txt").read_text()
    assert "step 6/6" in log and "length 64 (1x)" in log

  # Running again: every run is done, nothing is started or rewritten.
  before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  start = time.perf_counter()
  assert _reproduce([*RUN, "--outdir", str(out)]) == 0
  assert time.perf_counter() - start < 10
  assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
  assert capsys.readouterr().out.count(": done (train") == 2

  # The report.
  figures = tmp_path / "figures"
  assert _reproduce(["report", "--outdir", str(out),
                         "--figures", str(figures)]) == 0
  png = figures / "selective_copy_training.png"
  data = png.read_bytes()
  assert data[:8] == PNG_MAGIC and len(data) > 1000
  # One evaluation length: no length or position figures.
  assert sorted(p.name for p in figures.iterdir()) == [png.name]
  summary = json.loads((out / "summary.json").read_text())
  assert set(summary) == {"selective_copy"}
  markdown = (out / "summary.md").read_text()
  assert markdown == capsys.readouterr().out.rstrip("\n") + "\n"
  assert "### Selective copying (`selective_copy`)" in markdown
  for model, label in (("hawk", "Hawk"), ("mqa", "MQA")):
    entry = summary["selective_copy"][model]
    assert entry["final"] == [last_accuracy[model]]
    assert (entry["steps"], entry["seeds"], entry["status"]) == (
        [6], [0], ["done"])
    lengths = json.loads((out / "selective_copy" / f"{model}_s0" /
                          "length_eval.json").read_text())
    assert entry["lengths"] == {"64": [lengths["lengths"][0]["accuracy"]]}
    assert entry["params_m"] > 0
    row = re.search(rf"^\| {label} \| ([0-9.]+)M \| 1 \| 6 \| ([0-9.]+) \|",
                    markdown, re.M)
    assert row, markdown
    assert float(row[1]) == entry["params_m"]
    assert row[2] == f"{last_accuracy[model]:.3f}"


def test_a_failed_run_prints_the_end_of_its_log(tmp_path, capsys,
                                               keep_signal_handlers):
  out = tmp_path / "out"
  missing = tmp_path / "no_such_corpus.txt"
  assert _reproduce([
      "run", "--study=lm", "--models=hawk", "--size=runlocal",
      "--outdir", str(out), f"--config_arg=lm:files={missing}"]) == 1
  printed = capsys.readouterr().out.splitlines()
  (status,) = [i for i, line in enumerate(printed)
               if "lm hawk seed 0: failed" in line]
  tail = printed[status + 1:]
  assert 1 <= len(tail) <= runner.LOG_TAIL_LINES
  assert all(line.startswith("    ") for line in tail)
  # The error itself, which says how to name the text.
  assert tail[-1] == (f"    error: data.files: no file matches "
                      f"'{missing}'; give existing text or .jsonl files as "
                      "files=PATH (globs joined by '+', e.g. "
                      "experiments/lm.py:files=/data/*.txt) or "
                      "--config.data.files=GLOB,GLOB"), tail
  record = json.loads((out / "lm" / "hawk_s0" / "run.json").read_text())
  assert (record["status"], record["returncode"]) == ("failed", 1)
  assert not (out / "lm" / "hawk_s0" / "checkpoints").exists()


def test_log_tail(tmp_path):
  log = tmp_path / "log.txt"
  log.write_text("".join(f"line {i}\n\n" for i in range(30)))
  assert runner.log_tail(str(log), 3) == ["line 27", "line 28", "line 29"]
  assert runner.log_tail(str(tmp_path / "none.txt"))[0].startswith(
      "(no log: ")


def test_run_restores_signal_handlers(tmp_path, keep_signal_handlers):
  workdir = tmp_path / "selective_copy" / "hawk_s0"
  workdir.mkdir(parents=True)
  (workdir / "run.json").write_text(json.dumps(
      {"status": "done", "train_seconds": 1.0, "eval_seconds": 1.0}))
  before = signal.getsignal(signal.SIGINT)
  assert _reproduce(["run", "--study=selective_copy", "--models=hawk",
                         "--outdir", str(tmp_path)]) == 0  # nothing to do
  assert signal.getsignal(signal.SIGINT) is before


def _fake_run(root, model, seed, accuracy_by_step, lengths):
  """A finished lm run as reproduce leaves it, written by hand."""
  workdir = root / "lm" / f"{model}_s{seed}"
  workdir.mkdir(parents=True)
  (workdir / "run.json").write_text(json.dumps({
      "study": "lm", "model": model, "seed": seed, "status": "done",
      "train_seconds": 120.0, "train_command": "python -m ...",
  }))
  (workdir / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "eval/loss": v}) + "\n"
      for s, v in accuracy_by_step.items()))
  (workdir / "log.txt").write_text("lm: 4.62M parameters, ...\n")
  (workdir / "length_eval.json").write_text(json.dumps({
      "step": max(accuracy_by_step), "train_seq_len": 4,
      "lengths": [{"multiplier": m, "seq_len": 4 * m, "loss": loss,
                   "per_position_loss": [loss] * (4 * m),
                   "per_position_tokens": [2.0] * (4 * m)}
                  for m, loss in lengths.items()]}))


def test_report_of_several_seeds_and_lengths(tmp_path, capsys):
  _fake_run(tmp_path, "griffin", 0, {10: 2.5, 20: 2.0}, {1: 2.0, 2: 2.2})
  _fake_run(tmp_path, "griffin", 1, {10: 2.7, 20: 1.8}, {1: 1.8, 2: 2.4})
  _fake_run(tmp_path, "hawk", 0, {10: 3.0, 20: 2.6}, {1: 2.6})
  text = report.write_report(str(tmp_path), str(tmp_path / "fig"))
  for name in ("lm_training.png", "lm_lengths.png", "lm_positions.png",
               "lm_positions_by_length.png"):
    assert (tmp_path / "fig" / name).read_bytes()[:8] == PNG_MAGIC
  summary = json.loads((tmp_path / "summary.json").read_text())["lm"]
  assert summary["griffin"]["final"] == [2.0, 1.8]
  assert summary["griffin"]["lengths"] == {"4": [2.0, 1.8], "8": [2.2, 2.4]}
  assert summary["hawk"]["lengths"] == {"4": [2.6]}
  # Mean ± standard deviation over seeds; the length table's means.
  assert "| Griffin | 4.62M | 2 | 20 | 1.900 ± 0.141 | 2.0 |" in text
  assert "| Hawk | 4.62M | 1 | 20 | 2.600 | 2.0 |" in text
  assert "| model | 4 | 8 |" in text
  assert "| Griffin | 1.900 | 2.300 |" in text
  assert "| Hawk | 2.600 | - |" in text
  assert (tmp_path / "summary.md").read_text() == text


def test_seeds_pool_position_by_position_weighted_by_tokens():
  # Seeds may score different positions (None / 0 tokens where one did not).
  rows = [{"per_position_loss": [1.0, None, 3.0],
           "per_position_tokens": [1, 0, 2]},
          {"per_position_loss": [2.0, 4.0, None, 9.0],
           "per_position_tokens": [3, 1, 0, 5]}]
  pooled = report._pool_positions(rows)  # pylint: disable=protected-access
  assert pooled["per_position_tokens"] == [4, 1, 2]  # the common prefix
  assert pooled["per_position_loss"] == pytest.approx(
      [(1.0 * 1 + 2.0 * 3) / 4, 4.0, 3.0])


def test_smoothed_positions_are_token_weighted_bin_means():
  # 8 positions, 3 log-spaced bins: [0, 2), [2, 4), [4, 8).
  row = {"per_position_loss": [1.0, None, 2.0, 4.0, None, 3.0, 1.0, 5.0],
         "per_position_tokens": [2, 0, 1, 3, 0, 1, 1, 0]}
  xs, ys = report.smoothed_positions(row, bins=3)
  assert xs == [1.5, 3.5, 6.5]  # bin centres, 1-based positions
  assert ys == pytest.approx([1.0, (2 * 1 + 4 * 3) / 4, (3 + 1) / 2])
  # A bin without scored tokens is left out.
  row = {"per_position_loss": [1.0, 3.0, None, None, 2.0, 2.0, 2.0, 2.0],
         "per_position_tokens": [1, 3, 0, 0, 1, 1, 1, 1]}
  xs, ys = report.smoothed_positions(row, bins=3)
  assert xs == [1.5, 6.5]
  assert ys == pytest.approx([(1 + 9) / 4, 2.0])
  # The default 48 bins over 2048 positions: increasing centres, and a
  # constant loss stays constant.
  row = {"per_position_loss": [0.5] * 2048,
         "per_position_tokens": [3.0] * 2048}
  xs, ys = report.smoothed_positions(row)
  assert xs[0] == 1.0 and xs == sorted(set(xs)) and len(xs) <= 48
  assert xs[-1] > 1024 and ys == pytest.approx([0.5] * len(xs))


def _wait_for(path, pattern, proc, timeout):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if path.exists() and re.search(pattern, path.read_text(), re.M):
      return True
    time.sleep(0.2)
  return False


@pytest.mark.slow
def test_sigterm_stops_runs_at_a_checkpoint_and_run_resumes(tmp_path):
  """SIGTERM to `reproduce run` reaches the training run, which saves and
  exits; the run is marked stopped and the next `run` resumes it. Slow
  (about a minute of CPU): run with `bash scripts/test.sh -m slow`."""
  out = tmp_path / "out"
  workdir = out / "selective_copy" / "hawk_s0"
  log = workdir / "log.txt"
  command = [sys.executable, "-m", "recurrentgemma_jax.cli.reproduce", "run",
             "--study=selective_copy", "--models=hawk", "--seeds=0",
             "--size=runlocal", f"--outdir={out}",
             "--override=total_steps=400", "--override=checkpoint_every=1000",
             "--override=eval_every=1000", "--override=log_every=1"]

  def run_and_stop(pattern):
    with open(tmp_path / "stdout.txt", "w") as stdout:
      proc = subprocess.Popen(command, env=train_testlib.env(), cwd=REPO,
                              stdout=stdout, stderr=subprocess.STDOUT)
    try:
      assert _wait_for(log, pattern, proc, 300), (
          log.read_text() if log.exists() else "no log.txt")
      proc.send_signal(signal.SIGTERM)
      return proc.wait(timeout=60)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()

  def logged_steps():
    return sorted(r["step"] for r in _records(workdir) if "train/loss" in r)

  # (The orchestrator itself exits 0 after a stop today; 143 would suit
  # schedulers better.)
  assert run_and_stop(r"^step \d+/400 ") in (0, 143)
  assert "hawk seed 0: stopped" in (tmp_path / "stdout.txt").read_text()
  record = json.loads((workdir / "run.json").read_text())
  assert record["status"] == "stopped" and record["returncode"] == 143
  assert "train_done" not in record
  stopped_at = logged_steps()[-1]
  assert stopped_at < 400
  assert f"preempted: saved step {stopped_at}" in log.read_text()
  assert _complete_steps(workdir) == [stopped_at]

  # Running again resumes from that checkpoint (and is stopped again).
  assert run_and_stop(rf"^step {stopped_at + 1}/400 ") in (0, 143)
  assert f"resuming from step {stopped_at}" in log.read_text()
  again = json.loads((workdir / "run.json").read_text())
  assert again["status"] == "stopped"
  assert again["started"] == record["started"]
  assert again["train_seconds"] > record["train_seconds"]
  assert _complete_steps(workdir)[-1] > stopped_at
  steps = logged_steps()
  assert steps == sorted(set(steps)) == list(range(1, steps[-1] + 1))


def test_study_all_leaves_out_the_official_control_unless_named():
  """The control needs the official package, which is not a dependency."""
  from recurrentgemma_jax.cli import reproduce as reproduce_cli  # pylint: disable=g-import-not-at-top
  from recurrentgemma_jax.paper import studies  # pylint: disable=g-import-not-at-top
  size = studies.STUDIES["official_control"].sizes[0]
  every = reproduce_cli.chosen_studies("all", size, ["griffin"])
  assert "official_control" not in every and every
  assert reproduce_cli.chosen_studies("official_control", size,
                                      ["griffin"]) == ["official_control"]
