"""The gate in older runtimes: each artifact also runs, on the gate's inputs, in a runtime
that Android apps still bundle, so that one it loads but computes wrongly fails the export.

Each old runtime lives in a virtual environment of its own (its wheels were built against
numpy 1, edgediff runs on numpy 2), made with pip the first time it is needed, under
$EDGEDIFF_RUNTIMES or ~/.cache/edgediff/runtimes. The artifact runs there in a subprocess
(`_old_runtime.py`, which imports nothing of edgediff), feeds and outputs passed as .npz.

A runtime either refuses the artifact (it raises at load or on the first call: the app sees
an error), crashes on it, or runs it; a run is then held to the recipe's gate like the main
runtime's. Only a run that misses the gate fails the export: it is the case an app cannot
see. --skip-runtime NAME leaves a runtime out.
"""

import dataclasses
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import numpy as np

from edgediff import metrics
from edgediff.errors import EdgediffError


@dataclasses.dataclass(frozen=True)
class OldRuntime:
  name: str  # what --skip-runtime and the manifest call it
  fmt: str
  requirements: tuple[str, ...]


OLD_RUNTIMES = (
    # The last tflite-runtime wheel (2024); TF 2.14's kernels, as in apps that bundle it.
    OldRuntime("tflite-runtime-2.14", "tflite", ("tflite-runtime==2.14.0", "numpy<2")),
    # The oldest onnxruntime with Python 3.11 wheels that onnxruntime-android still ships.
    OldRuntime("onnxruntime-1.17", "onnx", ("onnxruntime==1.17.3", "numpy<2")),
)
NAMES = tuple(r.name for r in OLD_RUNTIMES)
_SCRIPT = os.path.join(os.path.dirname(__file__), "_old_runtime.py")
_REFUSED = 3  # _old_runtime.py's exit status when the runtime raises


def for_format(fmt: str, skip: tuple[str, ...] = ()) -> tuple[OldRuntime, ...]:
  return tuple(r for r in OLD_RUNTIMES if r.fmt == fmt and r.name not in skip)


def _home() -> str:
  return os.environ.get("EDGEDIFF_RUNTIMES") or os.path.join(
      os.path.expanduser("~"), ".cache", "edgediff", "runtimes")


def python_of(runtime: OldRuntime, log=print) -> str:
  """The venv's interpreter, the venv made first if it is not there (one process at a time:
  the others wait on a lock, then find it made)."""
  home = _home()
  folder = os.path.join(home, runtime.name)
  python = os.path.join(folder, "bin", "python")
  ready = os.path.join(folder, "requirements.txt")
  wanted = "\n".join(runtime.requirements) + "\n"
  os.makedirs(home, exist_ok=True)
  with open(os.path.join(home, f".{runtime.name}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if os.path.isfile(ready) and open(ready).read() == wanted:
      return python
    log(f"{runtime.name}: installing {' '.join(runtime.requirements)} into {folder} "
        f"(once per machine)")
    tmp = tempfile.mkdtemp(prefix=f".tmp-{runtime.name}-", dir=home)
    try:
      subprocess.run([sys.executable, "-m", "venv", tmp], check=True, capture_output=True)
      pip = subprocess.run([os.path.join(tmp, "bin", "python"), "-m", "pip", "install", "-q",
                            "--disable-pip-version-check", *runtime.requirements],
                           capture_output=True, text=True)
      if pip.returncode:
        why = (pip.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise EdgediffError(f"{runtime.name}: could not be installed ({why}); export without "
                            f"checking it with --skip-runtime {runtime.name}")
      with open(os.path.join(tmp, "requirements.txt"), "w") as f:
        f.write(wanted)
      shutil.rmtree(folder, ignore_errors=True)
      os.replace(tmp, folder)  # the venv's paths are relative to where pyvenv.cfg is
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return python


def run(runtime: OldRuntime, path: str, samples: list[dict[str, np.ndarray]],
        log=print) -> tuple[str, str, list[dict[str, np.ndarray]]]:
  """(status, detail, outputs): "ran" with the runtime's version and its outputs per sample,
  or "refused"/"crashed" with the runtime's one-line reason."""
  python = python_of(runtime, log)
  with tempfile.TemporaryDirectory(prefix=".tmp-compat-", dir=os.path.dirname(path)) as tmp:
    feeds = os.path.join(tmp, "feeds.npz")
    outputs = os.path.join(tmp, "outputs.npz")
    np.savez(feeds, **{f"{i}/{k}": v for i, s in enumerate(samples) for k, v in s.items()})
    done = subprocess.run([python, _SCRIPT, runtime.fmt, path, feeds, outputs],
                          capture_output=True, text=True)
    last = (done.stderr.strip().splitlines() or [""])[-1]
    if done.returncode == _REFUSED:
      return "refused", last, []
    if done.returncode < 0:
      return "crashed", f"killed by {signal.Signals(-done.returncode).name}", []
    if done.returncode:
      return "crashed", f"exit status {done.returncode}: {last}", []
    data = np.load(outputs)
    got = [{} for _ in samples]
    for key in data.files:
      i, name = key.split("/", 1)
      got[int(i)][name] = data[key]
    return "ran", done.stdout.strip(), got


def check(fmt: str, path: str, samples, references, output: str, thresholds,
          skip: tuple[str, ...] = (), log=print) -> dict[str, dict]:
  """Per old runtime of `fmt`: what it did with the artifact at `path` and, where it ran
  it, the gate's numbers and verdict on the same samples and thresholds."""
  out = {}
  for runtime in for_format(fmt, skip):
    status, detail, got = run(runtime, path, samples, log)
    entry = {"status": status}
    if status == "ran":
      report = metrics.compare(runtime.name, references, [g[output] for g in got], thresholds)
      entry.update(version=detail, snr_db=report.snr_db, pearson=report.pearson,
                   ssim=report.ssim, psnr_db=report.psnr_db, passed=report.passed,
                   failures=report.failures)
      entry["status"] = "pass" if report.passed else "wrong"
    else:
      entry["error"] = detail
    out[runtime.name] = entry
  return out


def min_runtime(fmt: str, results: dict[str, dict]) -> str:
  """The oldest checked runtime that computes the artifact right, or what the main one is."""
  for name, entry in results.items():  # OLD_RUNTIMES lists the oldest first
    if entry["status"] == "pass":
      return name
  main = "onnxruntime" if fmt == "onnx" else "ai-edge-litert"
  from importlib import metadata

  return f"{main}-{metadata.version(main)}"


def failures(results: dict[str, dict]) -> list[str]:
  return [f"{name}: loads the artifact but computes it wrongly ({'; '.join(e['failures'])}); "
          f"--skip-runtime {name} accepts that" for name, e in results.items()
          if e["status"] == "wrong"]


def summary(results: dict[str, dict]) -> str:
  parts = []
  for name, e in results.items():
    if e["status"] in ("pass", "wrong"):
      parts.append(f"{name} snr {e['snr_db']:.1f} dB {e['status']}")
    else:
      parts.append(f"{name} {e['status']}")
  return "; ".join(parts)
