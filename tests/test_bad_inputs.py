"""Bad inputs, one test a row: one line on stderr naming the thing at fault, a non-zero
exit, and nothing half-written left behind (no artifact, manifest or .tmp-* folder)."""

import argparse
import contextlib
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from edgediff import checkpoints, cli, pipeline
from helpers import write_tiny_diffusers_folder


def _run(capsys, *argv) -> tuple[int, str]:
  """The CLI's exit status and its one line of error, the last it printed (progress lines
  may come before it); fails when more than one line says error, or a traceback does."""
  code = cli.main(list(argv))
  err = capsys.readouterr().err.strip().splitlines()
  assert len([line for line in err if "error" in line.lower()]) == 1, err
  assert "error: " in err[-1], err
  return code, err[-1]


def _left_in(folder) -> list[str]:
  """Every file and folder below `folder` (none when it does not exist)."""
  return sorted(os.path.relpath(os.path.join(d, n), folder)
                for d, dirs, files in os.walk(folder) for n in dirs + files)


def _export(capsys, out, *extra) -> tuple[int, str]:
  return _run(capsys, "export", *extra, "--fmt", "onnx", "--out", str(out))


# --- checkpoints -------------------------------------------------------------------------


def _md_tiny_state():
  module = pipeline.open_pipeline("md-tiny").build("unet")
  return {f"unet.{k}": v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", ["w.bin", "w.ckpt", "w.pt"])
def test_random_bytes_checkpoint(tmp_path, capsys, name):
  path = tmp_path / name
  path.write_bytes(np.random.default_rng(len(name)).bytes(4096))
  code, err = _export(capsys, tmp_path / "out", "md-tiny", "--weights", str(path))
  assert code == 2 and str(path) in err
  assert "corrupt" in err or "not a PyTorch weights file" in err, err
  assert not (tmp_path / "out").exists()


def test_empty_checkpoint(tmp_path, capsys):
  path = tmp_path / "w.safetensors"
  path.write_bytes(b"")
  code, err = _export(capsys, tmp_path / "out", "md-tiny", "--weights", str(path))
  assert code == 2 and err.endswith(f"{path}: empty file, not a checkpoint")


def test_safetensors_renamed_bin_loads(tmp_path):
  state = _md_tiny_state()
  path = str(tmp_path / "w.bin")
  checkpoints.write_tensors({k: v + 1 for k, v in state.items()}, path)
  unet = pipeline.open_pipeline("md-tiny", weights=path).build("unet")
  torch.testing.assert_close(unet.conv_in.weight, state["unet.conv_in.weight"] + 1)


def test_pickle_with_a_foreign_global_is_refused_not_run(tmp_path, capsys):
  path = tmp_path / "w.bin"
  torch.save({"unet.conv_in.weight": torch.zeros(1), "args": argparse.Namespace(x=1)}, path)
  code, err = _export(capsys, tmp_path / "out", "md-tiny", "--weights", str(path))
  assert code == 2 and str(path) in err
  assert "refused by torch's weights-only loader" in err and "Namespace" in err
  assert "weights_only=False" not in err  # not the advice to switch the check off


@pytest.mark.parametrize("bad, what", [
    (float("nan"), "NaN"), (float("inf"), "Inf")])
def test_non_finite_weights_name_the_tensor(tmp_path, capsys, bad, what):
  state = _md_tiny_state()
  state["unet.conv_out.weight"][0, 0, 0, 0] = bad
  path = str(tmp_path / "w.safetensors")
  checkpoints.write_tensors(state, path)
  code, err = _export(capsys, tmp_path / "out", "md-tiny", "--weights", path,
                      "--component", "unet")
  assert code == 2
  assert f"'unet.conv_out.weight' holds {what}" in err and path in err
  assert not (tmp_path / "out").exists()


def test_finite_weights_that_overflow_are_named_before_any_conversion(tmp_path, capsys):
  state = _md_tiny_state()
  state["unet.conv_in.weight"] *= 3e38  # finite, but what it computes is not
  path = str(tmp_path / "w.safetensors")
  checkpoints.write_tensors(state, path)
  code, err = _export(capsys, tmp_path / "out", "md-tiny", "--weights", path,
                      "--component", "unet")
  assert code == 2 and "unet: PyTorch fp32's own output is not finite" in err
  assert not (tmp_path / "out").exists()


def test_integer_weights_name_the_tensor(tmp_path, capsys):
  state = _md_tiny_state()
  state["unet.conv_in.weight"] = state["unet.conv_in.weight"].round().to(torch.int64)
  path = str(tmp_path / "w.safetensors")
  checkpoints.write_tensors(state, path)
  code, err = _export(capsys, tmp_path / "out", "md-tiny", "--weights", path,
                      "--component", "unet")
  assert code == 2 and "'unet.conv_in.weight' is int64" in err


# --- diffusers folders -------------------------------------------------------------------


def _edit_json(path, edit):
  with open(path) as f:
    config = json.load(f)
  edit(config)
  with open(path, "w") as f:
    json.dump(config, f)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
  return write_tiny_diffusers_folder(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture
def folder(tiny_sd, tmp_path):
  import shutil

  return shutil.copytree(tiny_sd, tmp_path / "tiny-sd")


def _unet_config(config):
  return os.path.join(config, "unet", "config.json")


@pytest.mark.parametrize("case, expected", [
    ("binary config", r"unet/config.json: not a UTF-8 text file"),
    ("list config", r"unet/config.json: holds a JSON list, not an object"),
    ("garbage scheduler", r"scheduler/scheduler_config.json: not valid JSON"),
    ("unknown hidden_act", r"text_encoder/config.json: does not build a text_encoder: "
                           r"unknown value 'mystery_act'"),
    ("inconsistent blocks", r"unet/config.json: does not build a unet"),
    ("groups not dividing", r"vae/config.json: does not build a vae_decoder"),
])
def test_broken_diffusers_folder(folder, tmp_path, capsys, case, expected):
  if case == "binary config":
    open(_unet_config(folder), "wb").write(b"\xff\xfe\x00\x81" * 64)
  elif case == "list config":
    open(_unet_config(folder), "w").write("[1, 2, 3]")
  elif case == "garbage scheduler":
    os.makedirs(os.path.join(folder, "scheduler"))
    open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w").write("{beta: ")
  elif case == "unknown hidden_act":
    _edit_json(os.path.join(folder, "text_encoder", "config.json"),
               lambda c: c.update(hidden_act="mystery_act"))
  elif case == "inconsistent blocks":
    _edit_json(_unet_config(folder), lambda c: c.update(
        block_out_channels=list(c["block_out_channels"]) + [64]))
  elif case == "groups not dividing":
    _edit_json(os.path.join(folder, "vae", "config.json"), lambda c: c.update(norm_num_groups=7))
  code, err = _export(capsys, tmp_path / "out", "--from-diffusers", str(folder))
  assert code == 2 and err.startswith("edgediff: error: ")
  assert expected in err, err
  assert not (tmp_path / "out").exists()


def test_unknown_config_fields_are_ignored_as_diffusers_ignores_them(folder):
  before = pipeline.open_pipeline(None, from_diffusers=str(folder)).build("unet").state_dict()
  _edit_json(_unet_config(folder), lambda c: c.update(mystery_field=3, another={"a": 1}))
  after = pipeline.open_pipeline(None, from_diffusers=str(folder)).build("unet").state_dict()
  assert before.keys() == after.keys()
  assert all(torch.equal(before[k], after[k]) for k in before)


# --- prompts and numbers -----------------------------------------------------------------


def test_binary_calibration_prompts(tmp_path, capsys):
  path = tmp_path / "prompts.txt"
  path.write_bytes(bytes(range(256)) * 4)
  code, err = _run(capsys, "export", "--fmt", "onnx", "--quant", "int8_static",
                   "--calib-prompts", str(path), "--out", str(tmp_path / "out"))
  assert code == 2 and f"{path}: not a UTF-8 text file of prompts" in err
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_calibration_prompts(tmp_path, capsys, content):
  path = tmp_path / "prompts.txt"
  path.write_text(content)
  code, err = _run(capsys, "export", "--fmt", "onnx", "--quant", "int8_static",
                   "--calib-prompts", str(path), "--out", str(tmp_path / "out"))
  assert code == 2 and f"{path}: no prompts in it" in err
  assert not (tmp_path / "out").exists()


def test_cfg_without_a_guidance_scale_is_refused(tmp_path, capsys):
  code, err = _run(capsys, "export", "--fmt", "onnx", "--cfg", "--guidance", "1",
                   "--out", str(tmp_path / "out"))
  assert code == 2 and "--cfg exports a UNet that takes both guidance branches" in err
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, expected", [
    (["generate", "--steps", "0"], "argument --steps: 0: must be 1 or more"),
    (["generate", "--steps", "-3"], "argument --steps: -3: must be 1 or more"),
    (["generate", "--guidance", "nan"], "argument --guidance: nan: must be a finite number"),
    (["export", "--resolution", "-8"], "argument --resolution: -8: must be 1 or more"),
    (["export", "--resolution", "0"], "argument --resolution: 0: must be 1 or more"),
    (["export", "--resolution", "36"], "argument --resolution: 36 is not a multiple of 8"),
    (["export", "--max-memory", "0"], "argument --max-memory: 0: must be above 0"),
])
def test_bad_numbers_are_refused_before_any_work(tmp_path, capsys, argv, expected):
  out = tmp_path / ("x.png" if argv[0] == "generate" else "out")
  extra = ["--prompt", "a red circle", "--out", str(out)] if argv[0] == "generate" else [
      "--out", str(out)]
  code, err = _run(capsys, *argv, *extra)
  assert code == 2 and err.startswith(f"edgediff {argv[0]}: error: {expected}")
  assert not out.exists()


def test_huge_resolution_is_refused_by_the_memory_preflight(tmp_path, capsys):
  code, err = _run(capsys, "export", "--resolution", "8192", "--fmt", "onnx", "--component",
                   "vae_decoder", "--out", str(tmp_path / "out"))
  assert code == 2 and "vae_decoder (onnx fp32): needs about" in err
  assert not (tmp_path / "out").exists()


# --- where the output goes ---------------------------------------------------------------


@contextlib.contextmanager
def _mounted(folder, options):
  """A tmpfs at `folder` (root only: skipped where mount is not allowed)."""
  os.makedirs(folder, exist_ok=True)
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                        capture_output=True, text=True)
  if done.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
  try:
    yield folder
  finally:
    subprocess.run(["umount", str(folder)], check=True)


def test_out_is_a_file(tmp_path, capsys):
  target = tmp_path / "taken"
  target.write_text("not a folder")
  code, err = _export(capsys, target, "--component", "text_encoder")
  assert code == 2 and err == f"edgediff: error: --out {target}: {target} is a file, not a folder"
  code, err = _run(capsys, "generate", "--prompt", "a red circle", "--out", str(target / "x.png"))
  assert code == 2 and f"{target} is a file, not a folder" in err
  assert target.read_text() == "not a folder"


def test_generate_out_is_a_folder(tmp_path, capsys):
  code, err = _run(capsys, "generate", "--prompt", "a red circle", "--out", str(tmp_path))
  assert code == 2 and err == f"edgediff: error: --out {tmp_path}: is a folder; give a file name"


def test_read_only_out(tmp_path, capsys):
  with _mounted(tmp_path / "ro", "ro,size=1m") as ro:
    code, err = _export(capsys, ro / "out", "--component", "text_encoder")
    assert code == 2 and f"--out {ro / 'out'}: {ro} is not writable (a read-only file system)" in err
    code, err = _run(capsys, "generate", "--prompt", "a red circle", "--out", str(ro / "x.png"))
    assert code == 2 and "read-only file system" in err
    assert _left_in(ro) == []


def test_full_disk_is_refused_before_writing(tmp_path, capsys):
  with _mounted(tmp_path / "disk", "size=3m") as disk:
    code, err = _export(capsys, disk / "out", "--component", "unet")
    assert code == 2 and "unet: needs about" in err and "free some or choose another --out" in err
    assert _left_in(disk) == []


def test_full_disk_while_writing_keeps_nothing_of_it(tmp_path, capsys, monkeypatch):
  from edgediff import atomic

  monkeypatch.setattr(atomic, "check_space", lambda *a: None)  # as if the estimate erred
  with _mounted(tmp_path / "disk", "size=3m") as disk:
    code, err = _export(capsys, disk / "out", "--component", "unet")
    assert code == 2 and "unet: no space left in" in err and "nothing of it was kept" in err
    assert _left_in(disk) == []


def test_a_killed_exports_tmp_folder_is_removed_by_the_next_export(tmp_path, capsys):
  folder = tmp_path / "shapes" / "onnx" / "fp32"
  dead = subprocess.Popen(["true"])
  dead.wait()
  stale = folder / f".tmp-unet-{dead.pid}"
  stale.mkdir(parents=True)
  (stale / "unet.onnx").write_bytes(b"half a model")
  alive = folder / f".tmp-unet-{os.getpid()}"  # a running process's: left alone
  alive.mkdir()
  assert cli.main(["export", "--fmt", "onnx", "--component", "text_encoder", "--out",
                   str(tmp_path)]) == 0
  left = [n for n in _left_in(folder) if n.startswith(".tmp-")]
  assert left == [alive.name], left


def test_a_second_export_into_the_same_folder_at_once_is_refused(tmp_path, capsys):
  import fcntl

  folder = tmp_path / "shapes" / "onnx" / "fp32"
  folder.mkdir(parents=True)
  with open(folder / ".lock", "w") as held:  # as an export running in another process holds it
    fcntl.flock(held, fcntl.LOCK_EX)
    code, err = _export(capsys, tmp_path, "--component", "text_encoder")
  assert code == 2 and f"{folder}: another export is writing into it now" in err
  assert _left_in(folder) == [".lock"]  # the other export's, untouched


# --- faults ------------------------------------------------------------------------------


def test_sigkill_mid_export_then_rerun_resumes_and_passes(tmp_path, capsys):
  import signal
  import sys
  import time

  folder = tmp_path / "md-tiny" / "onnx" / "fp32"
  argv = ["export", "md-tiny", "--fmt", "onnx", "--out", str(tmp_path)]
  child = subprocess.Popen([sys.executable, "-c", "import sys; from edgediff import cli; "
                            "sys.exit(cli.main(sys.argv[1:]))", *argv],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 300
  while not list(folder.glob(".tmp-unet-*")) and child.poll() is None:
    assert time.monotonic() < deadline, "the export never reached the UNet"
    time.sleep(0.05)
  child.send_signal(signal.SIGKILL)  # mid-UNet: the text encoder is done and in the manifest
  child.wait()
  assert list(folder.glob(".tmp-unet-*")), "killed too late to test anything"
  assert cli.main(argv) == 0
  err = capsys.readouterr().err
  assert "[text_encoder] up to date" in err and "[unet] parity passed" in err
  assert not [n for n in _left_in(folder) if ".tmp-" in n or n == ".lock"]
  assert cli.main(["parity", str(tmp_path)]) == 0


@pytest.mark.parametrize("content", [b"{\"components\": {\"unet\": ", b"\xff\xfe garbage",
                                     b"[1, 2, 3]"])
def test_a_tampered_manifest_is_named_by_parity_and_redone_by_export(tmp_path, capsys,
                                                                     content):
  argv = ["export", "--fmt", "onnx", "--component", "text_encoder", "--out", str(tmp_path)]
  assert cli.main(argv) == 0
  manifest = tmp_path / "shapes" / "onnx" / "fp32" / "manifest.json"
  manifest.write_bytes(content)
  capsys.readouterr()
  code, err = _run(capsys, "parity", str(tmp_path))
  assert code == 2 and f"{manifest}: not a manifest edgediff wrote" in err
  assert cli.main(argv) == 0
  err = capsys.readouterr().err
  assert "exporting every component again" in err and "[text_encoder] parity passed" in err
  assert json.loads(manifest.read_text())["components"]["text_encoder"]["passed"]


@pytest.mark.parametrize("prompt, note", [
    ("", False),  # the unconditional prompt: a valid input
    ("ein rotes Quadrat über 日本 🙂 İß", False),
    ("a small red triangle " * 30, True),
])
def test_prompts_empty_non_ascii_and_over_77_tokens(tmp_path, capsys, prompt, note):
  out = tmp_path / "image.png"
  assert cli.main(["generate", "--prompt", prompt, "--steps", "1", "--out", str(out)]) == 0
  err = capsys.readouterr().err
  assert out.stat().st_size > 0
  assert ("the text encoder reads the first 77" in err) == note, err
