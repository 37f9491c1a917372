import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from edgediff import cli, generate as gen, manifest as manifest_lib, metrics, pipeline, schedule
from edgediff.export import e2e, exporter
from edgediff.quant import recipes

# fp16 end to end is in the README's table of every recipe; here fp32 in both runtimes, int8.
EXPORTS = [("onnx", "fp32"), ("tflite", "fp32"), ("onnx", "int8_dynamic")]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("gen"))
  pipe = pipeline.open_pipeline("shapes")
  for fmt, recipe in EXPORTS:
    exporter.export_pipeline(pipe, exporter.ExportOptions(fmt=fmt, out=out, recipe=recipe))
  return out


@pytest.mark.parametrize("sched,prediction", [(schedule.SD, "epsilon"),
                                               (schedule.ZERO_SNR, "v_prediction")])
def test_ddim_matches_diffusers(sched, prediction):
  from diffusers import DDIMScheduler

  config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
            "clip_sample": False, "set_alpha_to_one": False, "prediction_type": prediction,
            "rescale_betas_zero_snr": sched.zero_terminal_snr, "timestep_spacing": sched.spacing}
  scheduler = DDIMScheduler(**config, steps_offset=1 if sched.spacing == "leading" else 0)
  assert schedule.Schedule.from_diffusers(config) == sched
  scheduler.set_timesteps(8)
  steps = sched.timesteps(8)
  np.testing.assert_array_equal(steps, scheduler.timesteps.numpy())
  abar = sched.alphas_cumprod().numpy().astype(np.float64)
  np.testing.assert_allclose(abar, scheduler.alphas_cumprod.numpy(), atol=1e-6)
  torch.manual_seed(0)
  x = torch.randn(1, 4, 8, 8)
  expected = x.clone()
  ours = x.numpy().astype(np.float64)
  for i, t in enumerate(steps):
    eps = torch.sin(expected * 3 + float(t) / 100)  # a fixed stand-in for a UNet
    expected = scheduler.step(eps, int(t), expected).prev_sample
    eps_ours = np.sin(ours * 3 + float(t) / 100)
    x0, e = gen.predict_x0_eps(eps_ours, ours, abar[t], prediction)
    prev = abar[steps[i + 1]] if i + 1 < len(steps) else abar[0]
    ours = np.sqrt(prev) * x0 + np.sqrt(1 - prev) * e
  np.testing.assert_allclose(ours, expected.numpy(), atol=1e-4)


def test_prediction_types_recover_x0():
  rng = np.random.default_rng(0)
  x0, eps = rng.standard_normal((2, 4, 8, 8))
  abar = 0.3
  x = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
  v = np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0
  for kind, out in (("epsilon", eps), ("v_prediction", v), ("sample", x0)):
    got_x0, got_eps = gen.predict_x0_eps(out, x, abar, kind)
    np.testing.assert_allclose(got_x0, x0, atol=1e-9)
    np.testing.assert_allclose(got_eps, eps, atol=1e-9)


def test_e2e_gate_holds_the_worst_prompt_to_the_threshold_too():
  assert e2e.verdict([40.0, 41.0, 39.0], 30.0)["passed"]
  broken = e2e.verdict([50.0, 50.0, 50.0, 24.8], 30.0)  # mean 43.7 dB: one image is broken
  assert broken["mean_psnr_db"] > 30.0 and not broken["passed"]
  assert broken["worst_psnr_db"] == 24.8
  assert not e2e.verdict([29.0, 29.5], 30.0)["passed"]


@pytest.mark.parametrize("fmt,recipe", EXPORTS)
def test_end_to_end_images_agree(out_dir, fmt, recipe):
  folder = os.path.join(out_dir, "shapes", fmt, recipe)
  result = e2e.run(folder, ["a red circle", "a blue square"], seeds=1, steps=4)
  assert result["passed"], e2e.summary(result)
  assert result["mean_psnr_db"] >= recipes.TABLE[recipe].e2e_psnr_db
  assert result["worst_psnr_db"] >= recipes.TABLE[recipe].e2e_psnr_db
  for case in result["cases"]:
    assert len(case.drift_db) == 4  # one point per step
    assert case.image.shape == (3, 64, 64)
  if recipe != "fp32":
    assert result["mean_psnr_db"] < 100  # the quantized pipeline is not secretly fp32


def test_onnx_and_tflite_agree(out_dir):
  images = []
  for fmt in ("onnx", "tflite"):
    backend = gen.artifact_backend(os.path.join(out_dir, "shapes", fmt, "fp32"))
    images.append(gen.generate(backend, "a green star", steps=3, seed=2, progress=False).image)
  assert metrics.image_psnr_db(images[0], images[1]) > 60


def test_the_tokenizer_maps_a_pruned_vocabulary_not_a_gather_in_the_graph(out_dir, capsys):
  from edgediff import profile, specs
  from edgediff.models import text_encoder as te

  folder = os.path.join(out_dir, "shapes", "tflite", "fp32")
  manifest = manifest_lib.read(folder)
  assert manifest["vocabulary"] == list(specs.SHAPES_VOCABULARY)
  # The CLIP id -> row remap was a LESS, SELECT and GATHER_ND chain on the input, which GPU
  # delegates refuse; only the embedding table's own lookup is left.
  ops = profile.tflite_op_mix(os.path.join(folder, "text_encoder.tflite"))["ops"]
  assert not {"LESS", "SELECT", "GATHER", "GATHER_ND"} & set(ops), ops
  assert ops["EMBEDDING_LOOKUP"] == 1
  # TensorFlow 2.15's GPU analyzer flagged SELECT and GATHER_ND too; now only the table's own
  # lookup is left to the CPU (edgediff gpu-check exits 1 on a partial graph).
  assert cli.main(["gpu-check", folder]) == 1
  table = capsys.readouterr().out
  assert "EMBEDDING_LOOKUP x1" in table and "GATHER_ND" not in table and "SELECT" not in table
  assert "tensorflow-2.15.1" in table
  # An app maps each BPE token through the export's vocab.json: that gives the rows the
  # artifact takes, and the artifact's output is PyTorch's.
  with open(os.path.join(folder, manifest["tokenizer"][0]), encoding="utf-8") as f:
    vocab = json.load(f)
  prompt = "a small red circle above a big blue zebra"  # "zebra" is outside the vocabulary
  clip_ids = te.tokenize([prompt])
  tokens = te.load_tokenizer().convert_ids_to_tokens(clip_ids[0].tolist())
  app_ids = np.array([[vocab[t] for t in tokens]], np.int32)
  rows = te.tokenize([prompt], vocabulary=specs.SHAPES_VOCABULARY)
  np.testing.assert_array_equal(app_ids, rows.numpy())
  assert 0 in app_ids and app_ids.max() == len(specs.SHAPES_VOCABULARY)  # unknown; end of text
  backend = gen.artifact_backend(folder)
  with torch.no_grad():
    expected = pipeline.open_pipeline("shapes").build("text_encoder")(rows).numpy()
  np.testing.assert_allclose(backend.runners["text_encoder"]({"input_ids": app_ids}), expected,
                             atol=1e-4)


def test_generate_cli(out_dir, tmp_path, capsys):
  png = tmp_path / "x.png"
  assert cli.main(["generate", "--prompt", "a red circle", "--image", str(png), "--steps", "3",
                   "--guidance", "2"]) == 0
  assert Image.open(png).size == (64, 64)  # the default model, shapes
  folder = os.path.join(out_dir, "shapes", "onnx", "int8_dynamic")
  assert cli.main(["generate", "--prompt", "a red circle", "--image", str(tmp_path / "q.png"),
                   "--artifacts", folder, "--steps", "3"]) == 0
  out = capsys.readouterr().out
  assert "image PSNR against PyTorch fp32" in out and "time per component" in out


def test_parity_e2e_cli_and_report(out_dir, tmp_path, capsys):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a red circle\n")
  report = tmp_path / "r" / "report.html"
  assert cli.main(["parity", os.path.join(out_dir, "shapes", "onnx"), "--e2e", "--prompts",
                   str(prompts), "--steps", "2", "--report", str(report), "--json"]) == 0
  summaries = json.loads(capsys.readouterr().out)
  assert {s["recipe"] for s in summaries} == {"fp32", "int8_dynamic"}
  assert all(len(s["cases"][0]["drift_db"]) == 2 for s in summaries)
  page = report.read_text()
  assert "data:image/png;base64," in page and "int8_dynamic" in page
  assert Image.open(tmp_path / "r" / "report.png").size[0] > 500


def test_e2e_below_threshold_names_the_dominant_component(out_dir, tmp_path, monkeypatch,
                                                           capsys):
  # An unreachable threshold, so that the attribution runs on a real export.
  monkeypatch.setitem(recipes.TABLE, "int8_dynamic",
                      dataclasses.replace(recipes.TABLE["int8_dynamic"], e2e_psnr_db=500.0))
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a red circle\na blue square\n")
  report = tmp_path / "report.html"
  assert cli.main(["parity", os.path.join(out_dir, "shapes", "onnx", "int8_dynamic"), "--e2e",
                   "--prompts", str(prompts), "--steps", "2", "--report", str(report),
                   "--json"]) == 1
  captured = capsys.readouterr()
  (s,) = json.loads(captured.out)
  swaps = s["component_psnr_db"]
  assert set(swaps) == {"text_encoder", "unet", "vae_decoder"}
  assert s["dominant_component"] == min(swaps, key=swaps.get)
  # Each swap moves the image, and less than all three exported components together do.
  assert all(v < 100 for v in swaps.values())
  assert min(swaps.values()) >= s["mean_psnr_db"] - 1.0
  assert "dominates" in captured.err and "short by" in captured.err
  assert "Below threshold" in report.read_text()


def test_runtimes_agree_table(out_dir):
  results = [e2e.run(os.path.join(out_dir, "shapes", fmt, "fp32"), ["a green star"], seeds=1,
                     steps=2) for fmt in ("onnx", "tflite")]
  (row,) = e2e.runtimes_agree(results)
  assert set(row) == {"recipe", "onnx_vs_torch_db", "tflite_vs_torch_db", "onnx_vs_tflite_db"}
  assert row["recipe"] == "fp32" and row["onnx_vs_tflite_db"] > 60
  assert e2e.runtimes_agree(results[:1]) == []
