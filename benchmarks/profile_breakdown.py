r"""Where a jitted step's device time goes, from a trace and its HLO.

    python benchmarks/profile_breakdown.py [--steps N] DIR/NAME [DIR/NAME ...]

Reads what `benchmarks/train_step.py --profile DIR` (3 steps) or
`benchmarks/sample.py --profile DIR` (`--profile_steps`, pass it as
--steps) writes for each model:
`NAME.hlo.txt` (the compiled module) and the perfetto trace under `NAME/`
(a device trace of a few steps). Every GPU kernel of the trace is tied to
its HLO instruction, and through the instruction's metadata to the JAX
operation and source line that made it. Prints, per step:

* wall time, busy time (the union of kernel intervals) and idle gaps;
* time by kernel kind (matmul library calls, Pallas/Triton kernels, XLA
  fusions, copies);
* time by source file and by source line, and pass (forward, or backward
  where the op name holds `transpose(`), e.g. `nn/mlp.py bwd`;
* the 30 most expensive HLO instructions with their op names.

Only the standard library: the analysis runs anywhere the files are.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$")
_OP_NAME = re.compile(r'op_name="(?P<op>[^"]*)"')
_FRAME = re.compile(r"stack_frame_id=(?P<id>\d+)")
_CALL = re.compile(r'custom_call_target="(?P<target>[^"]*)"')
_TABLE_ROW = re.compile(r"^(?P<id>\d+) (?P<value>.*)$")
_FIELD = re.compile(r"(\w+)=(\d+)")
# Frames in these are library plumbing; a kernel is charged to the first
# frame outside them (the model or optimizer code that made it).
_PLUMBING = ("/jax/", "/jaxlib/", "/flax/nnx/", "/flax/core/",
             "/flax/linen/module.py", "contextlib.py", "functools.py")


def _tables(lines: list[str]) -> dict[str, dict[int, str]]:
  """The FileNames / FunctionNames / FileLocations / StackFrames tables
  printed before the HLO module's computations."""
  tables, current = {}, None
  for line in lines:
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      current = tables.setdefault(line, {})
      continue
    row = _TABLE_ROW.match(line) if current is not None else None
    if row:
      current[int(row["id"])] = row["value"].strip('"')
    elif line and current is not None and not line[0].isdigit():
      current = None
  return tables


def _frame_sources(tables) -> dict[int, str]:
  """Stack frame id -> "file:line (function)" of its first non-plumbing
  frame, innermost first."""
  files, functions = tables.get("FileNames", {}), tables.get("FunctionNames",
                                                             {})
  locations = {i: dict((k, int(v)) for k, v in _FIELD.findall(text))
               for i, text in tables.get("FileLocations", {}).items()}
  frames = {i: dict((k, int(v)) for k, v in _FIELD.findall(text))
            for i, text in tables.get("StackFrames", {}).items()}

  def where(frame_id):
    seen = set()
    while frame_id in frames and frame_id not in seen:
      seen.add(frame_id)
      loc = locations.get(frames[frame_id].get("file_location_id"), {})
      file = files.get(loc.get("file_name_id"), "")
      if file and not any(p in file for p in _PLUMBING):
        return (f"{file}:{loc.get('line')} "
                f"({functions.get(loc.get('function_name_id'), '?')})")
      parent = frames[frame_id].get("parent_frame_id")
      if parent == frame_id:
        break
      frame_id = parent
    return ""

  return {i: where(i) for i in frames}


def hlo_metadata(path: str) -> dict[str, dict[str, str]]:
  """HLO instruction name -> {op, source, target, kind} from a compiled
  module's text (`compiled.as_text()`)."""
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  sources = _frame_sources(_tables(lines))
  out = {}
  for line in lines:
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    rest = m["rest"]
    op, frame, call = (_OP_NAME.search(rest), _FRAME.search(rest),
                       _CALL.search(rest))
    kind = re.search(r"\bkind=(k\w+)", rest)
    out[m["name"]] = {
        "op": op["op"] if op else "",
        "source": sources.get(int(frame["id"]), "") if frame else "",
        "target": call["target"] if call else "",
        "kind": kind.group(1) if kind else "",
    }
  return out


def device_events(trace_dir: str) -> list[dict]:
  """Complete ('X') events on GPU streams of the trace under `trace_dir`."""
  paths = glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"),
                    recursive=True)
  if not paths:
    raise SystemExit(f"no perfetto trace under {trace_dir}")
  with gzip.open(sorted(paths)[-1], "rt", encoding="utf-8") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  gpu_pids = {e["pid"] for e in events
              if e.get("ph") == "M" and e.get("name") == "process_name"
              and "GPU" in str(e.get("args", {}).get("name", ""))}
  return [e for e in events if e.get("ph") == "X" and e["pid"] in gpu_pids
          and e.get("dur", 0) > 0]


def kernel_kind(name: str, info: dict[str, str]) -> str:
  lowered = name.lower()
  if info.get("target", "").startswith("__cublas") or any(
      k in lowered for k in ("gemm", "nvjet", "cutlass", "cublas", "sm90_")):
    return "matmul (cuBLAS)"
  if "triton" in lowered or "pallas" in info.get("target", "") or (
      info.get("target", "") == "__gpu$xla.gpu.triton"):
    return "Pallas/Triton"
  if "memcpy" in lowered or "memset" in lowered or "copy" in lowered:
    return "copy/memset"
  if "reduce" in lowered or info.get("kind") == "kInput":
    return "XLA reduction fusion"
  if "fusion" in lowered or info.get("kind"):
    return "XLA fusion"
  return "other"


def _source(info: dict[str, str], with_line: bool = False) -> str:
  """"recurrentgemma_jax/nn/mlp.py fwd" (or with its line and function)."""
  source = info.get("source", "")
  file = source.split(":", 1)[0]
  for root in ("recurrentgemma_jax/", "pallas_kernels/", "recurrentgemma/",
               "optax/", "benchmarks/"):
    if root in file:
      file = root + file.split(root, 1)[1]
      source = root + source.split(root, 1)[1]
      break
  else:
    file = os.path.basename(file) or "?"
  direction = "bwd" if "transpose(" in info.get("op", "") else "fwd"
  return f"{source if with_line else file} {direction}"


def _busy_us(intervals: list[tuple[float, float]]) -> float:
  """Length of the union of `(start, stop)` intervals."""
  busy, end = 0.0, None
  for start, stop in sorted(intervals):
    if end is None or start > end:
      busy, end = busy + stop - start, stop
    elif stop > end:
      busy, end = busy + stop - end, stop
  return busy


def analyze(prefix: str, steps: int) -> dict:
  """Per-step figures (milliseconds) of the trace and HLO at `prefix`."""
  meta = hlo_metadata(prefix + ".hlo.txt")
  events = device_events(prefix)
  if not events:
    raise SystemExit(f"{prefix}: the trace holds no GPU kernels (it was "
                     "taken without a GPU)")
  tables = {k: collections.Counter() for k in (
      "kind", "source file, pass", "source line, pass", "HLO instruction",
      "kernel name")}
  op_names = {}
  # Kernels are named after their HLO fusion with '.' and '-' as '_'; inside
  # a command buffer (CUDA graph) the trace's hlo_op is the buffer's name.
  by_kernel_name = {re.sub(r"[.\-]", "_", name): name for name in meta}
  for e in events:
    hlo_op = (by_kernel_name.get(e["name"]) or e.get("args", {}).get("hlo_op")
              or e["name"])
    info = meta.get(hlo_op, {})
    kind = kernel_kind(e["name"], info)
    ms = e["dur"] / steps / 1e3
    for table, key in (("kind", kind),
                       ("source file, pass", _source(info)),
                       ("source line, pass", _source(info, with_line=True)),
                       ("HLO instruction", hlo_op),
                       ("kernel name", f"{kind}: {e['name'][:90]}")):
      tables[table][key] += ms
    op_names[hlo_op] = info.get("op", "")[-110:]
  intervals = [(e["ts"], e["ts"] + e["dur"]) for e in events]
  wall = (max(b for _, b in intervals) - min(a for a, _ in intervals))
  return {"name": os.path.basename(prefix),
          "kernels_per_step": len(events) / steps,
          "wall_ms": wall / steps / 1e3,
          "busy_ms": _busy_us(intervals) / steps / 1e3,
          "tables": tables, "op_names": op_names}


def report(summary: dict) -> None:
  busy = summary["busy_ms"]
  print(f"\n== {summary['name']}: {summary['kernels_per_step']:.0f} kernels "
        f"per step, wall {summary['wall_ms']:.3f} ms, busy {busy:.3f} ms, "
        f"idle {summary['wall_ms'] - busy:.3f} ms per step")
  for title, counter in summary["tables"].items():
    print(f"-- by {title} (ms per step, share of busy)")
    for key, ms in counter.most_common(12 if title == "kind" else 30):
      extra = (f"  {summary['op_names'].get(key, '')}"
               if title == "HLO instruction" else "")
      print(f"  {ms:8.3f} {100 * ms / busy:5.1f}%  {key}{extra}")


def main(argv: list[str]) -> int:
  steps = 3  # train_step.py --profile traces 3 steps
  if argv[:1] == ["--steps"]:
    steps, argv = int(argv[1]), argv[2:]
  if not argv:
    raise SystemExit(__doc__)
  for prefix in argv:
    report(analyze(prefix.rstrip("/"), steps))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
