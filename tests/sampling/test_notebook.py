"""notebooks/quickstart.ipynb runs top to bottom on CPU (nbclient).

The parameters cell is shortened for the test (20 training steps, a
temporary workdir); every other cell runs as written and must not fail. The
kernel starts outside the repository: the notebook finds its checkout by
itself.
"""

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def test_notebook_has_its_own_workdir():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = {}
  exec(nb.cells[1].source, params)  # pylint: disable=exec-used
  quickstart = (ROOT / "scripts" / "quickstart.sh").read_text()
  assert "/tmp/rg_quickstart}" in quickstart  # the script's default workdir
  assert params["WORKDIR"] != "/tmp/rg_quickstart"
  assert not params["WORKDIR"].startswith("/tmp/rg_quickstart/")


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params = nb.cells[1]
  assert "TRAIN_STEPS =" in params.source and "WORKDIR =" in params.source
  params.source = (f"TRAIN_STEPS = 20\n"
                   f"WORKDIR = {str(tmp_path / 'run')!r}\n")
  # The kernel inherits the environment: CPU only, the checkout importable,
  # quick XLA compiles (the notebook's numbers do not matter here).
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(ROOT), os.environ.get("PYTHONPATH", "")]))
  outside = tmp_path / "elsewhere"  # the kernel's working folder
  outside.mkdir()
  client = nbclient.NotebookClient(
      nb, timeout=300, kernel_name="python3",
      resources={"metadata": {"path": str(outside)}})
  client.execute()  # raises CellExecutionError if any cell fails
  outputs = "".join(
      o.get("text", "") for c in nb.cells if c.cell_type == "code"
      for o in c.get("outputs", []))
  assert "logits (2, 4, 16)" in outputs
  assert "copied-token accuracy" in outputs
  assert "in two calls:" in outputs
  images = [o for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert images, "the loss plot was not displayed"
  assert (tmp_path / "run" / "curves.png").is_file()
