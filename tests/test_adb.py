import os
import shlex
import stat

import pytest

from edgediff import adb, cli

# benchmark_model's log, in the documented format (TFLite performance-measurement docs).
BENCHMARK_LOG = """\
STARTING!
Log parameter values verbosely: [0]
Num threads: [4]
Graph: [/data/local/tmp/edgediff/unet.tflite]
Use xnnpack: [1]
Loaded model /data/local/tmp/edgediff/unet.tflite
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
The input model file size (MB): 98.7654
Initialized session in 812.345ms.
Running benchmark for at least 5 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=5 first=451234 curr=401234 min=399876 max=451234 avg=411234 std=19876

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=402345 curr=398765 min=395432 max=409876 avg=400123 std=2345

Inference timings in us: Init: 812345, First inference: 451234, Warmup (avg): 411234, Inference (avg): 400123
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
Memory footprint delta from the start of the tool (MB): init=150.5 overall=210.25
Overall peak memory footprint (MB) via periodic monitoring: 230.75
"""


def test_parser_reads_the_documented_output():
  out = adb.parse_benchmark_output(BENCHMARK_LOG)
  assert out["load_ms"] == pytest.approx(812.345)
  assert out["first_ms"] == pytest.approx(451.234)
  assert out["warmup_avg_ms"] == pytest.approx(411.234)
  assert out["avg_ms"] == pytest.approx(400.123)
  assert (out["runs"], out["min_ms"], out["max_ms"], out["std_ms"]) == (
      50, pytest.approx(395.432), pytest.approx(409.876), pytest.approx(2.345))
  assert (out["init_memory_mb"], out["overall_memory_mb"], out["peak_memory_mb"]) == (
      150.5, 210.25, 230.75)


def test_parser_refuses_output_without_timings():
  with pytest.raises(adb.EdgediffError, match="no 'Inference timings in us' line"):
    adb.parse_benchmark_output("ERROR: Could not open '/data/local/tmp/x.tflite'.\n")


def test_device_commands_are_quoted():
  args = ["/data/local/tmp/edgediff/benchmark_model", "--graph=/data/x; rm -rf /sdcard",
          "it's $(reboot)"]
  line = adb.shell_command(args)
  assert shlex.split(line) == args  # the device shell sees exactly these arguments
  assert "'--graph=/data/x; rm -rf /sdcard'" in line


def _fake_adb(tmp_path, devices_output: str):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  script = bin_dir / "adb"
  script.write_text(f"#!/bin/sh\nprintf '{devices_output}'\n")
  script.chmod(script.stat().st_mode | stat.S_IEXEC)
  return str(bin_dir)


def _export_folder(tmp_path):
  folder = tmp_path / "export"
  folder.mkdir()
  (folder / "manifest.json").write_text(
      '{"format": "tflite", "recipe": "fp32", "components": {}}')
  binary = tmp_path / "benchmark_model"
  binary.write_text("")
  return str(folder), str(binary)


@pytest.mark.parametrize("devices,message", [
    (None, "adb not found on PATH"),
    ("List of devices attached\\n\\n", "no Android device connected"),
    ("List of devices attached\\nR58M123 unauthorized\\n", "device R58M123 is unauthorized"),
    ("List of devices attached\\nR58M123 offline\\n", "device R58M123 is offline"),
])
def test_no_usable_device_exits_non_zero(tmp_path, monkeypatch, capsys, devices, message):
  folder, binary = _export_folder(tmp_path)
  empty = tmp_path / "empty"
  empty.mkdir()
  monkeypatch.setenv("PATH", _fake_adb(tmp_path, devices) if devices else str(empty))
  code = cli.main(["adb-bench", folder, "--benchmark-binary", binary])
  assert code == 2 and message in capsys.readouterr().err


def test_missing_serial_is_named(tmp_path, monkeypatch, capsys):
  folder, binary = _export_folder(tmp_path)
  monkeypatch.setenv("PATH", _fake_adb(tmp_path, "List of devices attached\\nAAA device\\n"))
  assert cli.main(["adb-bench", folder, "--benchmark-binary", binary, "--serial", "BBB"]) == 2
  assert "device BBB is not connected" in capsys.readouterr().err


def test_missing_binary_is_named(tmp_path, capsys):
  folder, _ = _export_folder(tmp_path)
  missing = os.path.join(str(tmp_path), "nope", "benchmark_model")
  assert cli.main(["adb-bench", folder, "--benchmark-binary", missing]) == 2
  assert f"{missing}: no such benchmark_model binary" in capsys.readouterr().err


def test_script_in_android_demo_runs(tmp_path, capsys):
  import runpy
  import sys

  folder, _ = _export_folder(tmp_path)
  script = os.path.join(os.path.dirname(__file__), "..", "android_demo", "scripts",
                        "adb_benchmark.py")
  argv = sys.argv
  sys.argv = [script, folder, "--benchmark-binary", str(tmp_path / "missing")]
  try:
    with pytest.raises(SystemExit) as exit_info:
      runpy.run_path(script, run_name="__main__")
  finally:
    sys.argv = argv
  assert exit_info.value.code == 2
  assert "no such benchmark_model binary" in capsys.readouterr().err


def test_adb_push_sends_what_the_app_reads(tmp_path, monkeypatch, capsys):
  import json

  folder = str(tmp_path / "export")  # the files an export writes, as its manifest lists them
  os.makedirs(folder)
  components = {c: {"file": f"{c}.tflite", "golden": f"{c}_golden.npz"}
                for c in ("text_encoder", "unet", "vae_decoder")}
  with open(os.path.join(folder, "manifest.json"), "w") as f:
    json.dump({"format": "tflite", "recipe": "fp32", "components": components}, f)
  for entry in components.values():
    for name in (entry["file"], entry["golden"]):
      open(os.path.join(folder, name), "wb").close()
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "calls"
  script = bin_dir / "adb"  # records its arguments; lists one device
  script.write_text("#!/bin/sh\necho \"$@\" >> " + shlex.quote(str(calls)) + "\n"
                    "[ \"$1\" = devices ] && printf 'List of devices attached\\nR58M device\\n'\n"
                    "exit 0\n")
  script.chmod(script.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", str(bin_dir))
  assert cli.main(["adb-push", folder]) == 0
  pushed = [line.split()[4] for line in calls.read_text().splitlines() if " push " in line]
  expected = {"manifest.json", "vocab.json", "merges.txt"} | {
      f"{c}{ext}" for c in ("text_encoder", "unet", "vae_decoder")
      for ext in (".tflite", "_golden.npz")}
  assert {os.path.basename(p) for p in pushed} == expected
  assert all(p.startswith(adb.APP_DIR + "/") for p in pushed)
  os.remove(os.path.join(folder, "unet_golden.npz"))
  assert cli.main(["adb-push", folder]) == 2
  assert "unet_golden.npz: listed by the manifest but missing" in capsys.readouterr().err


def test_devices_listing_with_daemon_lines_and_multi_word_states():
  listing = ("* daemon not running; starting now at tcp:5037\n* daemon started successfully\n"
             "List of devices attached\nR58M\tdevice\n0123ABC\tno permissions (user in plugdev "
             "group; are your udev rules wrong?); see [http://developer.android.com/tools/device.html]"
             "\nemulator-5554\toffline\n\n")
  states = adb.parse_devices(listing)
  assert set(states) == {"R58M", "0123ABC", "emulator-5554"}
  assert states["R58M"] == "device" and states["0123ABC"].startswith("no permissions (user")


@pytest.mark.parametrize("script, message", [
    ("printf '* daemon started successfully\\nList of devices attached\\n"
     "0123ABC\\tno permissions (user in plugdev group)\\n'",
     "device 0123ABC: no permissions to reach it over USB"),
    ("echo 'error: could not install *smartsocket* listener' >&2; exit 1",
     "adb devices failed (exit 1): error: could not install"),
])
def test_adb_refusals_are_one_line(tmp_path, monkeypatch, capsys, script, message):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "adb").write_text(f"#!/bin/sh\n{script}\n")
  (bin_dir / "adb").chmod(0o755)
  monkeypatch.setenv("PATH", str(bin_dir))
  folder, binary = _export_folder(tmp_path)
  assert cli.main(["adb-bench", folder, "--benchmark-binary", binary]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0], err


def test_adb_that_does_not_answer_is_one_line(tmp_path, monkeypatch):
  import subprocess

  def hang(*args, **kwargs):
    raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))

  monkeypatch.setattr(adb.subprocess, "run", hang)
  with pytest.raises(adb.EdgediffError, match="adb devices did not answer in 60 s"):
    adb.pick_device("adb", None)


def test_adb_bench_runs_each_component_with_its_settings(tmp_path, monkeypatch, capsys):
  import json

  folder, binary = _export_folder(tmp_path)
  entry = {"file": "unet.tflite", "bytes": 98765432}
  with open(os.path.join(folder, "manifest.json"), "w") as f:
    json.dump({"format": "tflite", "recipe": "fp16", "components": {"unet": entry}}, f)
  open(os.path.join(folder, "unet.tflite"), "wb").close()
  log = tmp_path / "benchmark.log"
  log.write_text(BENCHMARK_LOG)
  calls = tmp_path / "calls"
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  script = bin_dir / "adb"  # one device; benchmark_model's documented log; a battery at 31.2 C
  script.write_text(
      "#!/bin/sh\necho \"$@\" >> " + shlex.quote(str(calls)) + "\ncase \"$*\" in\n"
      "  devices*) printf 'List of devices attached\\nR58M device\\n' ;;\n"
      "  *benchmark_model\\ --graph*) cat " + shlex.quote(str(log)) + " ;;\n"
      "  *dumpsys*) echo '  temperature: 312' ;;\nesac\nexit 0\n")
  script.chmod(script.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ["PATH"])  # and cat
  results = tmp_path / "adb.json"
  assert cli.main(["adb-bench", folder, "--benchmark-binary", binary, "--gpu", "--allow-fp16",
                   "--threads", "2", "--cooldown", "0", "--results", str(results)]) == 0
  record = json.loads(results.read_text())
  (row,) = record["rows"]
  assert row["component"] == "unet" and row["backend"] == "tflite-device/fp16"
  assert row["load_ms"] == pytest.approx(812.345) and row["battery_c_before"] == 31.2
  assert record["options"]["gpu"] and record["options"]["threads"] == 2
  (run,) = [line for line in calls.read_text().splitlines() if "--graph=" in line]
  assert "--use_gpu=true" in run and "--num_threads=2" in run and "--allow_fp16=true" in run
  assert json.loads(capsys.readouterr().out) == record
