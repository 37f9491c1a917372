"""Runs an artifact in an old runtime's venv (see edgediff.export.compat): no edgediff
imports, since the venv has only the runtime and numpy.

usage: python _old_runtime.py FORMAT MODEL FEEDS.npz OUTPUTS.npz
FEEDS.npz holds "<sample>/<input>" arrays; OUTPUTS.npz gets "<sample>/<output>". Prints the
runtime's version. Exits 3, with the runtime's message last on stderr, when it raises.
"""

import sys

import numpy as np


def _runner(fmt: str, model: str):
  if fmt == "tflite":
    import tflite_runtime
    from tflite_runtime.interpreter import Interpreter

    runner = Interpreter(model_path=model).get_signature_runner()
    return tflite_runtime.__version__, lambda feeds: runner(**feeds)
  import onnxruntime as ort

  session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]
  return ort.__version__, lambda feeds: dict(zip(names, session.run(names, feeds)))


def main() -> int:
  fmt, model, feeds_path, outputs_path = sys.argv[1:5]
  data = np.load(feeds_path)
  samples: dict[int, dict] = {}
  for key in data.files:
    i, name = key.split("/", 1)
    samples.setdefault(int(i), {})[name] = data[key]
  outputs = {}
  try:
    version, run = _runner(fmt, model)
    for i in sorted(samples):
      for name, value in run(samples[i]).items():
        outputs[f"{i}/{name}"] = np.asarray(value)
  except Exception as e:  # noqa: BLE001 - the runtime refusing the model is the answer
    message = " ".join(str(e).split())[:500]
    print(f"{type(e).__name__}: {message}", file=sys.stderr)
    return 3
  np.savez(outputs_path, **outputs)
  print(version)
  return 0


if __name__ == "__main__":
  sys.exit(main())
