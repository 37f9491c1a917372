"""Runs TensorFlow's GPU-delegate compatibility analyzer on a .tflite in its own venv (see
edgediff.export.gpu_compat): no edgediff imports, since the venv has only TensorFlow.

usage: python _gpu_analyzer.py MODEL
Prints one JSON object: the TensorFlow version and, per op the analyzer flags, its count and
the analyzer's first reason.
"""

import contextlib
import io
import json
import re
import sys


def main() -> int:
  import tensorflow as tf

  text = io.StringIO()
  with contextlib.redirect_stdout(text):
    tf.lite.experimental.Analyzer.analyze(model_path=sys.argv[1], gpu_compatibility=True)
  # The analyzer lists "  Op#N NAME(...)" lines; a warning line after one is about that op.
  flagged, op = {}, None
  for line in text.getvalue().splitlines():
    match = re.match(r"\s+Op#\d+ (\w+)\(", line)
    if match:
      op = match.group(1)
    elif line.startswith("GPU COMPATIBILITY WARNING:") and "Subgraph#" not in line and op:
      entry = flagged.setdefault(op, {"count": 0, "reason": line.split(": ", 1)[1]})
      entry["count"] += 1
      op = None  # one warning per op
  print(json.dumps({"version": tf.__version__, "flagged": flagged}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
