"""Will a phone's GPU delegate take the whole graph? TensorFlow's GPU compatibility analyzer,
op by op, on an exported .tflite.

The analyzer runs from TensorFlow 2.15 in a venv of its own (made with pip the first time,
beside the old runtimes: edgediff.export.compat), because newer TensorFlow releases report
"compatible" even for ops no GPU delegate has (TOPK_V2), and TensorFlow is not one of
edgediff's dependencies. An op it flags runs on the CPU instead, with a copy of its tensors
across at each such boundary.
"""

import json
import os
import subprocess

from edgediff.errors import EdgediffError
from edgediff.export import compat

ANALYZER = compat.OldRuntime("tensorflow-2.15", "tflite",
                             ("tensorflow-cpu==2.15.1", "numpy<2"))
_SCRIPT = os.path.join(os.path.dirname(__file__), "_gpu_analyzer.py")


def analyze(path: str, log=print) -> dict:
  """{"analyzer": "tensorflow-2.15.1", "compatible": bool, "flagged": {op: {"count",
  "reason"}}} for the .tflite at `path`."""
  python = compat.python_of(ANALYZER, log)
  done = subprocess.run([python, _SCRIPT, path], capture_output=True, text=True)
  if done.returncode:
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    raise EdgediffError(f"{path}: TensorFlow's GPU analyzer failed on it ({last})")
  result = json.loads(done.stdout.strip().splitlines()[-1])
  return {"analyzer": f"tensorflow-{result['version']}", "compatible": not result["flagged"],
          "flagged": result["flagged"]}


def flagged_ops(result: dict) -> str:
  """The ops an analyze() result leaves to the CPU, with their counts ("-" for none)."""
  return ", ".join(f"{op} x{e['count']}" for op, e in result["flagged"].items()) or "-"
