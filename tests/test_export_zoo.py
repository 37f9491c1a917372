import json
import os

import numpy as np
import pytest

from edgediff import pipeline, runtimes
from edgediff.export import exporter
from edgediff.quant import recipes

# Every tiny spec once: md-tiny carries the text encoder and md-decoder.
CASES = [
    ("md-tiny", ("text_encoder", "unet", "vae_decoder")),
    ("md-lite-tiny", ("unet",)),
    ("sd15-tiny", ("unet", "vae_decoder")),
    ("snapfusion-tiny", ("unet", "vae_decoder")),
    ("snapgen-tiny", ("unet", "vae_decoder")),
]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("export"))


# md-tiny's three components in ONNX are test_export.py's md_tiny_onnx fixture, checked there.
# md-lite-tiny's UNet is md-tiny's with one transformer block fewer: ONNX only.
FORMAT_CASES = [(fmt, name, components) for fmt in ("onnx", "tflite") for name, components in CASES
                if (fmt, name) not in (("onnx", "md-tiny"), ("tflite", "md-lite-tiny"))]


@pytest.mark.parametrize("fmt,name,components", FORMAT_CASES,
                         ids=[f"{c[1]}-{c[0]}" for c in FORMAT_CASES])
def test_export_every_tiny_spec(out_dir, name, components, fmt):
  opts = exporter.ExportOptions(fmt=fmt, out=out_dir, components=components)
  folder = exporter.export_pipeline(pipeline.open_pipeline(name), opts).folder
  assert folder == os.path.join(out_dir, name, fmt, "fp32")
  on_disk = json.load(open(os.path.join(folder, "manifest.json")))
  assert on_disk["passed"] and set(on_disk["components"]) == set(components)
  for component in components:
    entry = on_disk["components"][component]
    report = entry["parity"]
    assert report["snr_db"] >= recipes.thresholds("fp32").snr_db
    assert report["pearson"] >= recipes.thresholds("fp32").pearson
    assert report["max_abs"] < 1e-3 and report["samples"] == exporter.PARITY_SAMPLES
    # The golden file reproduces PyTorch through the runtime, independently of edgediff's gate.
    golden = np.load(os.path.join(folder, entry["golden"]))
    run = runtimes.load_runner(fmt, os.path.join(folder, entry["file"]))
    feeds = {i["name"]: golden[i["name"]] for i in entry["inputs"]}
    out_name = entry["outputs"][0]["name"]
    np.testing.assert_allclose(run(feeds)[out_name], golden[f"expected_{out_name}"],
                               atol=1e-4, rtol=1e-3)
    assert entry["bytes"] == os.path.getsize(os.path.join(folder, entry["file"]))
  # No temporary files are left behind.
  assert not [f for f in os.listdir(folder) if f.startswith(".tmp")]


def test_tflite_signature_has_named_io(out_dir):
  from ai_edge_litert.interpreter import Interpreter

  path = os.path.join(out_dir, "md-tiny", "tflite", "fp32", "unet.tflite")
  if not os.path.isfile(path):
    pytest.skip("needs test_export_every_tiny_spec")
  sig = Interpreter(model_path=path).get_signature_list()["serving_default"]
  assert sorted(sig["inputs"]) == ["encoder_hidden_states", "sample", "timestep"]
  assert sig["outputs"] == ["noise_pred"]


def test_no_clamp_leaves_the_decoders_clamp_to_the_app(out_dir, tmp_path):
  from edgediff import cli, profile
  from edgediff.export import gpu_compat

  clamped = os.path.join(out_dir, "md-tiny", "tflite", "fp32")
  if not os.path.isfile(os.path.join(clamped, "vae_decoder.tflite")):
    pytest.skip("needs test_export_every_tiny_spec")
  assert "RELU_0_TO_1" in profile.tflite_op_mix(os.path.join(clamped, "vae_decoder.tflite"))["ops"]
  # TensorFlow 2.15's GPU analyzer flags it: the GPU delegate would hand it to the CPU.
  flagged = gpu_compat.analyze(os.path.join(clamped, "vae_decoder.tflite"))["flagged"]
  assert "RELU_0_TO_1" in flagged
  assert cli.main(["export", "md-tiny", "--fmt", "tflite", "--component", "vae_decoder",
                   "--no-clamp", "--out", str(tmp_path)]) == 0
  folder = tmp_path / "md-tiny" / "tflite" / "fp32"
  entry = json.loads((folder / "manifest.json").read_text())["components"]["vae_decoder"]
  assert entry["clamped"] is False and entry["settings"]["clamp"] is False
  ops = profile.tflite_op_mix(str(folder / "vae_decoder.tflite"))["ops"]
  assert not {"RELU_0_TO_1", "RELU_N1_TO_1", "MINIMUM", "MAXIMUM"} & set(ops), ops
  assert "RELU_0_TO_1" not in gpu_compat.analyze(str(folder / "vae_decoder.tflite"))["flagged"]
  golden = np.load(folder / entry["golden"])
  expected = golden["expected_image"]  # PyTorch's unclamped image, gated like any other
  assert expected.min() < 0 or expected.max() > 1
  assert entry["passed"] and entry["parity"]["ssim"] > 0.9999
