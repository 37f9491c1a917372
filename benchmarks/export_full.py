"""Export the full-size pipelines and record wall time and peak RSS per component and format.

Each export runs in its own process (`edgediff export PIPELINE --fmt F --component C`), so
that the peak RSS, read from the kernel's rusage of that child, is the component's alone.
Prints a Markdown table. Usage: python benchmarks/export_full.py [--pipelines md md-lite]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time


def run(pipeline: str, fmt: str, component: str, out: str) -> dict:
  cmd = [sys.executable, "-m", "edgediff.cli", "export", pipeline, "--fmt", fmt,
         "--component", component, "--out", out, "--force"]
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _, status, usage = os.wait4(proc.pid, 0)
  seconds = time.perf_counter() - start
  err = proc.stderr.read()
  code = os.waitstatus_to_exitcode(status)
  last = [line for line in err.splitlines() if line.startswith(("edgediff", f"[{component}] parity"))]
  return {"pipeline": pipeline, "format": fmt, "component": component, "seconds": seconds,
          "peak_rss_gb": usage.ru_maxrss / 1024**2, "exit": code,
          "note": last[-1] if last else ""}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--pipelines", nargs="+", default=["md", "md-lite"])
  parser.add_argument("--formats", nargs="+", default=["onnx", "tflite"])
  parser.add_argument("--components", nargs="+",
                      default=["text_encoder", "unet", "vae_decoder"])
  args = parser.parse_args()
  print("| pipeline | format | component | wall s | peak RSS GB | exit | result |")
  print("|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as out:
    for pipeline in args.pipelines:
      for fmt in args.formats:
        for component in args.components:
          r = run(pipeline, fmt, component, out)
          print(f"| {r['pipeline']} | {r['format']} | {r['component']} | {r['seconds']:.0f} | "
                f"{r['peak_rss_gb']:.1f} | {r['exit']} | {r['note']} |", flush=True)


if __name__ == "__main__":
  main()
