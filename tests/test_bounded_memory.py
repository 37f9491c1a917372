"""What keeps a full-size export in bounded memory, checked on tiny models: lazy weights, the
memory preflight, --int8 surviving a failed candidate, sizes that count external data."""

import json
import os

import numpy as np
import pytest
import torch

from edgediff import checkpoints, cli, memory, pipeline
from edgediff.errors import EdgediffError


def test_weights_are_assigned_lazily_and_nothing_stays_on_meta(tmp_path):
  seeded = pipeline.open_pipeline("md-tiny")
  path = str(tmp_path / "w.safetensors")
  state = {}
  for component in ("text_encoder", "unet"):
    state.update({f"{component}.{k}": v + 0.5 for k, v in
                  seeded.build(component).state_dict().items() if v.is_floating_point()})
  checkpoints.write_tensors(state, path)
  tensors = checkpoints.read_tensors(path)
  assert isinstance(tensors, checkpoints.LazyTensors) and len(tensors) == len(state)
  loaded = pipeline.open_pipeline("md-tiny", weights=path)
  for component in ("text_encoder", "unet"):
    module = loaded.build(component)
    every = list(module.named_parameters()) + list(module.named_buffers())
    assert every and all(t.device.type == "cpu" for _, t in every)
    reference = seeded.build(component).state_dict()
    for name, value in module.state_dict().items():
      expected = reference[name] + 0.5 if value.is_floating_point() else reference[name]
      # incl. non-persistent buffers (CLIP's position_ids)
      torch.testing.assert_close(value, expected)


def test_a_bare_tensor_checkpoint_is_a_clear_error(tmp_path):
  path = str(tmp_path / "w.bin")
  torch.save(torch.zeros(3), path)
  with pytest.raises(EdgediffError, match=r"w\.bin: holds a Tensor, not a mapping"):
    pipeline.open_pipeline("md-tiny", weights=path)


def test_activation_bytes_counts_every_intermediate_tensor():
  linear = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
  feeds = {"x": np.zeros((2, 8), np.float32)}
  # addmm (2x16), relu (2x16), addmm (2x4), in float32; the transposed weights are views.
  counted = memory.activation_bytes(linear, feeds)
  assert 4 * (2 * 16 + 2 * 16 + 2 * 4) <= counted <= 4 * (2 * 16 + 2 * 16 + 2 * 4 + 16 * 8 + 4 * 16)


def test_preflight_refuses_before_any_work_and_leaves_nothing(tmp_path, capsys):
  out = tmp_path / "out"
  code = cli.main(["export", "md-tiny", "--fmt", "onnx", "--component", "unet", "--out",
                   str(out), "--max-memory", "1"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert len(err) == 1 and err[0].startswith("edgediff: error: unet (onnx fp32): needs about")
  assert "allowed by --max-memory" in err[0]
  assert not out.exists()  # not even an empty folder


def test_preflight_estimate_grows_with_calibration_and_weights():
  # Activations at twice the weights, as in md's UNet at 512 px (3.8 and 1.45 GiB).
  plain = memory.estimate("tflite", "int8_dynamic", 10**9, 2 * 10**9, slim=False,
                          calibrated=False)
  calibrated = memory.estimate("tflite", "int8_static", 10**9, 2 * 10**9, slim=False,
                               calibrated=True)
  bigger = memory.estimate("tflite", "int8_dynamic", 2 * 10**9, 2 * 10**9, slim=False,
                           calibrated=False)
  assert plain.peak_bytes < calibrated.peak_bytes and plain.peak_bytes < bigger.peak_bytes
  with pytest.raises(EdgediffError, match="more than the 1.0 GB allowed"):
    memory.check("unet", plain, memory.GB, "try less")


def test_int8_survives_a_failing_candidate(tmp_path, capsys):
  # One prompt records 2 text-encoder inputs, fewer than the 4 the gate holds out: the
  # calibrated candidate fails with a clear reason, the other two are still chosen among.
  prompts = tmp_path / "one.txt"
  prompts.write_text("a red circle\n")
  out = tmp_path / "out"
  code = cli.main(["export", "md-tiny", "--fmt", "tflite", "--int8", "--component",
                   "text_encoder", "--calib-prompts", str(prompts), "--out", str(out)])
  captured = capsys.readouterr()
  assert code == 3  # a passing recipe was chosen, but a candidate failed
  assert "edgediff: --int8 candidate int8_static failed:" in captured.err
  chosen = captured.out.split("chosen recipe: ")[1].split()[0]
  assert chosen in ("int8_dynamic", "int8_weight_only")
  with open(out / "md-tiny" / "tflite" / chosen / "manifest.json") as f:
    selection = json.load(f)["int8_selection"]
  failed = selection["candidates"]["int8_static"]
  assert failed["passed"] is False and "--calib-prompts" in failed["failed"]
  assert all(selection["candidates"][r]["passed"] for r in ("int8_dynamic", "int8_weight_only"))
  assert not (out / "md-tiny" / "tflite" / "int8_static" / "text_encoder.tflite").exists()
  # Refused before the recording, which is not started for nothing.
  assert not (out / "md-tiny" / "calibration").exists()


def test_sizes_count_external_data(tmp_path, capsys, monkeypatch):
  from edgediff import onnx_files

  monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 0)  # as a full-size UNet is written
  out = tmp_path / "out"
  code = cli.main(["export", "md-tiny", "--fmt", "onnx", "--component", "vae_decoder",
                   "--out", str(out)])
  assert code == 0
  folder = out / "md-tiny" / "onnx" / "fp32"
  entry = json.loads((folder / "manifest.json").read_text())["components"]["vae_decoder"]
  data = [d["file"] for d in entry["external_data"]]
  assert data and all((folder / d).is_file() for d in data)
  model_bytes = (folder / "vae_decoder.onnx").stat().st_size
  data_bytes = sum((folder / d).stat().st_size for d in data)
  assert data_bytes > model_bytes  # the weights are in the data file
  assert entry["bytes"] == model_bytes + data_bytes
  table = capsys.readouterr().out
  assert f"{entry['bytes'] / 1e6:.2f}" in table
  # A re-run sees the data file, and a missing one makes the artifact stale.
  assert cli.main(["parity", str(out)]) == 0
  os.remove(folder / data[0])
  assert cli.main(["export", "md-tiny", "--fmt", "onnx", "--component", "vae_decoder",
                   "--out", str(out)]) == 0
  assert "up to date" not in capsys.readouterr().err


def test_onnx_recipes_of_an_unsimplified_model_with_external_data(tmp_path, monkeypatch):
  # What a full-size UNet takes: no onnxslim (>= 1 GB of weights) and external data. The
  # exporter's own value_info then reached quantize_dynamic, which refused it after turning
  # Gemm into MatMul; fp16 gave two Casts of one name where one tensor feeds two fp32 ops,
  # and over 2 GB failed in the converter's in-memory shape inference.
  import onnxruntime
  from onnxruntime.transformers import float16

  from edgediff import onnx_files
  from edgediff.export import onnx as onnx_lib
  from edgediff.runtimes import torch_call
  from edgediff.quant import recipes

  monkeypatch.setattr(onnx_lib, "SLIM_MAX_BYTES", 0)
  monkeypatch.setattr(onnx_files, "EXTERNAL_DATA_BYTES", 0)

  def in_memory_shape_inference(*args, **kwargs):  # serialises the model: fails over 2 GB
    raise ValueError("Failed to serialize proto (as for SD-1.5's 3.4 GB UNet)")

  monkeypatch.setattr(float16, "infer_shapes", in_memory_shape_inference)
  unet = pipeline.open_pipeline("md-tiny").build("unet")
  feeds = {i.name: np.random.default_rng(0).standard_normal(i.shape).astype(i.dtype)
           for i in unet.input_specs(1, 8)}
  expected = torch_call(unet, feeds)
  fp32 = str(tmp_path / "unet.onnx")
  onnx_lib.export_onnx(unet, {k: torch.from_numpy(v) for k, v in feeds.items()},
                       unet.output_names, fp32)
  assert os.path.isfile(fp32 + ".data")
  for recipe, min_cosine in (("fp16", 0.9999), ("int8_dynamic", 0.99)):
    path = str(tmp_path / recipe / "unet.onnx")
    os.makedirs(os.path.dirname(path))
    recipes.quantize_onnx(recipe, fp32, path)
    actual = onnxruntime.InferenceSession(path).run(None, feeds)[0]
    cosine = float(np.dot(actual.ravel(), expected.ravel())
                   / np.linalg.norm(actual) / np.linalg.norm(expected))
    assert cosine > min_cosine, (recipe, cosine)


def test_the_budget_counts_what_the_process_already_holds(monkeypatch):
  # A check made after a long recording must not refuse for the memory the recording holds.
  import psutil

  class NoneFree:
    available = 0

  monkeypatch.setattr(psutil, "virtual_memory", lambda: NoneFree())
  held = psutil.Process().memory_info().rss
  assert memory.available_bytes() >= held // 2
  fits = memory.Estimate(0, 0, held // 2)
  memory.check("unet", fits, None, "try less")
  with pytest.raises(EdgediffError, match="more than the .* GB available"):
    memory.check("unet", memory.Estimate(0, 0, 4 * held), None, "try less")


def test_release_hands_freed_memory_back():
  # Freed memory that glibc's malloc keeps for reuse (here 300 MB of 100 KB blocks, below its
  # mmap threshold, freed around a few that stay) leaves the process's RSS high until
  # malloc_trim: what each component's export leaves behind for the next.
  import platform

  import psutil

  if platform.libc_ver()[0] != "glibc":
    pytest.skip("malloc_trim is glibc's")
  process = psutil.Process()
  blocks = [np.ones(100_000 // 8) for _ in range(3000)]
  kept = blocks[::50]
  del blocks
  held = process.memory_info().rss
  memory.release()
  assert held - process.memory_info().rss > 200 * 2**20
  assert len(kept) == 60


def test_release_frees_a_module_that_litert_torch_converted(tmp_path):
  # torch's export tracer leaves the traced module's parameters reachable from a
  # module-level map after the module is dropped (md's UNet: 1.46 GiB carried into its
  # quantization); each component's export releases them.
  import gc
  import weakref

  import torch

  from edgediff.export import tflite as tflite_lib

  conv = torch.nn.Conv2d(4, 8, 3).eval()
  weight = weakref.ref(conv.weight)
  tflite_lib.export_tflite(conv, {"x": torch.zeros(1, 4, 8, 8)}, ["y"],
                           str(tmp_path / "conv.tflite"))
  del conv
  gc.collect()
  assert weight() is not None  # what torch 2.13 leaves: if this fails, torch fixed it
  memory.release()
  assert weight() is None


def test_external_data_lands_as_readable_as_its_model(tmp_path):
  # onnx 1.23 creates the external data files it saves 0600, the model file by the umask: a
  # quantized model's weights were unreadable to anyone but their owner.
  import onnx
  from onnx import helper, numpy_helper

  from edgediff.export import exporter

  weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
  graph = helper.make_graph(
      [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
      [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
      [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], [weight])
  tmp, folder = tmp_path / "tmp", tmp_path / "out"
  tmp.mkdir()
  folder.mkdir()
  onnx.save(helper.make_model(graph), str(tmp / "unet.onnx"), save_as_external_data=True,
            location="unet.onnx.data", size_threshold=0)
  exporter._replace_into(str(tmp), str(folder))
  mode = (folder / "unet.onnx").stat().st_mode
  assert (folder / "unet.onnx.data").stat().st_mode == mode
