"""benchmarks/profile_breakdown.py on a hand-made HLO module and trace:
kernels are charged to the right instruction, source line and pass, and
the busy time is the union of overlapping kernels."""

import gzip
import importlib.util
import json
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks",
                     "profile_breakdown.py")
_spec = importlib.util.spec_from_file_location("profile_breakdown", _PATH)
pb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pb)

HLO = """HloModule jit_step, is_scheduled=true

FileNames
1 "/site-packages/jax/_src/numpy/lax_numpy.py"
2 "/src/project/recurrentgemma_jax/nn/mlp.py"
3 "/src/project/recurrentgemma_jax/nn/attention.py"

FunctionNames
1 "where"
2 "MLPBlock.__call__"
3 "_attend"

FileLocations
1 {file_name_id=1 function_name_id=1 line=10 end_line=10 column=1 end_column=2}
2 {file_name_id=2 function_name_id=2 line=60 end_line=60 column=1 end_column=2}
3 {file_name_id=3 function_name_id=3 line=84 end_line=84 column=1 end_column=2}

StackFrames
1 {file_location_id=2 parent_frame_id=1}
2 {file_location_id=3 parent_frame_id=2}
3 {file_location_id=1 parent_frame_id=2}

ENTRY %main (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  %loop_add_fusion.3 = f32[8]{0} fusion(%p), kind=kLoop, calls=%c, metadata={op_name="jit(step)/jvp()/add" stack_frame_id=1}
  ROOT %input_transpose_fusion.4 = f32[8]{0} fusion(%p), kind=kInput, calls=%d, metadata={op_name="jit(step)/transpose(jvp(jit(_where)))/select_n" stack_frame_id=3}
}
"""


def _write(tmp_path, events):
  (tmp_path / "run.hlo.txt").write_text(HLO)
  trace_dir = tmp_path / "run" / "plugins" / "profile" / "2026"
  trace_dir.mkdir(parents=True)
  meta = [{"ph": "M", "name": "process_name", "pid": 7,
           "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "process_name", "pid": 1,
           "args": {"name": "/host:CPU"}}]
  with gzip.open(trace_dir / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": meta + events}, f)
  return str(tmp_path / "run")


def test_kernels_are_charged_to_instruction_line_and_pass(tmp_path):
  gpu = lambda name, ts, dur: {"ph": "X", "pid": 7, "tid": 1, "name": name,
                               "ts": ts, "dur": dur,
                               "args": {"hlo_op": "command_buffer_1"}}
  events = [
      gpu("loop_add_fusion_3", 0, 1000),
      gpu("input_transpose_fusion_4", 500, 1000),   # overlaps the first
      gpu("nvjet_sm90_tst_128x128", 3000, 2000),     # a cuBLAS call
      {"ph": "X", "pid": 1, "tid": 1, "name": "host work", "ts": 0,
       "dur": 99999},                                # not a GPU event
  ]
  summary = pb.analyze(_write(tmp_path, events), steps=2)
  assert summary["kernels_per_step"] == 1.5
  assert summary["wall_ms"] == pytest.approx(2.5)   # 0 .. 5000 us, 2 steps
  assert summary["busy_ms"] == pytest.approx(1.75)  # 1500 + 2000 us
  lines = summary["tables"]["source line, pass"]
  assert lines["recurrentgemma_jax/nn/mlp.py:60 (MLPBlock.__call__) fwd"] == (
      pytest.approx(0.5))
  # jax's own frame is skipped; the transpose( in the op name marks bwd.
  assert lines["recurrentgemma_jax/nn/attention.py:84 (_attend) bwd"] == (
      pytest.approx(0.5))
  kinds = summary["tables"]["kind"]
  assert kinds["matmul (cuBLAS)"] == pytest.approx(1.0)
  assert kinds["XLA reduction fusion"] == pytest.approx(0.5)
  assert summary["tables"]["HLO instruction"]["loop_add_fusion.3"] == (
      pytest.approx(0.5))


def test_a_trace_without_gpu_kernels_is_a_clear_error(tmp_path):
  with pytest.raises(SystemExit, match="no GPU kernels"):
    pb.analyze(_write(tmp_path, []), steps=1)
