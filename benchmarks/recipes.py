"""PyTorch fp32 against ONNX and TFLite in fp32, fp16 and int8, in one run, on one machine.

  python benchmarks/recipes.py [--pipelines shapes md-lite] [--runs 10] [--keep DIR]

For each pipeline, every (format, recipe) is exported in its own process (`edgediff export`,
parity gate included), then `edgediff bench --json` times every artifact and PyTorch eager
fp32 on the same golden inputs. Printed, as a Markdown table per component: file size and
its ratio to fp32, median latency, the speed-up against PyTorch fp32 measured in the same
run, whether the artifact passed its gate, and the achieved multiply-accumulates per second
against the CPU's peak.

The peak is computed, not measured: cores x max clock x 2 FMA units x fp32 SIMD lanes (16
with AVX-512, 8 with AVX2/FMA, 4 otherwise; from /proc/cpuinfo flags and lscpu's max MHz,
falling back to the current MHz). Two FMA units per core is the usual figure for recent
x86 server cores and an assumption here; int8 kernels can exceed the fp32 peak.
Full-size pipelines are seeded at random (no public weights): latencies and sizes hold,
image quality does not. The calibrated recipes (int8_static, w8a16) are skipped at full
size: their calibration runs the whole float pipeline over 32 prompts.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

from edgediff import counting, specs
from edgediff.quant import recipes as recipes_lib

FULL = tuple((fmt, r) for fmt in recipes_lib.FORMATS for r in recipes_lib.SUPPORTED[fmt]
             if r not in recipes_lib.CALIBRATED)
CALIBRATED = tuple((fmt, r) for fmt in recipes_lib.FORMATS for r in recipes_lib.SUPPORTED[fmt]
                   if r in recipes_lib.CALIBRATED)


def peak_macs_per_second() -> tuple[float, str]:
  with open("/proc/cpuinfo") as f:
    info = f.read()
  flags = set(re.search(r"^flags\s*:(.*)$", info, re.M).group(1).split())
  lanes = 16 if "avx512f" in flags else 8 if {"avx2", "fma"} <= flags else 4
  mhz = None
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    found = re.search(r"CPU max MHz:\s*([\d.]+)", out)
    mhz = float(found.group(1)) if found else None
  except FileNotFoundError:
    pass
  mhz = mhz or max(float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M))
  cores = os.cpu_count() or 1
  peak = cores * mhz * 1e6 * 2 * lanes
  return peak, f"{cores} cores x {mhz / 1e3:.2f} GHz x 2 FMA x {lanes} fp32 lanes"


def export(pipeline: str, fmt: str, recipe: str, components: list[str], out: str) -> bool:
  cmd = [sys.executable, "-m", "edgediff.cli", "export", pipeline, "--fmt", fmt,
         "--quant", recipe, "--out", out]
  for component in components:
    cmd += ["--component", component]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode not in (0, 1):  # 1: exported, but missed the parity gate
    print(f"<!-- {pipeline} {fmt}/{recipe} failed: {proc.stderr.strip()[-300:]} -->")
  return proc.returncode == 0


def macs(pipeline: str, component: str) -> int:
  spec = specs.pipeline_spec(pipeline)
  module = spec.component(component).build(device="meta")
  return counting.count_macs(module, module.input_specs(1, spec.latent_size))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pipelines", nargs="+", default=["shapes", "md-lite"])
  parser.add_argument("--runs", type=int, default=10)
  parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--keep", help="export here and keep the artifacts")
  args = parser.parse_args()
  peak, how = peak_macs_per_second()
  print(f"CPU peak: {peak / 1e9:.0f} GMAC/s ({how})\n")
  with tempfile.TemporaryDirectory() as tmp:
    out = args.keep or tmp
    for pipeline in args.pipelines:
      small = specs.pipeline_spec(pipeline).weights is not None  # the shipped trained models
      components = list(specs.COMPONENTS) if small else ["unet"]
      recipes = FULL + CALIBRATED if small else FULL
      passed = {(fmt, recipe): export(pipeline, fmt, recipe, components, out)
                for fmt, recipe in recipes}
      proc = subprocess.run(
          [sys.executable, "-m", "edgediff.cli", "bench", os.path.join(out, pipeline),
           "--runs", str(args.runs), "--threads", str(args.threads), "--results", "",
           "--json"], capture_output=True, text=True, check=True)
      rows = json.loads(proc.stdout)["rows"]
      for component in components:
        mac = macs(pipeline, component)
        mine = [r for r in rows if r["component"] == component]
        base = next(r for r in mine if r["backend"] == "torch/fp32")
        fp32_mb = {r["backend"].split("/")[0]: r["file_mb"] for r in mine
                   if r["backend"].endswith("/fp32") and r["file_mb"]}
        print(f"### {pipeline} {component} ({mac / 1e9:.2f} GMACs per call)\n")
        print("| backend | MB | of fp32 | median ms | vs PyTorch fp32 | passed | GMAC/s | "
              "of peak |")
        print("|---|---|---|---|---|---|---|---|")
        for r in sorted(mine, key=lambda r: r["backend"]):
          fmt, recipe = r["backend"].split("/")
          size = r["file_mb"]
          share = f"{size / fp32_mb[fmt]:.0%}" if size and fp32_mb.get(fmt) else "-"
          ok = "ref" if fmt == "torch" else "yes" if passed.get((fmt if fmt != "ort" else
                                                                  "onnx", recipe)) else "no"
          rate = mac / (r["median_ms"] / 1e3)
          print(f"| {r['backend']} | {size if size else '-'} | {share} | {r['median_ms']:.2f} | "
                f"{base['median_ms'] / r['median_ms']:.2f}x | {ok} | {rate / 1e9:.1f} | "
                f"{rate / peak:.1%} |")
        print(flush=True)


if __name__ == "__main__":
  main()
