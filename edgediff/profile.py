"""Op-level profiles of exported components (`edgediff bench DIR --ops`).

- ONNX (and .ort): onnxruntime's own profiler (SessionOptions.enable_profiling); the kernel
  time of every node, summed per op type over the timed runs (the warm-up run is left out).
- TFLite: the op mix of the graph, and which ops the XNNPACK delegate takes. The LiteRT
  Python interpreter applies XNNPACK by default and lists, after the model's own ops, one
  DELEGATE node per partition it replaced; the ops of each partition are found by walking
  back from the partition's outputs to its inputs. What is left runs on LiteRT's built-in
  kernels, between partitions: many partitions and many ops outside them is what makes a
  quantized model slower than it should be (for example QUANTIZE/DEQUANTIZE pairs around
  ops XNNPACK has no int8 kernel for). litert-benchmark, the runtime's timing tool, has no
  per-op output, hence this walk.
"""

import collections
import json
import os
import tempfile

import numpy as np


def onnx_op_times(path: str, feeds: dict[str, np.ndarray], runs: int, threads: int) -> dict:
  """{"ops": [{op, calls, ms, share}] by time, descending; "total_ms"} per run."""
  import onnxruntime as ort

  with tempfile.TemporaryDirectory() as tmp:
    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tmp, "ort")
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
      session.run(None, feeds)
    with open(session.end_profiling()) as f:
      events = json.load(f)
  model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
  warm_up_end = model_runs[0]["ts"] + model_runs[0]["dur"] if model_runs else -1
  ms, calls = collections.Counter(), collections.Counter()
  for e in events:
    if (e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
        and e["ts"] > warm_up_end):
      op = e.get("args", {}).get("op_name", "?")
      ms[op] += e["dur"] / 1e3 / runs
      calls[op] += 1 / runs
  total = sum(ms.values())
  ops = [{"op": op, "calls": round(calls[op]), "ms": round(t, 3),
          "share": round(t / total, 4) if total else 0.0} for op, t in ms.most_common()]
  return {"ops": ops, "total_ms": round(total, 3)}


def tflite_op_mix(path: str) -> dict:
  """{"ops": {type: count}, "partitions": n, "delegated": n, "outside": {type: count}}."""
  from ai_edge_litert.interpreter import Interpreter

  with open(path, "rb") as f:
    interpreter = Interpreter(model_content=bytes(f.read()))
  interpreter.allocate_tensors()  # the delegate takes its partitions here
  nodes = interpreter._get_ops_details()  # the model's ops, then one DELEGATE per partition
  model_ops = [n for n in nodes if n["op_name"] != "DELEGATE"]
  producer = {t: i for i, n in enumerate(model_ops) for t in n["outputs"]}
  delegated = set()
  partitions = [n for n in nodes if n["op_name"] == "DELEGATE"]
  for partition in partitions:
    boundary = set(int(t) for t in partition["inputs"])
    stack = [int(t) for t in partition["outputs"]]
    while stack:
      op = producer.get(stack.pop())
      if op is None or op in delegated:
        continue
      delegated.add(op)
      stack.extend(int(t) for t in model_ops[op]["inputs"] if t >= 0 and int(t) not in boundary)
  counts = collections.Counter(n["op_name"] for n in model_ops)
  outside = collections.Counter(n["op_name"] for i, n in enumerate(model_ops)
                                if i not in delegated)
  return {"ops": dict(counts.most_common()), "partitions": len(partitions),
          "delegated": len(delegated), "outside": dict(outside.most_common())}
