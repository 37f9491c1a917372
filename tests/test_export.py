import json
import os
import shutil

import numpy as np
import onnx
from onnx import numpy_helper
import pytest

from edgediff import cli, pipeline, runtimes
from edgediff.export import exporter
from helpers import write_tiny_diffusers_folder

@pytest.fixture(scope="module")
def md_tiny_onnx(tmp_path_factory):
  """md-tiny exported to ONNX fp32: (out dir, export folder)."""
  out = str(tmp_path_factory.mktemp("export"))
  result = exporter.export_pipeline(pipeline.open_pipeline("md-tiny"),
                                    exporter.ExportOptions(fmt="onnx", out=out))
  return out, result.folder


def test_rerun_skips_and_parity_passes(md_tiny_onnx, capsys):
  out_dir, folder = md_tiny_onnx
  before = os.path.getmtime(os.path.join(folder, "unet.onnx"))
  assert cli.main(["export", "md-tiny", "--fmt", "onnx", "--out", out_dir]) == 0
  assert os.path.getmtime(os.path.join(folder, "unet.onnx")) == before
  capsys.readouterr()
  assert cli.main(["parity", folder, "--json"]) == 0
  results = json.loads(capsys.readouterr().out)
  assert len(results) == 3 and all(r["passed"] and r["sha256_ok"] for r in results)


def test_broken_artifact_fails_parity(md_tiny_onnx, tmp_path, capsys):
  _, src = md_tiny_onnx
  folder = str(tmp_path / "broken")
  shutil.copytree(src, folder)
  path = os.path.join(folder, "unet.onnx")
  model = onnx.load(path)
  weights = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
  array = numpy_helper.to_array(weights).copy()
  array += np.float32(0.5) * np.abs(array).max()  # a perturbed weight
  weights.CopyFrom(numpy_helper.from_array(array, weights.name))
  onnx.save(model, path)
  assert cli.main(["parity", folder]) == 1
  err = capsys.readouterr().err
  assert "unet: snr_db" in err and f"{path}: sha256 differs from the manifest's" in err


def test_a_changed_file_fails_parity_even_when_it_computes_the_same(md_tiny_onnx, tmp_path,
                                                                     capsys):
  _, src = md_tiny_onnx
  folder = str(tmp_path / "changed")
  shutil.copytree(src, folder)
  path = os.path.join(folder, "vae_decoder.onnx")
  model = onnx.load(path)
  model.doc_string = "not the file that was gated"
  onnx.save(model, path)
  assert cli.main(["parity", folder]) == 1
  err = capsys.readouterr().err
  assert f"{path}: sha256 differs from the manifest's (vae_decoder)" in err
  assert "snr" not in err  # it still computes what it did


def test_a_rerun_redoes_a_component_whose_golden_file_was_changed(md_tiny_onnx, tmp_path,
                                                                  capsys):
  out_dir, _ = md_tiny_onnx
  out = str(tmp_path / "out")
  shutil.copytree(out_dir, out)
  golden = os.path.join(out, "md-tiny", "onnx", "fp32", "vae_decoder_golden.npz")
  data = dict(np.load(golden))
  data["latent"] = data["latent"] + 1
  np.savez(golden, **data)
  argv = ["export", "md-tiny", "--fmt", "onnx", "--component", "vae_decoder", "--out", out]
  assert cli.main(argv) == 0
  err = capsys.readouterr().err
  assert "up to date" not in err and "[vae_decoder] parity passed" in err
  assert cli.main(["parity", out]) == 0


def test_rerun_redoes_what_changed_weights_or_options_change(md_tiny_onnx, tmp_path, capsys):
  from edgediff import checkpoints

  out_dir, src = md_tiny_onnx
  out = str(tmp_path / "out")
  shutil.copytree(out_dir, out)
  # --ort is an option the first export did not have: the re-run writes the .ort file.
  assert cli.main(["export", "md-tiny", "--fmt", "onnx", "--component", "text_encoder",
                   "--ort", "--out", out]) == 0
  assert os.path.isfile(os.path.join(out, "md-tiny", "onnx", "fp32", "text_encoder.ort"))
  # The same weights file with other values: not up to date, whatever its path says.
  module = pipeline.open_pipeline("md-tiny").build("text_encoder")
  weights = str(tmp_path / "w.safetensors")
  checkpoints.write_tensors({f"text_encoder.{k}": v for k, v in module.state_dict().items()},
                            weights)
  argv = ["export", "md-tiny", "--weights", weights, "--fmt", "onnx", "--component",
          "text_encoder", "--out", out]
  assert cli.main(argv) == 0
  capsys.readouterr()
  assert cli.main(argv) == 0
  assert "up to date" in capsys.readouterr().err
  checkpoints.write_tensors({f"text_encoder.{k}": v * 1.01 for k, v in
                             module.state_dict().items()}, weights)
  assert cli.main(argv) == 0
  assert "up to date" not in capsys.readouterr().err


def test_diffusers_folder_exports(tmp_path):
  folder = write_tiny_diffusers_folder(tmp_path / "tiny-sd")
  opts = exporter.ExportOptions(fmt="onnx", out=str(tmp_path / "out"),
                                components=("text_encoder", "unet", "vae_decoder"))
  manifest = exporter.export_pipeline(pipeline.open_pipeline(from_diffusers=folder), opts).manifest
  assert manifest["pipeline"] == "tiny-sd" and manifest["passed"]
  assert manifest["source"]["from_diffusers"] == folder


@pytest.mark.parametrize("case", ["missing", "corrupt", "shape", "tensor"])
def test_bad_checkpoint_exits_with_one_line(tmp_path, capsys, case):
  from edgediff import checkpoints

  module = pipeline.open_pipeline("md-tiny").build("unet")
  state = {f"unet.{k}": v for k, v in module.state_dict().items()}
  path = tmp_path / "w.safetensors"
  if case == "shape":
    state["unet.conv_in.weight"] = state["unet.conv_in.weight"][:1]
  if case == "tensor":
    del state["unet.conv_in.weight"]
  if case != "missing":
    checkpoints.write_tensors(state, str(path))
  if case == "corrupt":
    path.write_bytes(path.read_bytes()[:100])
  code = cli.main(["export", "md-tiny", "--fmt", "onnx", "--component", "unet",
                   "--weights", str(path), "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err.strip().splitlines()
  assert code != 0
  assert err[-1].startswith("edgediff: error: ") and "w.safetensors" in err[-1]
  if case in ("shape", "tensor"):
    assert "conv_in.weight" in err[-1]
  assert not (tmp_path / "out" / "md-tiny" / "onnx" / "fp32" / "unet.onnx").exists()


def test_nhwc_interface(tmp_path):
  opts = exporter.ExportOptions(fmt="tflite", out=str(tmp_path), components=("vae_decoder",),
                                nhwc=True)
  result = exporter.export_pipeline(pipeline.open_pipeline("md-tiny"), opts)
  entry = result.manifest["components"]["vae_decoder"]
  assert entry["passed"] and entry["layout"] == "NHWC"
  assert entry["inputs"][0]["shape"] == [1, 16, 16, 8]  # (B, h, w, C)
  assert entry["outputs"][0]["shape"] == [1, 128, 128, 3]  # (B, H, W, 3)
  assert cli.main(["parity", result.folder]) == 0


def test_ort_mobile_format(tmp_path):
  opts = exporter.ExportOptions(fmt="onnx", out=str(tmp_path), components=("vae_decoder",),
                                ort=True)
  result = exporter.export_pipeline(pipeline.open_pipeline("md-tiny"), opts)
  entry = result.manifest["components"]["vae_decoder"]
  path = os.path.join(result.folder, entry["ort"])
  golden = np.load(os.path.join(result.folder, entry["golden"]))
  out = runtimes.onnx_runner(path)({"latent": golden["latent"]})["image"]
  np.testing.assert_allclose(out, golden["expected_image"], atol=1e-4)


def test_over_2gb_flatbuffer_is_refused_before_work(tmp_path, capsys):
  code = cli.main(["export", "sd15", "--fmt", "tflite", "--component", "unet",
                   "--out", str(tmp_path)])
  err = capsys.readouterr().err
  assert code == 2
  assert "unet: its fp32 weights take 3.20 GB, over the 2 GB TFLite flatbuffer limit" in err
  assert "--fp16" in err
  assert not os.path.exists(tmp_path / "sd15" / "tflite" / "fp32" / "manifest.json")


def test_cfg_batch_and_resolution(tmp_path, capsys):
  code = cli.main(["export", "md-tiny", "--fmt", "onnx", "--component", "unet", "--cfg",
                   "--resolution", "64", "--out", str(tmp_path), "--json"])
  assert code == 0
  manifest = json.loads(capsys.readouterr().out)
  shapes = {i["name"]: i["shape"] for i in manifest["components"]["unet"]["inputs"]}
  assert shapes == {"sample": [2, 8, 8, 8], "timestep": [2],
                    "encoder_hidden_states": [2, 77, 64]}
  assert manifest["batch"] == 2 and manifest["latent_size"] == 8
  assert cli.main(["export", "md-tiny", "--fmt", "onnx", "--resolution", "60",
                   "--out", str(tmp_path)]) == 2
  assert "argument --resolution: 60 is not a multiple of 8" in capsys.readouterr().err


def test_quiet_by_default_all_in_the_log_and_the_libraries_under_v(tmp_path, capfd,
                                                                   monkeypatch):
  import subprocess
  import sys

  log = tmp_path / "export.log"
  args = ["export", "--fmt", "tflite", "--quant", "int8_dynamic", "--component",
          "text_encoder", "--out", str(tmp_path)]
  env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEDIFF_")}
  # A process of its own, as a user runs it: LiteRT logs its delegate once per process.
  done = subprocess.run([sys.executable, "-c", "import sys; from edgediff import cli; "
                         "sys.exit(cli.main(sys.argv[1:]))", *args, "--log", str(log)],
                        capture_output=True, text=True, env=env)
  assert done.returncode == 0, done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 2 and all(line.startswith("[text_encoder] ") for line in lines), lines
  assert "XNNPACK" not in done.stdout + done.stderr
  kept = log.read_text()
  assert "[text_encoder] parity passed" in kept  # edgediff's own lines
  assert "Created TensorFlow Lite XNNPACK delegate" in kept  # LiteRT's native log
  assert "Quantized model size" in kept  # ai-edge-quantizer's report, a Python print
  monkeypatch.setenv("EDGEDIFF_VERBOSE", "0")  # restored after: -v sets it for the process
  assert cli.main(["export", "-v", *args[1:], "--force"]) == 0
  verbose = capfd.readouterr()
  assert "Quantized model size" in verbose.out + verbose.err


def test_a_failed_gate_exits_1_marks_the_manifest_and_is_not_skipped(tmp_path, capsys,
                                                                      monkeypatch):
  import dataclasses

  from edgediff import metrics
  from edgediff.quant import recipes

  # A threshold no fp32 artifact can meet: the gate fails on a real export.
  monkeypatch.setitem(recipes.TABLE, "fp32", dataclasses.replace(
      recipes.TABLE["fp32"], thresholds=metrics.Thresholds(snr_db=500.0, pearson=1.0, ssim=1.0)))
  argv = ["export", "md-tiny", "--fmt", "onnx", "--component", "text_encoder", "--out",
          str(tmp_path)]
  assert cli.main(argv) == 1
  err = capsys.readouterr().err
  assert "edgediff: parity failed: text_encoder: snr_db" in err and "< 500.0" in err
  manifest = json.loads((tmp_path / "md-tiny" / "onnx" / "fp32" / "manifest.json").read_text())
  assert manifest["passed"] is False and manifest["components"]["text_encoder"]["passed"] is False
  assert cli.main(argv) == 1  # a failed component is exported again, not skipped
  assert "up to date" not in capsys.readouterr().err
