"""What the parity gate's metrics say about real artifacts and about outputs that are wrong.

  python benchmarks/gate_metrics.py DIR [--jsonl FILE]

DIR holds exports of the shipped model (`edgediff export --fmt F --quant R --out DIR`, any
formats and recipes). For each component, on the gate's own inputs, PyTorch fp32's outputs
are the reference, and the table gives the gate's figures (worst sample) of:
  - each exported artifact, in its runtime, on the inputs its gate uses: representative
    ones, or for a calibrated recipe the recorded ones held out of its calibration;
  - the reference plus Gaussian noise at 0.1x, 0.3x and 0.5x its standard deviation;
  - the reference's mean everywhere; the reference shuffled; zeros;
  - PyTorch fp32 with one layer's weights perturbed: the last layer's weights plus noise at
    0.5x their standard deviation.
The gate's thresholds (edgediff/quant/recipes.py) sit between the two groups; the README's
table is this script's output.
"""

import argparse
import glob
import json
import os

import numpy as np
import torch

from edgediff import metrics, pipeline, runtimes
from edgediff.export import exporter, inputs
from edgediff.quant import calibration, recipes

SAMPLES = exporter.PARITY_SAMPLES


def figures(component: str, references, actuals) -> dict:
  out = {
      "psnr_db": min(metrics.psnr_db(r, a) for r, a in zip(references, actuals)),
      "snr_db": min(metrics.snr_db(r, a) for r, a in zip(references, actuals)),
      "pearson": min(metrics.pearson(r, a) for r, a in zip(references, actuals)),
      "cosine": min(metrics.cosine(r, a) for r, a in zip(references, actuals)),
  }
  if component == "vae_decoder":
    out["ssim"] = min(metrics.ssim(r, np.clip(a, 0, 1)) for r, a in zip(references, actuals))
  return out


def degraded(references, rng) -> dict[str, list[np.ndarray]]:
  out = {}
  for k in (0.1, 0.3, 0.5):
    out[f"noise {k}x std"] = [
        (r + k * r.std() * rng.standard_normal(r.shape)).astype(np.float32) for r in references]
  out["mean everywhere"] = [np.full_like(r, r.mean()) for r in references]
  out["shuffled"] = [rng.permutation(r.ravel()).reshape(r.shape) for r in references]
  out["zeros"] = [np.zeros_like(r) for r in references]
  return out


def perturbed_layer(module, samples, rng) -> list[np.ndarray]:
  weight = [p for p in module.parameters() if p.dim() > 1][-1]
  original = weight.detach().clone()
  with torch.no_grad():
    weight += 0.5 * original.std() * torch.from_numpy(
        rng.standard_normal(tuple(weight.shape)).astype(np.float32))
  try:
    return [runtimes.torch_call(module, f) for f in samples]
  finally:
    with torch.no_grad():
      weight.copy_(original)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("dir")
  parser.add_argument("--jsonl")
  args = parser.parse_args()
  manifests = sorted(glob.glob(os.path.join(args.dir, "**", "manifest.json"), recursive=True))
  if not manifests:
    raise SystemExit(f"no manifest.json under {args.dir}")
  pipe = pipeline.open_source(json.load(open(manifests[0]))["source"])
  rows = []
  text_encoder = pipe.build("text_encoder")
  for component in ("text_encoder", "unet", "vae_decoder"):
    module = pipe.build(component)
    samples = inputs.representative_inputs(pipe, component, module, 1, pipe.latent_size,
                                           n=SAMPLES, text_encoder=text_encoder)
    references = [runtimes.torch_call(module, f) for f in samples]
    output = module.output_names[0]
    for path in manifests:
      manifest = json.load(open(path))
      entry = manifest["components"].get(component)
      if not entry or entry["layout"] != "NCHW" or manifest["batch"] != 1:
        continue
      folder = os.path.dirname(path)
      feeds, refs = samples, references
      if manifest["recipe"] in recipes.CALIBRATED:
        recorded = calibration.load(os.path.join(folder, "calibration.npz"), component)
        feeds, _ = calibration.held_out(recorded, SAMPLES)
        refs = [runtimes.torch_call(module, f) for f in feeds]
      run = runtimes.load_runner(manifest["format"], os.path.join(folder, entry["file"]))
      actuals = [run(f)[output] for f in feeds]
      rows.append({"component": component, "case": f"{manifest['format']} "
                   f"{manifest['recipe']}", "artifact": True,
                   **figures(component, refs, actuals)})
    rng = np.random.default_rng(0)
    for case, actuals in degraded(references, rng).items():
      rows.append({"component": component, "case": case, "artifact": False,
                   **figures(component, references, actuals)})
    rows.append({"component": component, "case": "one layer perturbed", "artifact": False,
                 **figures(component, references, perturbed_layer(module, samples, rng))})
  print("| component | output | PSNR (dB) | SNR (dB) | Pearson | cosine | SSIM |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    ssim = f"{r['ssim']:.4f}" if "ssim" in r else "-"
    print(f"| {r['component']} | {r['case']} | {r['psnr_db']:.1f} | {r['snr_db']:.1f} | "
          f"{r['pearson']:.4f} | {r['cosine']:.4f} | {ssim} |")
  if args.jsonl:
    with open(args.jsonl, "a") as f:
      for r in rows:
        f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
