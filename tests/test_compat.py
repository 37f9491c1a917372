"""The gate in old runtimes (edgediff.export.compat): an artifact that an old runtime loads
but computes wrongly fails; one it refuses is recorded as refused."""

import json
import os

import pytest
import torch
from torch import nn

from edgediff import cli
from edgediff.export import compat, onnx as onnx_lib, tflite as tflite_lib
from edgediff.quant import recipes


class _Tokens(nn.Module):
  """An embedding lookup and a linear layer: the two ops that old runtimes got wrong."""

  def __init__(self):
    super().__init__()
    self.embed = nn.Embedding(40, 32)
    self.proj = nn.Linear(32, 24)

  def forward(self, ids):
    return self.proj(self.embed(ids))


def _per_channel_dynamic(model: bytes) -> bytes:
  """ai-edge-quantizer's stock dynamic recipe: per-channel weights on every op."""
  from ai_edge_quantizer import quantizer
  from ai_edge_quantizer import recipe as aeq_recipe

  qt = quantizer.Quantizer(model)
  qt.load_quantization_recipe(aeq_recipe.dynamic_wi8_afp32())
  return qt.quantize().quantized_model


@pytest.fixture(scope="module")
def tokens_model(tmp_path_factory):
  torch.manual_seed(0)
  module = _Tokens().eval()
  ids = torch.randint(0, 40, (1, 7), dtype=torch.int32)
  with torch.no_grad():
    reference = module(ids).numpy()
  return module, {"ids": ids}, reference, tmp_path_factory.mktemp("compat")


def _check(path, feeds, reference, recipe="int8_dynamic"):
  samples = [{k: v.numpy() for k, v in feeds.items()}]
  return compat.check("tflite", path, samples, [reference], "y", recipes.thresholds(recipe))


def test_per_channel_dynamic_weights_are_caught_wrong_in_tflite_runtime_2_14(
    tokens_model, monkeypatch):
  module, feeds, reference, folder = tokens_model
  path = str(folder / "per_channel.tflite")
  monkeypatch.setattr(recipes, "quantize_tflite", lambda recipe, model: _per_channel_dynamic(model))
  tflite_lib.export_tflite(module, feeds, ("y",), path, "int8_dynamic")
  result = _check(path, feeds, reference)["tflite-runtime-2.14"]
  assert result["status"] == "wrong" and result["version"] == "2.14.0"
  assert result["snr_db"] < recipes.thresholds("int8_dynamic").snr_db
  assert compat.failures({"tflite-runtime-2.14": result})


def test_edgediffs_int8_dynamic_computes_right_in_tflite_runtime_2_14(tokens_model):
  module, feeds, reference, folder = tokens_model
  path = str(folder / "edgediff.tflite")
  tflite_lib.export_tflite(module, feeds, ("y",), path, "int8_dynamic")
  results = _check(path, feeds, reference)
  assert results["tflite-runtime-2.14"]["status"] == "pass", results
  assert compat.min_runtime("tflite", results) == "tflite-runtime-2.14"


def test_a_runtime_that_refuses_the_file_is_recorded_not_failed(tmp_path):
  torch.manual_seed(0)
  module = nn.Linear(8, 4).eval()
  x = torch.randn(1, 8)
  path = str(tmp_path / "linear.onnx")
  onnx_lib.export_onnx(module, {"x": x}, ("y",), path)
  import onnx

  ir = onnx.load(path).ir_version
  with torch.no_grad():
    reference = module(x).numpy()
  results = compat.check("onnx", path, [{"x": x.numpy()}], [reference], "y",
                         recipes.thresholds("fp32"))
  entry = results["onnxruntime-1.17"]
  if ir >= 10:  # onnxruntime 1.17 reads IR versions up to 9
    assert entry["status"] == "refused" and "IR version" in entry["error"], entry
    assert compat.min_runtime("onnx", results).startswith("onnxruntime-")
    assert not compat.failures(results)
  else:
    assert entry["status"] == "pass", entry


def test_export_fails_on_a_wrong_old_runtime_unless_that_runtime_is_skipped(
    tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(recipes, "quantize_tflite", lambda recipe, model: _per_channel_dynamic(model))
  argv = ["export", "md-tiny", "--fmt", "tflite", "--quant", "int8_dynamic", "--component",
          "text_encoder", "--out", str(tmp_path)]
  assert cli.main(argv) == 1
  err = capsys.readouterr().err
  assert "tflite-runtime-2.14" in err and "--skip-runtime tflite-runtime-2.14" in err
  folder = tmp_path / "md-tiny" / "tflite" / "int8_dynamic"
  manifest = json.load(open(folder / "manifest.json"))
  entry = manifest["components"]["text_encoder"]
  assert not entry["passed"] and entry["parity"]["passed"]  # right in ai_edge_litert
  assert entry["old_runtimes"]["tflite-runtime-2.14"]["status"] == "wrong"
  # Opting out is a different setting: the component is redone, and passes.
  assert cli.main(argv + ["--skip-runtime", "tflite-runtime-2.14"]) == 0
  entry = json.load(open(folder / "manifest.json"))["components"]["text_encoder"]
  assert entry["passed"] and entry["old_runtimes"] == {}
  assert entry["min_runtime"].startswith("ai-edge-litert-")
  assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]

