"""The BUILD files build: `bazel query`, `bazel build` and `bazel test`.

Runs the Bazel that Debian ships (`apt-get install bazel-bootstrap`,
Bazel 4.2.3; `.ci/run` installs it) offline: WORKSPACE maps the rule
repositories Bazel's own tools load to the shims in tools/bazel/, and the
Python targets use the native rules with this test's interpreter (the
venv, found as `python3` on PATH), so no rule set or wheel is downloaded.
Skipped only where no `bazel` is on PATH. About a minute on 2 cores.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Pure-Python test targets cheap enough to run under Bazel too.
BAZEL_TESTS = ("//tests:test_build_coverage", "//tests/model:test_config")

pytestmark = pytest.mark.skipif(shutil.which("bazel") is None,
                                reason="no bazel on PATH (apt-get install "
                                "bazel-bootstrap)")


@pytest.fixture(scope="module")
def bazel(tmp_path_factory):
  """Runs `bazel ARGS` in the repository with its own output base."""
  output_base = tmp_path_factory.mktemp("bazel_output_base")
  env = {**os.environ,
         "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}

  def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bazel", f"--output_base={output_base}", *args], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=900, check=False)

  yield run
  run("shutdown")


def _check(result: subprocess.CompletedProcess) -> str:
  assert result.returncode == 0, result.stderr[-4000:]
  return result.stdout


def test_every_target_is_found_builds_and_the_pure_python_tests_pass(bazel):
  targets = _check(bazel("query", "//...")).split()
  assert "//recurrentgemma_jax:model" in targets
  assert set(BAZEL_TESTS) <= set(targets)
  # --symlink_prefix=/: no bazel-* links in the checkout (the rest of the
  # suite walks it while this runs).
  _check(bazel("build", "--symlink_prefix=/", "--keep_going", "//..."))
  out = bazel("test", "--symlink_prefix=/", "--test_output=errors",
              "--test_env=JAX_PLATFORMS=cpu", *BAZEL_TESTS)
  _check(out)
  assert f"{len(BAZEL_TESTS)} tests pass" in out.stdout + out.stderr

