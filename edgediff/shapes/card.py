"""Ships a train-demo run's weights into edgediff/assets/shapes and measures them for its card.

  python -m edgediff.shapes.card RUN_DIR [--quant] [-n 200] [--variant V ...]

For every variant the run trained: the weights go to assets/shapes/<pipeline>.safetensors in
fp16 (half the bytes; every figure below is measured on the shipped fp16-stored weights,
computed in fp32), then adherence on held-out captions is measured in PyTorch, and with
--quant also on TFLite fp16 and int8_dynamic and ONNX int8_dynamic and int8_static exports,
with their per-component parity. Plots (loss curves, a sample sheet) and card.json are written
beside the weights; MODEL_CARD.md quotes them. With --variant, only those variants are
shipped and measured, and the other variants' entries in an existing card.json are kept
(variants train in parallel and finish at different times).
"""

import argparse
import io
import json
import os
import tempfile

import numpy as np
import torch

from edgediff import atomic, checkpoints, counting, pipeline, specs
from edgediff import generate as gen
from edgediff.errors import EdgediffError
from edgediff.shapes import adherence, data, train

ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "shapes")
# TFLite int8_static is left out: ai-edge-quantizer's calibration of the UNet takes minutes
# and, after a fallback round, hours on this CPU.
QUANT = (("tflite", "fp16"), ("tflite", "int8_dynamic"), ("onnx", "int8_dynamic"),
         ("onnx", "int8_static"))


def ship(run_dir: str, variants) -> dict[str, int]:
  """Copies each trained variant into the assets in fp16; returns bytes per file."""
  sizes = {}
  for name in (train.VARIANTS[v] for v in variants):
    src = os.path.join(run_dir, f"{name}.safetensors")
    if not os.path.exists(src):
      continue
    tensors = {k: v.half() if v.is_floating_point() else v
               for k, v in checkpoints.read_tensors(src).items()}
    dst = os.path.join(ASSETS, f"{name}.safetensors")
    checkpoints.write_tensors(tensors, dst)
    sizes[name] = os.path.getsize(dst)
  return sizes


def _png(fig) -> bytes:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
  return buffer.getvalue()


def _read_losses(path: str) -> list[float]:
  with open(path) as f:
    return [json.loads(line)["loss"] for line in f]


def plot_losses(run_dir: str, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(14, 3.2))
  for ax, stage, title in ((axes[0], "autoencoder", "autoencoder (L1 + MSE)"),
                           (axes[2], "text_encoder", "text encoder (attribute CE, sum)")):
    losses = _read_losses(os.path.join(run_dir, f"{stage}.loss.jsonl"))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.8)
    ax.set(title=title, xlabel="step", yscale="log")
  for variant in train.VARIANTS:
    log = os.path.join(run_dir, f"{variant}.loss.jsonl")
    if os.path.exists(log):
      losses = np.asarray(_read_losses(log))
      k = 50  # moving average: single-batch losses swing with the sampled timesteps
      smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
      axes[1].plot(np.arange(k, len(losses) + 1), smooth, lw=1, label=variant)
  axes[1].set(title="diffusion (v MSE, 50-step mean)", xlabel="step", yscale="log")
  axes[1].legend()
  atomic.write_bytes(path, _png(fig))
  plt.close(fig)


def sample_sheet(images: np.ndarray, scenes: list[data.Scene], path: str, cols: int = 8) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = -(-len(images) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9))
  for ax, image, scene in zip(axes.flat, images, scenes):
    ax.imshow(image, interpolation="nearest")
    s = scene
    ax.set_title(f"{s.size} {s.colour}\n{s.shape}, {s.position}\non {s.background}", fontsize=6)
  for ax in axes.flat:
    ax.axis("off")
  atomic.write_bytes(path, _png(fig))
  plt.close(fig)


def _structure(name: str) -> dict[str, dict]:
  spec = specs.pipeline_spec(name)
  out = {}
  for component in specs.COMPONENTS:
    module = spec.component(component).build(device="meta")
    specs_in = module.input_specs(1, spec.latent_size)
    out[component] = {"params": counting.count_params(module),
                      "macs": counting.count_macs(module, specs_in)}
  return out


def _quant_rows(name: str, n: int) -> list[dict]:
  from edgediff.export import exporter
  from edgediff.quant import recipes

  rows = []
  pipe = pipeline.open_pipeline(name)
  with tempfile.TemporaryDirectory() as tmp:
    for fmt, recipe in QUANT:
      result = exporter.export_pipeline(pipe, exporter.ExportOptions(
          fmt=fmt, out=tmp, recipe=recipe))
      scores, _, _ = adherence.measure(gen.artifact_backend(result.folder), n=n)
      rows.append({"format": fmt, "recipe": recipe, "summary": recipes.TABLE[recipe].summary,
                   "passed": result.passed,
                   "psnr_db": {c: round(e["parity"]["psnr_db"], 1)
                               for c, e in result.manifest["components"].items()},
                   "adherence": scores})
  return rows


def measure(run_dir: str, n: int, quant: bool, variants=tuple(train.VARIANTS)) -> dict:
  path = os.path.join(ASSETS, "card.json")
  card = {"n": n, "variants": {}, "bytes": {}}
  if set(variants) != set(train.VARIANTS) and os.path.exists(path):
    with open(path) as f:
      card = json.load(f)
    if card["n"] != n:
      raise EdgediffError(f"{path} was measured with -n {card['n']}, not {n}")
  shipped = ship(run_dir, variants)
  card["bytes"].update(shipped)
  for variant in variants:
    name = train.VARIANTS[variant]
    if name not in shipped:
      continue
    entry = {"structure": _structure(name)}
    info = os.path.join(run_dir, f"{variant}.diffusion.json")
    if os.path.exists(info):
      with open(info) as f:
        entry["train_seconds"] = json.load(f)["seconds"]
    losses = _read_losses(os.path.join(run_dir, f"{variant}.loss.jsonl"))
    entry["final_loss"] = float(np.mean(losses[-200:]))
    backend = gen.torch_backend(pipeline.open_pipeline(name))
    entry["adherence"] = {}
    for guidance in (1.0, 3.0):
      scores, images, scenes = adherence.measure(backend, n=n, guidance=guidance)
      entry["adherence"][str(guidance)] = scores
      if name == "shapes" and guidance == 1.0:
        sample_sheet(images[:32], scenes[:32], os.path.join(ASSETS, "samples.png"))
    if quant:
      entry["quant"] = _quant_rows(name, n)
    card["variants"][variant] = entry
  info = os.path.join(run_dir, "autoencoder.train.json")
  if os.path.exists(info):
    with open(info) as f:
      card["autoencoder_seconds"] = json.load(f)["seconds"]
  with open(os.path.join(run_dir, "shapes.train.json")) as f:
    card["train_config"] = json.load(f)
  plot_losses(run_dir, os.path.join(ASSETS, "loss.png"))
  atomic.write_json(path, card)
  return card


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run_dir")
  parser.add_argument("-n", type=int, default=200)
  parser.add_argument("--quant", action="store_true")
  parser.add_argument("--variant", action="append", choices=list(train.VARIANTS),
                      help="ship and measure only this variant (repeatable)")
  args = parser.parse_args(argv)
  torch.set_num_threads(os.cpu_count() or 1)
  card = measure(args.run_dir, args.n, args.quant, tuple(args.variant or train.VARIANTS))
  print(json.dumps(card, indent=1))


if __name__ == "__main__":
  main()
