"""Run an artifact in its real runtime: onnxruntime or the ai_edge_litert Interpreter."""

from typing import Callable

import numpy as np

from edgediff import console

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def onnx_runner(path: str, threads: int = 0) -> Runner:
  import onnxruntime as ort

  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.log_severity_level = 3
  session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]

  def run(feeds):
    return dict(zip(names, session.run(names, feeds)))

  return run


def tflite_runner(path: str, threads: int | None = None) -> Runner:
  from ai_edge_litert.interpreter import Interpreter

  with open(path, "rb") as f:
    content = bytes(f.read())  # the Interpreter wants bytes, not bytearray
  interpreter = Interpreter(model_content=content, num_threads=threads)
  runner = interpreter.get_signature_runner()
  first = [True]

  def run(feeds):
    if first:  # LiteRT applies its delegate, and says so natively, on the first call
      first.clear()
      with console.libraries_quiet():
        return {k: np.array(v) for k, v in runner(**feeds).items()}
    return {k: np.array(v) for k, v in runner(**feeds).items()}

  return run


RUNNERS = {"onnx": onnx_runner, "tflite": tflite_runner}


def load_runner(fmt: str, path: str, threads: int | None = None) -> Runner:
  return RUNNERS[fmt](path, threads) if threads else RUNNERS[fmt](path)


def timed_runs(call: Callable[[], object], runs: int) -> tuple[float, list[float]]:
  """(first call's ms, the next `runs` calls' ms): the one timing loop of edgediff."""
  import time

  times = []
  for _ in range(runs + 1):
    start = time.perf_counter()
    call()
    times.append((time.perf_counter() - start) * 1e3)
  return times[0], times[1:]


def torch_call(module, feeds: dict[str, np.ndarray]) -> np.ndarray:
  """PyTorch as a runtime: the feeds in input order, the one output as an array."""
  import torch

  with torch.no_grad():
    return module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
