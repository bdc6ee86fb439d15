"""benchmarks/loss.py on a small shape: both gradients agree, and the
written-out backward needs fewer temporaries than autodiff (no float32
logits kept, no scatter)."""

import importlib.util
import json
import os

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks",
                     "loss.py")
_spec = importlib.util.spec_from_file_location("loss_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_written_out_backward_agrees_and_needs_less_memory(tmp_path):
  out = tmp_path / "loss.json"
  assert bench.main(["--shape", "2,64,1000", "--runs", "2",
                     "--out", str(out)]) == 0
  report = json.loads(out.read_text())
  rows = {r["impl"]: r for r in report["rows"]}
  assert set(rows) == {"autodiff", "written_out"}
  assert report["info"]["max_grad_diff"] < 1e-2
  assert (rows["written_out"]["temp_bytes"]
          < rows["autodiff"]["temp_bytes"])
