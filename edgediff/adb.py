"""`edgediff adb-bench`: the TFLite benchmark_model tool on an Android phone over ADB.

Pushes the .tflite artifacts of an export and a `benchmark_model` binary that the user
provides (it cannot be fetched here: build it from TensorFlow's
tensorflow/lite/tools/benchmark with bazel, or take the prebuilt
`android_aarch64_benchmark_model` linked from the LiteRT performance-measurement page) to
/data/local/tmp/edgediff on the device, runs it per component with the chosen delegates,
parses its output into the same row schema as `edgediff bench`, and records the device
model, Android version, SoC and battery temperature before and after each component.

Every device command is built with shlex.join from an argument list: user strings (paths,
serials) never reach the device shell unquoted. Host-side adb calls take argument lists.
"""

import dataclasses
import datetime
import os
import re
import shlex
import shutil
import subprocess
import time

from edgediff.errors import EdgediffError

REMOTE_DIR = "/data/local/tmp/edgediff"


def parse_benchmark_output(text: str) -> dict:
  """Numbers from benchmark_model's log (times in ms, memory in MB; None when absent)."""
  out = {"load_ms": None, "first_ms": None, "warmup_avg_ms": None, "avg_ms": None,
         "min_ms": None, "max_ms": None, "std_ms": None, "runs": None,
         "init_memory_mb": None, "overall_memory_mb": None, "peak_memory_mb": None}
  m = re.search(r"Inference timings in us: Init: ([\d.]+), First inference: ([\d.]+), "
                r"Warmup \(avg\): ([\d.e+-]+), Inference \(avg\): ([\d.e+-]+)", text)
  if not m:
    raise EdgediffError("benchmark_model printed no 'Inference timings in us' line; "
                        "its output ends with: " + text.strip()[-300:])
  out["load_ms"], out["first_ms"], out["warmup_avg_ms"], out["avg_ms"] = (
      float(v) / 1e3 for v in m.groups())
  counts = re.findall(r"count=(\d+) first=\d+ curr=\d+ min=(\d+) max=(\d+) avg=([\d.e+-]+) "
                      r"std=(\d+)", text)
  if counts:  # the last count line is the measured run (the first is the warm-up)
    runs, lo, hi, _, std = counts[-1]
    out.update(runs=int(runs), min_ms=int(lo) / 1e3, max_ms=int(hi) / 1e3,
               std_ms=int(std) / 1e3)
  m = re.search(r"Memory footprint delta from the start of the tool \(MB\): "
                r"init=([\d.]+) overall=([\d.]+)", text)
  if m:
    out["init_memory_mb"], out["overall_memory_mb"] = float(m.group(1)), float(m.group(2))
  m = re.search(r"Overall peak memory footprint \(MB\) via periodic monitoring: ([\d.]+)", text)
  if m:
    out["peak_memory_mb"] = float(m.group(1))
  return out


class Device:
  """One device, reached by serial; every call is an argument list."""

  def __init__(self, adb: str, serial: str):
    self.adb = adb
    self.serial = serial

  def _run(self, *args: str, timeout: float = 600) -> str:
    try:
      proc = subprocess.run([self.adb, "-s", self.serial, *args], capture_output=True,
                            text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
      raise EdgediffError(f"adb {args[0]} on {self.serial} timed out after {timeout:.0f} s")
    if proc.returncode != 0:
      raise EdgediffError(f"adb {args[0]} on {self.serial} failed: "
                          f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    return proc.stdout

  def shell(self, argv: list[str], timeout: float = 600) -> str:
    return self._run("shell", shell_command(argv), timeout=timeout)

  def push(self, local: str, remote: str) -> None:
    self._run("push", local, remote)

  def getprop(self, name: str) -> str:
    return self.shell(["getprop", name]).strip()

  def battery_celsius(self) -> float | None:
    m = re.search(r"temperature: (\d+)", self.shell(["dumpsys", "battery"]))
    return int(m.group(1)) / 10 if m else None

  def describe(self) -> dict:
    soc = self.getprop("ro.soc.model") or self.getprop("ro.board.platform")
    return {"serial": self.serial, "model": self.getprop("ro.product.model"),
            "android": self.getprop("ro.build.version.release"), "soc": soc,
            "abi": self.getprop("ro.product.cpu.abi")}


def shell_command(argv: list[str]) -> str:
  """One device shell command line with every argument quoted."""
  return shlex.join(argv)


def find_adb() -> str:
  adb = shutil.which("adb")
  if not adb:
    raise EdgediffError("adb not found on PATH: install Android platform-tools "
                        "(e.g. apt-get install adb) and connect a device with USB debugging")
  return adb


def parse_devices(listing: str) -> dict[str, str]:
  """{serial: state} from `adb devices`: the lines after its header, without the daemon's
  own "* daemon ..." lines; a state may be several words ("no permissions (...)")."""
  lines = listing.splitlines()
  start = next((i + 1 for i, line in enumerate(lines) if line.startswith("List of devices")), 0)
  states = {}
  for line in lines[start:]:
    if not line.strip() or line.startswith("*"):
      continue
    serial, _, state = line.strip().partition("\t") if "\t" in line else line.strip().partition(" ")
    states[serial.strip()] = state.strip()
  return states


def pick_device(adb: str, serial: str | None) -> Device:
  try:
    done = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=60)
  except subprocess.TimeoutExpired:
    raise EdgediffError("adb devices did not answer in 60 s: restart the server (adb "
                        "kill-server) and reconnect the phone") from None
  if done.returncode != 0:
    raise EdgediffError(f"adb devices failed (exit {done.returncode}): "
                        f"{(done.stderr or done.stdout).strip()[-300:]}")
  states = parse_devices(done.stdout)
  if serial and serial not in states:
    raise EdgediffError(f"device {serial} is not connected (adb devices lists "
                        f"{', '.join(states) or 'no device'})")
  if not serial:
    if not states:
      raise EdgediffError("no Android device connected: adb devices lists none; connect a "
                          "phone with USB debugging on, or pass --serial")
    if len(states) > 1:
      raise EdgediffError(f"several devices connected ({', '.join(states)}): pick one with "
                          "--serial")
    serial = next(iter(states))
  state = states[serial]
  if state == "unauthorized":
    raise EdgediffError(f"device {serial} is unauthorized: accept the USB debugging prompt "
                        "on the phone")
  if state.startswith("no permissions"):
    raise EdgediffError(f"device {serial}: no permissions to reach it over USB (udev rules or "
                        f"the plugdev group): adb says {state!r}")
  if state != "device":
    raise EdgediffError(f"device {serial} is {state}: reconnect it (adb reconnect)")
  return Device(adb, serial)


@dataclasses.dataclass(frozen=True)
class BenchSettings:
  """How benchmark_model runs each component."""
  threads: int = 4
  runs: int = 50
  warmup_runs: int = 5
  xnnpack: bool = True
  gpu: bool = False  # the GPU delegate
  nnapi: bool = False  # the NNAPI delegate
  allow_fp16: bool = False  # fp16 compute (and the GPU's precision loss)
  cooldown: float = 30.0  # seconds between components, for the SoC to cool


def benchmark_argv(remote_binary: str, remote_model: str, settings: BenchSettings) -> list[str]:
  argv = [remote_binary, f"--graph={remote_model}", f"--num_threads={settings.threads}",
          f"--warmup_runs={settings.warmup_runs}", f"--num_runs={settings.runs}",
          f"--use_xnnpack={'true' if settings.xnnpack else 'false'}",
          "--report_peak_memory_footprint=true"]
  if settings.gpu:
    argv.append("--use_gpu=true")
  if settings.nnapi:
    argv.append("--use_nnapi=true")
  if settings.allow_fp16:
    argv += ["--allow_fp16=true", "--gpu_precision_loss_allowed=true"]
  return argv


def run(folder: str, benchmark_binary: str, settings: BenchSettings, serial: str | None = None,
        components: list[str] | None = None, log_dir: str | None = None) -> dict:
  """benchmark_model on each component of the TFLite export `folder` (default: all)."""
  from edgediff import manifest as manifest_lib

  if not os.path.isfile(benchmark_binary):
    raise EdgediffError(f"{benchmark_binary}: no such benchmark_model binary; build it "
                        "from tensorflow/lite/tools/benchmark or take the prebuilt "
                        "android_aarch64_benchmark_model from the LiteRT performance docs")
  manifest = manifest_lib.read(folder)
  if manifest is None or manifest.get("format") != "tflite":
    raise EdgediffError(f"{folder}: not a TFLite export folder (no tflite manifest.json)")
  adb = find_adb()
  device = pick_device(adb, serial)
  info = device.describe()
  device.shell(["mkdir", "-p", REMOTE_DIR])
  remote_binary = f"{REMOTE_DIR}/benchmark_model"
  device.push(benchmark_binary, remote_binary)
  device.shell(["chmod", "755", remote_binary])
  rows = []
  for i, component in enumerate(components or list(manifest["components"])):
    entry = manifest["components"][component]
    remote_model = f"{REMOTE_DIR}/{entry['file']}"
    device.push(os.path.join(folder, entry["file"]), remote_model)
    if i:
      time.sleep(settings.cooldown)  # let the SoC cool between components
    before = device.battery_celsius()
    log = device.shell(benchmark_argv(remote_binary, remote_model, settings), timeout=3600)
    after = device.battery_celsius()
    parsed = parse_benchmark_output(log)
    rows.append({"backend": f"tflite-device/{manifest['recipe']}", "component": component,
                 "file_mb": round(entry["bytes"] / 1e6, 3), "median_ms": None,
                 "p90_ms": None, "p95_ms": None, "peak_rss_mb": parsed["peak_memory_mb"],
                 "threads": settings.threads, **parsed, "battery_c_before": before,
                 "battery_c_after": after})
    if log_dir:
      os.makedirs(log_dir, exist_ok=True)
      with open(os.path.join(log_dir, f"{component}.log"), "w") as f:
        f.write(log)
  return {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
          "device": info, "options": dataclasses.asdict(settings), "rows": rows}


# Where the demo app (android_demo/app, package edgediff.demo) looks for an export: its own
# external files folder, which adb can write and the app can read without permissions.
APP_DIR = "/sdcard/Android/data/edgediff.demo/files/export"


def export_files(folder: str) -> list[str]:
  """What the app needs of a TFLite export: the manifest, each component's artifact (and
  external data) and golden file, and the tokenizer's vocab.json and merges.txt."""
  from edgediff import manifest as manifest_lib
  from edgediff.models.text_encoder import TOKENIZER_FILES, tokenizer_dir

  manifest = manifest_lib.read(folder)
  if manifest is None:
    raise EdgediffError(f"{folder}: no manifest.json; point it at an export folder such as "
                        "out/<pipeline>/tflite/<recipe>")
  if manifest.get("format") != "tflite":
    raise EdgediffError(f"{folder}: a {manifest.get('format')} export; the app runs TFLite")
  missing = set(manifest_lib.COMPONENTS) - set(manifest["components"])
  if missing:
    raise EdgediffError(f"{folder}: the export lacks {', '.join(sorted(missing))}; the app "
                        "runs the whole pipeline")
  names = [manifest_lib.MANIFEST]
  for entry in manifest["components"].values():
    names += [entry["file"], *(d["file"] for d in entry.get("external_data", [])),
              entry["golden"]]
  files = [os.path.join(folder, n) for n in names]
  # The export's own tokenizer files map tokens to its text encoder's inputs; an export
  # written before they were shipped takes CLIP's ids, edgediff's own vocabulary.
  tokenizer = folder if "tokenizer" in manifest else tokenizer_dir()
  files += [os.path.join(tokenizer, n) for n in TOKENIZER_FILES]
  absent = [f for f in files if not os.path.isfile(f)]
  if absent:
    raise EdgediffError(f"{absent[0]}: listed by the manifest but missing")
  return files


def push_export(folder: str, serial: str | None = None, remote: str = APP_DIR,
                log=lambda message: None) -> tuple[int, str]:
  """An export where the demo app finds it; returns (files pushed, the device's serial)."""
  files = export_files(folder)
  device = pick_device(find_adb(), serial)
  device.shell(["mkdir", "-p", remote])
  for path in files:
    device.push(path, f"{remote}/{os.path.basename(path)}")
    log(f"pushed {os.path.basename(path)}")
  return len(files), device.serial
