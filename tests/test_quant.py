import dataclasses
import os

import numpy as np
import pytest

from edgediff import cli, metrics, pipeline
from edgediff.export import exporter
from edgediff.export import onnx as onnx_lib
from edgediff.quant import recipes
from helpers import check_readable_by_old_parsers


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("quant"))


def _export(out_dir, fmt, recipe, components=("unet",), force=False):
  opts = exporter.ExportOptions(fmt=fmt, out=out_dir, recipe=recipe, components=components,
                                force=force)
  result = exporter.export_pipeline(pipeline.open_pipeline("shapes"), opts)
  return {**result.manifest, "folder": result.folder}  # the manifest, as --json prints it


CASES = [(fmt, r) for fmt in ("onnx", "tflite") for r in recipes.SUPPORTED[fmt]
         if r != "fp32" and r not in recipes.CALIBRATED]  # calibrated: test_quant_static


@pytest.mark.parametrize("fmt,recipe", CASES)
def test_every_recipe_passes_its_own_gate(out_dir, fmt, recipe):
  manifest = _export(out_dir, fmt, recipe)
  entry = manifest["components"]["unet"]
  report = entry["parity"]
  assert manifest["recipe"] == recipe and manifest["folder"].endswith(os.path.join(fmt, recipe))
  assert entry["passed"], report["failures"]
  assert report["thresholds"] == dataclasses.asdict(recipes.thresholds(recipe))
  # Quantization changed the numbers: the artifact is not secretly fp32.
  assert report["snr_db"] < 105  # fp32 artifacts of this UNet score 123-126 dB
  fp32_bytes = onnx_lib.param_bytes(pipeline.open_pipeline("shapes").build("unet"))
  assert entry["bytes"] < (0.6 if recipe == "fp16" else 0.45) * fp32_bytes
  if fmt == "tflite":
    check_readable_by_old_parsers(os.path.join(manifest["folder"], entry["file"]))


def test_thresholds_are_tighter_for_fp16_than_int8():
  fp16 = recipes.thresholds("fp16")
  for recipe in recipes.INT8_RECIPES:
    assert fp16.snr_db > recipes.thresholds(recipe).snr_db + 5
    assert fp16.pearson > recipes.thresholds(recipe).pearson


@pytest.mark.parametrize("wrong", ["noise 0.1x", "noise 0.3x", "noise 0.5x", "mean", "zeros",
                                   "shuffled"])
def test_no_recipe_passes_a_wrong_output(wrong):
  # PSNR over the range and the uncentred cosine let noise at 0.5x the output's standard
  # deviation through the int8_static gate, and scored an image filled with its mean 0.97.
  rng = np.random.default_rng(0)
  image = np.clip(rng.standard_normal((1, 3, 64, 64)).cumsum(axis=-1) * 0.05 + 0.5, 0, 1)
  latent = rng.standard_normal((1, 8, 8, 8))
  for reference in (image.astype(np.float32), latent.astype(np.float32)):
    noise = rng.standard_normal(reference.shape) * reference.std()
    actual = {"noise 0.1x": reference + 0.1 * noise, "noise 0.3x": reference + 0.3 * noise,
              "noise 0.5x": reference + 0.5 * noise,
              "mean": np.full_like(reference, reference.mean()),
              "zeros": np.zeros_like(reference),
              "shuffled": rng.permutation(reference.ravel()).reshape(reference.shape)}[wrong]
    for recipe in recipes.RECIPES:
      report = metrics.compare("x", [reference], [actual.astype(np.float32)],
                               recipes.thresholds(recipe))
      assert not report.passed, (recipe, wrong, report.summary())


def test_same_command_gives_byte_identical_artifacts(out_dir):
  first = _export(out_dir, "tflite", "int8_dynamic", ("vae_decoder",))
  second = _export(out_dir, "tflite", "int8_dynamic", ("vae_decoder",), force=True)
  assert (first["components"]["vae_decoder"]["sha256"]
          == second["components"]["vae_decoder"]["sha256"])


@pytest.mark.parametrize("fmt,recipe,message", [
    ("onnx", "int8_weight_only", "not available for onnx"),
    ("tflite", "int4", "invalid choice: 'int4'"),
])
def test_unavailable_recipes_are_refused(tmp_path, capsys, fmt, recipe, message):
  code = cli.main(["export", "md-tiny", "--fmt", fmt, "--quant", recipe,
                   "--out", str(tmp_path)])
  assert code == 2 and message in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "md-tiny" / fmt / recipe / "manifest.json")


def test_int8_picks_a_passing_recipe_and_says_why(tmp_path, capsys):
  # A short calibration recording for int8_static: the decoder gates on 4 of the recorded
  # final latents (one per prompt, the empty one included) and calibrates on the rest.
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("".join(f"a small {c} circle in the center on a white background\n"
                             for c in ("red", "blue", "green", "yellow", "purple")))
  code = cli.main(["export", "--fmt", "tflite", "--int8", "--component", "vae_decoder",
                   "--calib-prompts", str(prompts), "--out", str(tmp_path / "out"), "--json"])
  assert code == 0
  import json

  manifest = json.loads(capsys.readouterr().out)
  selection = manifest["int8_selection"]
  assert selection["chosen"] == manifest["recipe"] in recipes.int8_candidates("tflite")
  assert set(selection["candidates"]) == set(recipes.int8_candidates("tflite"))
  chosen = selection["candidates"][selection["chosen"]]
  assert chosen["passed"]
  # The fastest passing recipe, or one within the measured noise of it (a tie, which the
  # smaller and then more accurate artifact wins: exporter.choose).
  passing = [c for c in selection["candidates"].values() if c["passed"]]
  fastest = min(passing, key=lambda c: c["total_latency_ms"])
  assert chosen["total_latency_ms"] - fastest["total_latency_ms"] <= max(
      chosen["latency_noise_ms"], fastest["latency_noise_ms"]), selection["candidates"]
  for recipe, candidate in selection["candidates"].items():
    # Each candidate's own manifest is kept, and the selection sums up its gate.
    assert json.load(open(candidate["manifest"]))["recipe"] == recipe
    row = candidate["components"]["vae_decoder"]
    assert row["passed"] == candidate["passed"] and "snr_db" in row
    assert ("calibration_samples" in row) == (recipe in recipes.CALIBRATED)
  on_disk = json.load(open(os.path.join(manifest["folder"], "manifest.json")))
  assert on_disk["int8_selection"]["chosen"] == selection["chosen"]


def test_onnx_fp16_graph_is_valid_sorted_and_shares_one_cast(tmp_path):
  # One fp16 tensor read by two ops that stay fp32 (Max and Min, as a full-size UNet's
  # unsimplified shape arithmetic does): onnxruntime's converter gives each its own Cast,
  # with one name and one output, and appends them after their readers.
  import onnx
  import onnxruntime
  from onnx import TensorProto, helper

  from edgediff.quant import recipes as recipes_lib

  graph = helper.make_graph(
      [helper.make_node("Mul", ["x", "x"], ["a"], name="mul"),
       helper.make_node("Max", ["a", "x"], ["b"], name="max"),
       helper.make_node("Min", ["a", "x"], ["c"], name="min"),
       helper.make_node("Add", ["b", "c"], ["y"], name="add")],
      "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
  fp32 = str(tmp_path / "fp32.onnx")
  onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9),
            fp32)
  path = str(tmp_path / "fp16.onnx")
  recipes_lib.quantize_onnx("fp16", fp32, path)
  model = onnx.load(path)
  onnx.checker.check_model(model, full_check=True)
  names = [n.name for n in model.graph.node]
  assert len(names) == len(set(names)), names
  made = {"x"}
  for node in model.graph.node:  # sorted: every input made before it is read
    assert set(node.input) <= made, (node.name, node.input)
    made.update(node.output)
  x = np.array([-2.0, -0.5, 0.5, 3.0], np.float32)
  y, = onnxruntime.InferenceSession(path).run(None, {"x": x})
  np.testing.assert_allclose(y, np.maximum(x * x, x) + np.minimum(x * x, x), rtol=1e-3)


def test_onnx_fp16_keeps_instance_norm_in_fp32(tmp_path):
  # GroupNorm as the exporter writes it: its variance, computed in fp16 by a runtime that
  # runs the op in fp16 (onnx.reference here), overflows on deviations of a few hundred.
  import onnx
  from onnx import TensorProto, helper, numpy_helper
  from onnx.reference import ReferenceEvaluator

  from edgediff.quant import recipes as recipes_lib

  c = 4
  graph = helper.make_graph(
      [helper.make_node("Mul", ["x", "two"], ["a"]),
       helper.make_node("InstanceNormalization", ["a", "scale", "bias"], ["y"])],
      "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 8, 8])],
      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 8, 8])],
      [numpy_helper.from_array(np.float32(2.0), "two"),
       numpy_helper.from_array(np.ones(c, np.float32), "scale"),
       numpy_helper.from_array(np.zeros(c, np.float32), "bias")])
  fp32 = str(tmp_path / "fp32.onnx")
  onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9),
            fp32)
  path = str(tmp_path / "fp16.onnx")
  recipes_lib.quantize_onnx("fp16", fp32, path)
  # Activations a few hundred from their mean: squared deviations pass fp16's 65504.
  x = (300 * np.random.default_rng(0).standard_normal((1, c, 8, 8))).astype(np.float32)
  expected = ReferenceEvaluator(fp32).run(None, {"x": x})[0]
  actual = ReferenceEvaluator(path).run(None, {"x": x})[0]
  assert np.isfinite(actual).all() and np.abs(actual - expected).max() < 0.01
