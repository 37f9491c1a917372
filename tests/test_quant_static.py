import os

import numpy as np
import onnx
import pytest

from edgediff import metrics, pipeline
from edgediff.export import exporter
from helpers import check_readable_by_old_parsers


def _export(out_dir, fmt, recipe, components=("unet",), force=False, name="md-tiny",
            calib_prompts=None, latent_size=None):
  opts = exporter.ExportOptions(fmt=fmt, out=out_dir, recipe=recipe, components=components,
                                force=force, calib_prompts=calib_prompts,
                                latent_size=latent_size)
  result = exporter.export_pipeline(pipeline.open_pipeline(name), opts)
  return {**result.manifest, "folder": result.folder}  # the manifest, as --json prints it


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("static"))


def _check_fallback(info):
  assert info["calibration_samples"] > 0
  # The artifact left is the fallback's best round, as measured on its own samples (the
  # gate then judges it on held-out ones).
  best = max(info["history"], key=lambda h: (h["passed"], h["snr_db"]))
  assert info["rounds"] == len(info["history"])
  assert info["history"][info["kept_round"] - 1] == best
  assert (info["kept_round"] > 1) == bool(info["fallback"])  # kept in float after round 1
  assert all(f["op"] and "sqnr_db" in f for f in info["fallback"])


def test_int8_static_calibrates_on_the_trajectory_and_falls_back(out_dir):
  # The UNet only: test_onnx_static_keeps_the_causal_mask_in_float covers a decoder.
  prompts = ("a red circle", "a blue square on a white background", "a green star")
  manifest = _export(out_dir, "onnx", "int8_static", ("unet",), calib_prompts=prompts,
                     latent_size=8)
  folder = manifest["folder"]
  for component in ("unet",):
    entry = manifest["components"][component]
    info = entry["quantization"]
    _check_fallback(info)
  # UNet inputs recorded at timesteps across the whole DDIM trajectory, both prompts kinds.
  from edgediff.quant import calibration

  unet = calibration.load(os.path.join(folder, "calibration.npz"), "unet")
  steps = sorted({float(f["timestep"][0]) for f in unet})
  assert steps[0] <= 1 and steps[-1] >= 800 and len(steps) == 8
  assert len(unet) == 8 * 4  # (empty prompt + 3 prompts) x 8 steps


def test_calibration_records_both_guidance_branches_in_pairs():
  from edgediff.models.text_encoder import tokenize
  from edgediff.quant import calibration

  pipe = pipeline.open_pipeline("md-tiny")
  guided = calibration.record(pipe, pipe.latent_size, ["a red circle"], steps=2, guidance=3.0)
  unet = guided["unet"]
  assert len(unet) == 2 * 2 * 2  # (empty prompt + 1) x 2 steps x 2 branches
  empty = pipe.build("text_encoder")(tokenize([""], pipe.tokenizer)).detach().numpy()
  for pair in calibration.batched(unet, 2):  # what a --cfg UNet is calibrated on
    assert np.array_equal(pair["sample"][0], pair["sample"][1])
    assert pair["timestep"][0] == pair["timestep"][1]
    np.testing.assert_allclose(pair["encoder_hidden_states"][:1], empty, atol=1e-6)
  assert not np.allclose(unet[-1]["encoder_hidden_states"], empty)  # the prompt's branch
  # Guidance changes the trajectory: the recorded latents are not guidance 1's.
  plain = calibration.record(pipe, pipe.latent_size, ["a red circle"], steps=2)["unet"]
  assert len(plain) == 2 * 2
  assert not np.allclose(plain[-1]["sample"], unet[-1]["sample"])


def test_a_calibration_recording_is_reused_until_its_settings_change(tmp_path, capsys):
  import dataclasses

  pipe = pipeline.open_pipeline("md-tiny")
  opts = exporter.ExportOptions(fmt="onnx", out=str(tmp_path), recipe="int8_static",
                                calib_prompts=("a red circle", "a blue square"))
  for fmt, recipe, guidance in (("onnx", "int8_static", 1.0), ("tflite", "w8a16", 1.0),
                                ("tflite", "w8a16", 3.0)):
    folder = tmp_path / "md-tiny" / fmt / recipe / str(guidance)
    folder.mkdir(parents=True)
    exporter._calibration(pipe, dataclasses.replace(opts, fmt=fmt, recipe=recipe,
                                                    guidance=guidance), 4, str(folder))
    assert (folder / "calibration.npz").is_file()
  err = capsys.readouterr().err
  # Recorded for the first, reused by the second; another guidance is another trajectory.
  assert err.count("calibration: recording") == 2 and err.count("calibration: reusing") == 1
  assert len(list((tmp_path / "md-tiny" / "calibration").glob("*.npz"))) == 2


def test_static_calibration_is_byte_identical(tmp_path):
  first = _export(str(tmp_path), "onnx", "int8_static", ("vae_decoder",))
  second = _export(str(tmp_path), "onnx", "int8_static", ("vae_decoder",), force=True)
  assert (first["components"]["vae_decoder"]["sha256"]
          == second["components"]["vae_decoder"]["sha256"])


def _export_shapes(out_dir, fmt, recipe, components, force=False):
  return _export(out_dir, fmt, recipe, components, force, name="shapes")


def _check_calibrated(manifest, recipe):
  for component in ("vae_decoder",):
    entry = manifest["components"][component]
    info = entry["quantization"]
    _check_fallback(info)
    assert entry["inputs"][0]["dtype"] == "float32"  # float I/O, whatever the recipe
    assert entry["parity_inputs"] == "held out of the calibration recording"
  # The shapes prompts calibrate the shapes model: empty prompt + 32 captions, 8 steps each;
  # the one recording holds every component's inputs.
  from edgediff.quant import calibration

  assert manifest["calibration"] == "calibration.npz"  # listed, beside the artifacts
  unet = calibration.load(os.path.join(manifest["folder"], manifest["calibration"]), "unet")
  assert len(unet) == 8 * 33


# The decoder only: ai-edge-quantizer's calibration of the UNet takes minutes on CPU.
def test_tflite_w8a16_on_the_trained_model(tmp_path):
  manifest = _export_shapes(str(tmp_path), "tflite", "w8a16", ("vae_decoder",))
  _check_calibrated(manifest, "w8a16")
  assert manifest["components"]["vae_decoder"]["quantization"]["float_by_rule"] == {}


def _reference_evaluator_snr(folder: str, entry: dict, model) -> float:
  """SNR (dB) of onnx's reference evaluator running `model` on the component's golden inputs,
  against PyTorch's golden output."""
  from onnx.reference import ReferenceEvaluator

  from edgediff import manifest as manifest_lib

  feeds, golden = manifest_lib.golden_feeds(folder, entry)
  got = ReferenceEvaluator(model).run(None, feeds)[0]
  return metrics.snr_db(golden[f"expected_{manifest_lib.output_name(entry)}"], got)


def test_onnx_w8a16_on_the_trained_model(tmp_path):
  # The decoder that misses the int8_static gate on a low-contrast image (README, "W8A8 on
  # the shipped model") passes with uint16 activations: QDQ at opset 21, standard ONNX that
  # onnx's reference evaluator runs too.
  import onnx
  from onnx import numpy_helper

  manifest = _export_shapes(str(tmp_path), "onnx", "w8a16", ("text_encoder", "vae_decoder"))
  _check_calibrated(manifest, "w8a16")
  # The token embedding table in 8 bits, like every weight (onnxruntime would give a table
  # that Gather reads the activations' 16).
  text = onnx.load(os.path.join(manifest["folder"], manifest["components"]["text_encoder"]
                                ["file"]))
  assert manifest["components"]["text_encoder"]["passed"]
  stored = {i.name: numpy_helper.to_array(i) for i in text.graph.initializer}
  dequantized = {n.output[0]: n.input[0] for n in text.graph.node
                 if n.op_type == "DequantizeLinear"}
  tables = [stored[dequantized[n.input[0]]] for n in text.graph.node if n.op_type == "Gather"
            and n.input[0] in dequantized and dequantized[n.input[0]] in stored]
  assert tables and all(t.dtype == np.uint8 and t.ndim == 2 for t in tables), tables
  entry = manifest["components"]["vae_decoder"]
  assert entry["passed"], entry["parity"]["failures"]
  model = onnx.load(os.path.join(manifest["folder"], entry["file"]))
  assert {o.domain: o.version for o in model.opset_import}[""] == 21
  inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
  activations = {inits[n.input[2]].dtype.name for n in model.graph.node
                 if n.op_type == "QuantizeLinear"}
  weights = {inits[n.input[0]].dtype.name for n in model.graph.node
             if n.op_type == "DequantizeLinear" and n.input[0] in inits
             and inits[n.input[0]].ndim == 4}
  assert activations == {"uint16"} and weights == {"uint8"}, (activations, weights)
  assert _reference_evaluator_snr(manifest["folder"], entry, model) >= (
      entry["parity"]["snr_db"] - 1)


def test_tflite_int8_static_on_the_trained_model_is_byte_identical(tmp_path):
  first = _export_shapes(str(tmp_path), "tflite", "int8_static", ("text_encoder", "vae_decoder"))
  _check_calibrated(first, "int8_static")
  # The text encoder's causal mask (float32's minimum) starts in float: quantized, LiteRT
  # aborted the whole process on the model's first call (SIGABRT, no message).
  text = first["components"]["text_encoder"]
  assert text["passed"], text["parity"]["failures"]
  assert text["quantization"]["unbounded_in_float"]
  # Both have norms (LayerNorm, GroupNorm) whose statistics stay in float; neither has time
  # features. w8a16 keeps nothing in float by rule.
  for entry in (text, first["components"]["vae_decoder"]):
    rules = entry["quantization"]["float_by_rule"]
    assert rules["norm_statistics"] > 0 and rules["time_features"] == 0, rules
  # Its QUANTIZE and DEQUANTIZE ops read as such by parsers that know only the legacy code.
  check_readable_by_old_parsers(os.path.join(first["folder"], text["file"]))
  # The token embedding table is stored in int8 and dequantized for the lookup.
  from ai_edge_litert import interpreter as litert

  interp = litert.Interpreter(model_path=os.path.join(first["folder"], text["file"]))
  ops = interp._get_ops_details()
  dtypes = {d["index"]: d["dtype"] for d in interp.get_tensor_details()}
  producers = {i: op for op in ops for i in op["outputs"]}
  tables = [op["inputs"][1] for op in ops if op["op_name"] == "EMBEDDING_LOOKUP"]
  assert tables and all(producers[t]["op_name"] == "DEQUANTIZE"
                        and dtypes[producers[t]["inputs"][0]] == np.int8 for t in tables)
  second = _export_shapes(str(tmp_path), "tflite", "int8_static", ("vae_decoder",), force=True)
  assert (first["components"]["vae_decoder"]["sha256"]
          == second["components"]["vae_decoder"]["sha256"])


def test_onnx_static_keeps_the_causal_mask_in_float(tmp_path):
  # The CLIP text encoder adds its causal mask (float32's minimum above the diagonal) to the
  # attention scores: that Add's output has no usable int8 range and its SQNR is not
  # finite. Fallback must rank it first; dropped from the ranking, the trained text encoder
  # ended at 12.6 dB after every round.
  manifest = _export_shapes(str(tmp_path), "onnx", "int8_static",
                            ("text_encoder", "vae_decoder"))
  entry = manifest["components"]["text_encoder"]
  assert entry["passed"], entry["parity"]["failures"]
  first = entry["quantization"]["fallback"][:2]
  assert all(f["sqnr_db"] is None for f in first), first
  # QDQ at opset 19: onnx's reference evaluator runs it too, and agrees with onnxruntime.
  import onnx

  model = onnx.load(os.path.join(manifest["folder"], entry["file"]))
  assert {o.domain: o.version for o in model.opset_import}[""] == 19 and model.ir_version == 9
  assert _reference_evaluator_snr(manifest["folder"], entry, model) >= (
      entry["parity"]["snr_db"] - 1)
  # uint8 weights: with int8 ones, onnxruntime's kernels on x86 CPUs without VNNI saturate
  # (the trained decoder then gave 16 dB, with every node quantized).
  import onnx
  from onnx import numpy_helper

  decoder = manifest["components"]["vae_decoder"]
  # It misses the gate (SNR 12.8 dB, SSIM 0.78 after fallback: README, "What the gate lets
  # through"), but far from the saturated 16 dB PSNR.
  assert decoder["parity"]["psnr_db"] > 25, decoder["parity"]
  model = onnx.load(os.path.join(manifest["folder"], decoder["file"]))
  quantized = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
  weights = [quantized[n.input[0]] for n in model.graph.node
             if n.op_type == "DequantizeLinear" and n.input[0] in quantized
             and quantized[n.input[0]].ndim == 4]
  assert weights and all(w.dtype == np.uint8 for w in weights)


def test_tflite_calibration_subset_is_seeded_and_spans_the_trajectory():
  from edgediff.quant import tflite_static

  recorded = [{"timestep": np.array([t], np.float32), "prompt": np.array([p])}
              for p in range(33) for t in range(8)]
  first = tflite_static.calibration_subset(recorded)
  assert len(first) == tflite_static.MAX_CALIBRATION_SAMPLES
  assert [id(f) for f in first] == [id(f) for f in tflite_static.calibration_subset(recorded)]
  assert {float(f["timestep"][0]) for f in first} == set(range(8))
  assert len({int(f["prompt"][0]) for f in first}) > 20
  small = recorded[:10]
  assert tflite_static.calibration_subset(small) == small


def test_tflite_calibration_keeps_each_tensors_extremes(tmp_path):
  # ai-edge-quantizer's own calibrate keeps 95% of the past range at every sample: after a
  # small sample and a large one it reports a range near the small one's, and the large
  # one's activations (a UNet's at another timestep) are clipped.
  import torch

  from edgediff.export import tflite as tflite_lib
  from edgediff.quant import tflite_static

  path = str(tmp_path / "relu.tflite")
  tflite_lib.export_tflite(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()),
                           {"x": torch.zeros(1, 4)}, ("y",), path)
  small = {"x": np.full((1, 4), 0.5, np.float32)}
  large = {"x": np.array([[-8.0, 2.0, 3.0, 40.0]], np.float32)}
  qt = tflite_static._quantizer(path, "int8_static", [])
  merged = tflite_static._calibrate(path, qt, [small, large])
  x = next(v for k, v in merged.items() if k.endswith("x"))
  assert float(np.min(x["min"])) == -8.0 and float(np.max(x["max"])) == 40.0


def test_gate_samples_are_held_out_of_calibration_and_span_the_trajectory():
  from edgediff.quant import calibration

  recorded = [{"timestep": np.array([t], np.float32), "prompt": np.array([p])}
              for p in range(9) for t in (999, 874, 749, 624, 499, 374, 249, 124)]
  gate, rest = calibration.held_out(recorded, 4)
  assert [float(f["timestep"][0]) for f in gate] == [124, 374, 749, 999]
  assert len(rest) == len(recorded) - 4 and not {id(f) for f in gate} & {id(f) for f in rest}
  again, _ = calibration.held_out(recorded, 4)
  assert [id(f) for f in again] == [id(f) for f in gate]
  tokens = [{"input_ids": np.array([[i]])} for i in range(10)]
  gate, rest = calibration.held_out(tokens, 4)
  assert len(gate) == 4 and len(rest) == 6
  with pytest.raises(ValueError, match="too few"):
    calibration.held_out(tokens[:4], 4)


def test_too_few_calibration_prompts_is_a_clear_error(tmp_path):
  # One prompt and the empty one give the text encoder 2 recorded inputs: fewer than the
  # gate holds out. The export stops with a message, and leaves no artifact behind.
  from edgediff import pipeline
  from edgediff.errors import EdgediffError
  from edgediff.export import exporter

  opts = exporter.ExportOptions(fmt="onnx", out=str(tmp_path), recipe="int8_static",
                                components=("text_encoder",), calib_prompts=("a red circle",))
  with pytest.raises(EdgediffError, match="--calib-prompts"):
    exporter.export_pipeline(pipeline.open_pipeline("md-tiny"), opts)
  folder = tmp_path / "md-tiny" / "onnx" / "int8_static"
  assert not list(folder.glob("*.onnx"))


def test_fallback_leaves_the_best_round_not_the_last():
  # Rounds that keep more in float can come out worse (as the shapes UNet's round 4 did):
  # the artifact left is the best round's, quantized again with that round's exclusions.
  from edgediff.quant import fallback

  rng = np.random.default_rng(0)
  reference = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
  noise_by_round = {0: 1.0, 1: 0.05, 2: 0.5, 3: 0.8}  # by how many names are excluded
  calls = []

  def quantize(excluded):
    calls.append(list(excluded))
    noisy = reference + noise_by_round[len(excluded)] * rng.standard_normal(reference.shape)
    return lambda feed: {"y": noisy.astype(np.float32)}

  names = iter(["a", "b", "c", "d"])
  thresholds = metrics.Thresholds(snr_db=99.0, pearson=0.999999, ssim=1.0)  # never passes
  info = fallback.quantize_with_fallback(
      quantize, lambda: {next(names): -1.0}, [{}], [reference], "y", thresholds)
  assert info["rounds"] == fallback.MAX_ROUNDS and info["kept_round"] == 2
  assert [h["float"] for h in info["history"]] == [0, 1, 2, 3]
  best = max(info["history"], key=lambda h: h["snr_db"])
  assert best is info["history"][1]
  assert calls[-1] == ["a"] and [e["op"] for e in info["fallback"]] == ["a"]


def _mlp_tflite(tmp_path):
  import torch

  from edgediff.export import tflite as tflite_lib

  torch.manual_seed(0)
  model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
  path = str(tmp_path / "mlp.tflite")
  tflite_lib.export_tflite(model, {"x": torch.zeros(1, 16)}, ("y",), path)
  feeds = [{"x": np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32)}
           for i in range(2)]
  quantized = str(tmp_path / "q.tflite")
  from edgediff.quant import tflite_static

  tflite_static._quantize(path, quantized, "int8_static", feeds, [], {})
  return model, path, quantized, feeds


def test_tflite_fallback_compares_each_tensor_with_its_float_value(tmp_path):
  # The float model's intermediate tensors are the ones PyTorch computes; the float model
  # compared with itself has no error, the int8 one a finite error on each quantized tensor.
  import torch

  from edgediff.quant import tflite_static

  model, path, quantized, feeds = _mlp_tflite(tmp_path)
  hidden = model[1](model[0](torch.from_numpy(feeds[0]["x"]))).detach().numpy()
  reference = tflite_static._FloatReference(path, feeds[:1], str(tmp_path))
  stored = reference.outputs[0].values()
  assert any(s.size == hidden.size and np.allclose(s, hidden.ravel(), atol=1e-5)
             for s in stored)
  assert reference.snr(path) == {}
  snr = reference.snr(quantized)
  # int8 activations: each quantized tensor some 30-60 dB from float, none lost.
  assert snr and all(np.isfinite(v) for v in snr.values())
  assert 25 < min(snr.values()) < 70


def test_tflite_fallback_keeps_int8_weights_under_its_float_ops(tmp_path):
  # An op fallback keeps in float computes in float, from int8 weights that a DEQUANTIZE
  # expands: its fp32 weights would leave the artifact over the 26% size target (md's
  # decoder: 59% of fp32 with 48 tensors in float).
  from ai_edge_litert import interpreter as litert

  from edgediff.quant import tflite_static

  _, path, _, feeds = _mlp_tflite(tmp_path)
  names, ops = tflite_static._graph(path)
  first = names[[op for op in ops if op["op_name"] == "FULLY_CONNECTED"][0]["outputs"][0]]
  excluded = str(tmp_path / "excluded.tflite")
  tflite_static._quantize(path, excluded, "int8_static", feeds, [first], {})
  interp = litert.Interpreter(model_path=excluded)
  details = {d["index"]: d for d in interp.get_tensor_details()}
  ops = [op for op in interp._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
  producers = {i: op for op in interp._get_ops_details() for i in op["outputs"]}
  # The excluded op, and its consumer (the second layer: a tensor in float leaves every
  # op that reads it in float too).
  in_float = [op for op in ops if details[op["outputs"][0]]["dtype"] == np.float32]
  assert first in {details[op["outputs"][0]]["name"] for op in in_float}
  for op in in_float:
    weight = producers.get(op["inputs"][1])  # None: an fp32 constant
    assert weight and weight["op_name"] == "DEQUANTIZE", details[op["inputs"][1]]
    assert details[weight["inputs"][0]]["dtype"] == np.int8


def test_tflite_fallback_reads_tensors_a_chunk_at_a_time(tmp_path, monkeypatch):
  # At full size one call's tensors do not fit in RAM: with a budget of one byte, each
  # tensor is read by its own call of a model copy that outputs it, and the ranking's
  # figures are those of the interpreter that preserves them all. Elements are sampled
  # (here 16 of each tensor of more), the same ones in both models.
  from edgediff import memory, tflite_files
  from edgediff.quant import tflite_static

  _, path, quantized, feeds = _mlp_tflite(tmp_path)
  monkeypatch.setattr(tflite_static, "SAMPLED_ELEMENTS", 16)
  tflite_static._sample_index.cache_clear()
  whole_folder, chunk_folder = tmp_path / "whole", tmp_path / "chunks"
  whole_folder.mkdir()
  chunk_folder.mkdir()
  whole = tflite_static._FloatReference(path, feeds, str(whole_folder)).snr(quantized)

  written = []
  real = tflite_files.with_outputs
  monkeypatch.setattr(tflite_files, "with_outputs",
                      lambda src, tensors, dst: (written.append(tensors), real(src, tensors, dst)))
  monkeypatch.setattr(memory, "RANKING_CHUNK_BYTES", 1)
  reference = tflite_static._FloatReference(path, feeds, str(chunk_folder))
  float_calls = len(written)
  chunked = reference.snr(quantized)
  tflite_static._sample_index.cache_clear()
  assert float_calls == len(reference.outputs[0]) >= 2 and all(len(t) == 1 for t in written)
  assert max(v.size for v in reference.outputs[0].values()) == 16  # the 32-wide ones sampled
  assert set(chunked) == set(whole) and whole
  assert all(abs(chunked[n] - whole[n]) < 1e-6 for n in whole), (chunked, whole)
  assert not list(chunk_folder.iterdir())  # each copy removed after its chunk


def _conv_onnx(tmp_path):
  """A two-conv ONNX model, and three feeds of different ranges."""
  import torch

  torch.manual_seed(0)
  model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(8, 3, 3, padding=1)).eval()
  fp32 = str(tmp_path / "fp32.onnx")
  torch.onnx.export(model, (torch.zeros(1, 4, 8, 8),), fp32, input_names=["x"],
                    output_names=["y"], dynamo=False)
  feeds = [{"x": np.random.default_rng(i).standard_normal((1, 4, 8, 8), np.float32) * (i + 1)}
           for i in range(3)]
  return fp32, feeds


def test_onnx_fallback_ranks_nodes_a_chunk_at_a_time(tmp_path, monkeypatch):
  # Each quantized activation's SQNR against itself after QuantizeLinear and
  # DequantizeLinear, read in chunks, is what onnxruntime's qdq_loss_debug reports holding
  # every tensor at once; with a budget of one byte each pair is read by a call of its own.
  from onnxruntime.quantization import qdq_loss_debug as debug

  from edgediff import memory
  from edgediff.quant import onnx_static

  fp32, feeds = _conv_onnx(tmp_path)
  qdq = str(tmp_path / "q.onnx")
  onnx_static._quantize(fp32, qdq, "int8_static", feeds, [], str(tmp_path / "ranges.json"))
  whole = onnx_static._node_sqnr(fp32, qdq, feeds[:2])

  aug, aug_f = str(tmp_path / "aug.onnx"), str(tmp_path / "aug_f.onnx")
  debug.modify_model_output_intermediate_tensors(qdq, aug)
  debug.modify_model_output_intermediate_tensors(fp32, aug_f)
  errors = debug.compute_activation_error(debug.create_activation_matching(
      debug.collect_activations(aug, onnx_static._Reader(feeds[:2])),
      debug.collect_activations(aug_f, onnx_static._Reader(feeds[:2]))))
  producers = {o: n.name for n in onnx.load(fp32).graph.node for o in n.output}
  expected = {producers[t]: e["qdq_err"] for t, e in errors.items() if t in producers}
  assert set(whole) == set(expected) and len(whole) >= 3, (whole, expected)
  assert all(abs(whole[n] - expected[n]) < 1e-3 for n in whole), (whole, expected)

  calls = []
  real = onnx.save
  monkeypatch.setattr(onnx, "save", lambda m, path, *a, **k: (calls.append(path),
                                                              real(m, path, *a, **k)))
  monkeypatch.setattr(memory, "RANKING_CHUNK_BYTES", 1)
  chunked = onnx_static._node_sqnr(fp32, qdq, feeds[:2])
  assert len(calls) == len(onnx_static._qdq_pairs(onnx.load(qdq).graph)) >= 3
  assert set(chunked) == set(whole)
  assert all(abs(chunked[n] - whole[n]) < 1e-9 for n in whole)
  assert not [f for f in os.listdir(tmp_path) if "ranking" in f]  # no copy left


def test_onnx_calibration_gives_quantize_statics_own_ranges(tmp_path):
  # edgediff calibrates in less memory than quantize_static does (no arena, no model copies
  # held), and hands it the ranges through its cache: they are the ones it would compute.
  from onnxruntime.quantization import (CalibrationMethod, QuantFormat, load_tensors_data,
                                        quantize_static)

  from edgediff.quant import onnx_static

  fp32, feeds = _conv_onnx(tmp_path)
  theirs, ours = str(tmp_path / "theirs.json"), str(tmp_path / "ours.json")
  quantize_static(fp32, str(tmp_path / "q.onnx"), onnx_static._Reader(feeds),
                  quant_format=QuantFormat.QDQ, calibrate_method=CalibrationMethod.MinMax,
                  calibration_cache_path=theirs)
  onnx_static._calibrate(fp32, feeds, ours)
  expected, got = load_tensors_data(theirs).data, load_tensors_data(ours).data
  assert set(got) == set(expected) and len(got) >= 4
  for name in expected:
    assert np.allclose(got[name].range_value, expected[name].range_value), name


def test_onnx_static_rounds_leave_no_dead_external_data(tmp_path):
  # Each fallback round rewrites the QDQ model; onnx appends external data to an existing
  # file, so without clearing it the artifact grew by a model's weights per round.
  import onnx
  import torch

  from edgediff.quant import onnx_static

  conv = torch.nn.Conv2d(8, 16, 3, padding=1).eval()
  x = torch.randn(1, 8, 6, 6)
  fp32 = str(tmp_path / "fp32.onnx")
  torch.onnx.export(conv, (x,), fp32, input_names=["x"], output_names=["y"], dynamo=False)
  model = onnx.load(fp32)
  onnx.save(model, fp32, save_as_external_data=True, location="fp32.onnx.data",
            size_threshold=0)
  calib = [{"x": np.random.default_rng(i).standard_normal((1, 8, 6, 6), np.float32)}
           for i in range(2)]
  path = str(tmp_path / "q.onnx")
  sizes = []
  for exclude in ([], []):
    onnx_static._quantize(fp32, path, "int8_static", calib, exclude,
                          str(tmp_path / "ranges.json"))
    sizes.append(os.path.getsize(path + ".data"))
  referenced = 0
  for init in onnx.load(path, load_external_data=False).graph.initializer:
    lengths = [int(e.value) for e in init.external_data if e.key == "length"]
    offsets = [int(e.value) for e in init.external_data if e.key == "offset"]
    if lengths:
      referenced = max(referenced, offsets[0] + lengths[0])
  assert sizes[0] == sizes[1], sizes
  assert sizes[1] <= referenced + 4096 * len(model.graph.initializer), (sizes, referenced)


def test_tflite_fallback_stops_when_a_chunk_would_not_fit(tmp_path, monkeypatch):
  # Ranking reads a chunk of tensors per call; when the RAM still free would not hold one,
  # fallback stops, keeps its best round and says why, instead of being killed by the kernel.
  from edgediff.quant import tflite_static

  monkeypatch.setattr(tflite_static, "_nbytes", lambda detail: 10**15)
  manifest = _export_shapes(str(tmp_path), "tflite", "int8_static", ("vae_decoder",))
  info = manifest["components"]["vae_decoder"]["quantization"]
  assert info["rounds"] == 1 and info["fallback"] == [], info  # ranking never ran
  assert "reads 931322.6 GB of tensors per call" in info["stopped"], info["stopped"]
  assert "of RAM free" in info["stopped"], info["stopped"]


def test_onnx_fallback_keeps_uint8_weights_under_its_float_nodes(tmp_path):
  # A node fallback keeps in float computes in float, from per-channel uint8 weights that a
  # DequantizeLinear expands: quantize_static leaves an excluded node's weights in fp32,
  # which kept md's UNet at 80% of the fp32 bytes.
  import onnxruntime as ort

  from edgediff.export import exporter
  from edgediff.quant import onnx_static

  fp32, feeds = _conv_onnx(tmp_path)
  model = onnx.load(fp32)
  onnx.save(model, fp32, save_as_external_data=True, location="fp32.onnx.data",
            size_threshold=0)
  first = [n.name for n in model.graph.node if n.op_type == "Conv"][0]
  ranges = str(tmp_path / "ranges.json")
  plain, excluded = str(tmp_path / "plain.onnx"), str(tmp_path / "excluded.onnx")
  onnx_static._quantize(fp32, plain, "int8_static", feeds, [], ranges)
  onnx_static._quantize(fp32, excluded, "int8_static", feeds, [first], ranges)

  graph = onnx.load(excluded).graph
  inits = {i.name: i for i in graph.initializer}
  producers = {o: n for n in graph.node for o in n.output}
  conv = next(n for n in graph.node if n.name == first)
  assert not producers.get(conv.input[0]) or \
      producers[conv.input[0]].op_type != "DequantizeLinear"  # its activation stays float
  dq = producers[conv.input[1]]
  assert dq.op_type == "DequantizeLinear" and [a.i for a in dq.attribute] == [0]
  assert inits[dq.input[0]].data_type == onnx.TensorProto.UINT8
  assert len(onnx.numpy_helper.to_array(inits[dq.input[1]])) == 8  # one scale per channel
  # Every weight is 8-bit: the file is no larger than the fully quantized one's, give or
  # take the scales.
  assert not [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT
              and len(i.dims) == 4]
  sizes = [exporter.artifact_bytes(p) for p in (plain, excluded)]  # external data included
  assert sizes[1] < sizes[0] + 256, sizes

  # Its output is still the float model's, within int8 weight noise.
  run = lambda p: ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(
      None, feeds[0])[0]
  reference, got = run(fp32), run(excluded)
  snr = 10 * np.log10(np.square(reference).sum() / np.square(reference - got).sum())
  assert snr > 25, snr
