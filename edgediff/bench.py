"""`edgediff bench DIR`: host latency and memory of exported components, per backend.

Each measurement runs in its own process (`python -m edgediff.bench worker ...`) so that its
peak RSS, read from the kernel's rusage of that child, is its own. The worker times the
runtime on the golden inputs with a small loop of its own, the same loop for every backend:
`litert-benchmark` (shipped with ai-edge-litert) fills inputs with random values, which are
out-of-vocabulary token ids for the text encoder (it fails), pip's onnxruntime ships no
perf-test tool, and PyTorch has none for eager modules.
"""

import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from edgediff import manifest as manifest_lib
from edgediff.errors import EdgediffError

SCHEMA = ("backend", "component", "file_mb", "load_ms", "first_ms", "median_ms", "p90_ms",
          "p95_ms", "peak_rss_mb", "runs", "threads")


def machine() -> dict:
  cpu = platform.processor()
  if os.path.isfile("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else cpu
  return {"host": platform.node(), "platform": platform.platform(), "cpu": cpu,
          "cores": os.cpu_count(),
          "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)}


def _child(cmd: list[str]) -> tuple[str, float]:
  """(stdout, peak RSS in MB) of a child process; raises on failure."""
  with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out.seek(0)
    err.seek(0)
    if os.waitstatus_to_exitcode(status) != 0:
      raise EdgediffError(f"{' '.join(cmd[:4])} ... failed: {err.read().strip()[-300:]}")
    return out.read(), usage.ru_maxrss / 1024


def _worker_cmd(backend: str, folder: str, component: str, runs: int, threads: int):
  return [sys.executable, "-m", "edgediff.bench", "worker", backend, folder, component,
          str(runs), str(threads)]


def worker(backend: str, folder: str, component: str, runs: int, threads: int) -> dict:
  """Load, first run, then `runs` timed runs on the golden inputs; prints JSON."""
  from edgediff import runtimes

  manifest = manifest_lib.read(folder)
  entry = manifest["components"][component]
  feeds, _ = manifest_lib.golden_feeds(folder, entry)
  start = time.perf_counter()
  if backend == "torch":
    import torch

    from edgediff import pipeline

    torch.set_num_threads(threads)
    module = pipeline.open_source(manifest["source"]).build(component)
    nhwc = manifest_lib.is_nhwc(entry)
    feeds = {k: manifest_lib.from_layout(v, nhwc) for k, v in feeds.items()}
    run = functools.partial(runtimes.torch_call, module, feeds)
  else:
    path = os.path.join(folder, entry["ort"] if backend == "ort" else entry["file"])
    run = functools.partial(runtimes.load_runner("onnx" if backend == "ort" else backend,
                                                 path, threads=threads), feeds)
  load_ms = (time.perf_counter() - start) * 1e3
  first_ms, times = runtimes.timed_runs(run, runs)
  return {"load_ms": load_ms, "first_ms": first_ms, "median_ms": statistics.median(times),
          "p90_ms": float(np.percentile(times, 90)), "p95_ms": float(np.percentile(times, 95))}


def bench_folder(folder: str, runs: int, threads: int, torch_done: set) -> list[dict]:
  """Rows for every component and backend of one export; PyTorch once per source."""
  from edgediff.export import exporter

  manifest = manifest_lib.read(folder)
  rows = []
  for component, entry in manifest["components"].items():
    backends = [manifest["format"]] + (["ort"] if entry.get("ort") else [])
    reference = (json.dumps(manifest["source"], sort_keys=True), component)
    if reference not in torch_done:
      torch_done.add(reference)
      backends.append("torch")
    for backend in backends:
      file = entry.get("ort") if backend == "ort" else None if backend == "torch" else entry["file"]
      out, rss = _child(_worker_cmd(backend, folder, component, runs, threads))
      row = json.loads(out.strip().splitlines()[-1])
      row["peak_rss_mb"] = round(rss, 1)
      label = "torch/fp32" if backend == "torch" else f"{backend}/{manifest['recipe']}"
      rows.append({"backend": label, "component": component, "folder": folder,
                   "batch": manifest["batch"],
                   "file_mb": round(exporter.artifact_bytes(os.path.join(folder, file)) / 1e6, 3)
                   if file else None, "runs": runs, "threads": threads,
                   **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}})
  return rows


def pipeline_seconds(rows: list[dict], steps: int, guidance: bool) -> dict[str, float]:
  """Time per image per backend: text encoder + steps x UNet + decoder. With guidance a
  batch-1 export calls the text encoder and the UNet twice (unconditional, conditional); a
  batch-2 (--cfg) export does both branches in each call, which its timings already hold."""
  out = {}
  for backend in {r["backend"] for r in rows}:
    mine = [r for r in rows if r["backend"] == backend]
    med = {r["component"]: r["median_ms"] for r in mine}
    if set(med) == set(manifest_lib.COMPONENTS):
      calls = 2 if guidance and max(r.get("batch", 1) for r in mine) == 1 else 1
      out[backend] = round((calls * med["text_encoder"] + steps * calls * med["unet"]
                            + med["vae_decoder"]) / 1e3, 4)
  return out


def append_results(path: str, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def op_profiles(folder: str, runs: int, threads: int) -> list[dict]:
  """Per component of one export: ORT's per-op times (ONNX, and the .ort file when there is
  one) or the TFLite op mix and XNNPACK partitions (edgediff.profile)."""
  from edgediff import profile

  manifest = manifest_lib.read(folder)
  out = []
  for component, entry in manifest["components"].items():
    label = {"folder": folder, "component": component, "recipe": manifest["recipe"]}
    if manifest["format"] == "tflite":
      out.append({**label, "backend": "tflite",
                  **profile.tflite_op_mix(os.path.join(folder, entry["file"]))})
      continue
    feeds, _ = manifest_lib.golden_feeds(folder, entry)
    for backend, file in (("onnx", entry["file"]), ("ort", entry.get("ort"))):
      if file:
        out.append({**label, "backend": backend, **profile.onnx_op_times(
            os.path.join(folder, file), feeds, runs, threads)})
  return out


def run_bench(folders: list[str], runs: int, threads: int, steps: int, guidance: bool,
              results_file: str | None, ops: bool = False) -> dict:
  torch_done = set()
  rows = [r for folder in folders for r in bench_folder(folder, runs, threads, torch_done)]
  record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "machine": machine(), "steps": steps, "guidance": guidance, "rows": rows,
            "seconds_per_image": pipeline_seconds(rows, steps, guidance)}
  if ops:
    record["ops"] = [p for folder in folders for p in op_profiles(folder, runs, threads)]
  if results_file:
    append_results(results_file, record)
  return record


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
  _, _, backend, folder, component, runs, threads = sys.argv
  print(json.dumps(worker(backend, folder, component, int(runs), int(threads))))
