"""notebooks/quickstart.ipynb runs top to bottom on CPU (nbclient).

The parameters cell is shortened for the test (20 training steps, a
temporary workdir); every other cell runs as written and must not fail.
"""

import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


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
  client = nbclient.NotebookClient(
      nb, timeout=300, kernel_name="python3",
      resources={"metadata": {"path": str(NOTEBOOK.parent)}})
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
