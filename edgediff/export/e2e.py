"""End-to-end parity: the same prompts and seeds through PyTorch fp32 and an export.

Per prompt and seed: image PSNR and SSIM (scikit-image) against PyTorch fp32, and the
latent drift curve (latent PSNR after each denoising step). Thresholds on the mean image
PSNR per recipe. The report (PNG sheet, and an HTML page embedding it with the table) shows
the fp32 image beside the exported one, an error heat map and the drift curve.
"""

import base64
import dataclasses
import html
import io

import numpy as np

from edgediff import atomic
from edgediff import generate as gen
from edgediff import pipeline as pipeline_lib
from edgediff.export import exporter, parity

# Minimum mean image PSNR (dB) against PyTorch fp32, per recipe.
E2E_PSNR_DB = {"fp32": 60.0, "fp16": 40.0, "int8_weight_only": 35.0, "int8_dynamic": 35.0,
               "w8a16": 35.0, "int8_static": 30.0}


@dataclasses.dataclass
class Case:
  prompt: str
  seed: int
  psnr_db: float
  ssim: float
  drift_db: list[float]  # latent PSNR after each step
  reference: np.ndarray  # (3, H, W)
  image: np.ndarray


def run(folder: str, prompts: list[str] | None, seeds: int, steps: int = 8,
        guidance: float = 1.0) -> dict:
  from skimage.metrics import structural_similarity

  manifest = exporter.read_manifest(folder)
  pipe = pipeline_lib.open_source(manifest["source"])
  prompts = prompts or pipe.prompts
  reference = gen.torch_backend(pipe, manifest["latent_size"])
  exported = gen.artifact_backend(folder, pipe.tokenizer)
  cases = []
  for prompt in prompts:
    for seed in range(seeds):
      ref = gen.generate(reference, prompt, steps, guidance, seed, progress=False)
      got = gen.generate(exported, prompt, steps, guidance, seed, progress=False)
      cases.append(Case(
          prompt, seed, gen.image_psnr_db(ref.image, got.image),
          float(structural_similarity(ref.image, got.image, channel_axis=0, data_range=1.0)),
          [parity.psnr_db(r, g) for r, g in zip(ref.latents, got.latents)],
          ref.image, got.image))
  mean_psnr = float(np.mean([c.psnr_db for c in cases]))
  threshold = E2E_PSNR_DB[manifest["recipe"]]
  return {"folder": folder, "format": manifest["format"], "recipe": manifest["recipe"],
          "mean_psnr_db": mean_psnr, "mean_ssim": float(np.mean([c.ssim for c in cases])),
          "threshold_db": threshold, "passed": mean_psnr >= threshold, "cases": cases}


def summary(result: dict) -> dict:
  """The JSON-able part of a result (no images)."""
  out = {k: v for k, v in result.items() if k != "cases"}
  out["cases"] = [{"prompt": c.prompt, "seed": c.seed, "psnr_db": c.psnr_db, "ssim": c.ssim,
                   "drift_db": c.drift_db} for c in result["cases"]]
  if not result["passed"]:
    worst = min(result["cases"], key=lambda c: c.psnr_db)
    drops = np.diff([min(d, 200.0) for d in worst.drift_db])
    out["shortfall_db"] = result["threshold_db"] - result["mean_psnr_db"]
    out["drift_grows_most_at_step"] = int(np.argmin(drops)) + 2 if len(drops) else 1
  return out


def write_report(results: list[dict], png_path: str, html_path: str | None = None) -> None:
  """A PNG sheet (one row per prompt and export) and, optionally, an HTML page around it."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  rows = [(r, c) for r in results for c in r["cases"]]
  fig, axes = plt.subplots(len(rows), 4, figsize=(13, 3.2 * len(rows)), squeeze=False)
  for (result, case), ax in zip(rows, axes):
    label = f"{result['format']}/{result['recipe']}"
    ax[0].imshow(case.reference.transpose(1, 2, 0))
    ax[0].set_title(f"PyTorch fp32\n{case.prompt[:40]} (seed {case.seed})", fontsize=8)
    ax[1].imshow(np.clip(case.image, 0, 1).transpose(1, 2, 0))
    ax[1].set_title(f"{label}: {case.psnr_db:.1f} dB, SSIM {case.ssim:.3f}", fontsize=8)
    heat = ax[2].imshow(np.abs(case.reference - case.image).mean(axis=0), cmap="inferno")
    ax[2].set_title("|error|, mean over RGB", fontsize=8)
    fig.colorbar(heat, ax=ax[2], fraction=0.046)
    steps = np.arange(1, len(case.drift_db) + 1)
    ax[3].plot(steps, np.minimum(case.drift_db, 200.0), marker="o")
    ax[3].set_xlabel("step")
    ax[3].set_ylabel("latent PSNR (dB)")
    ax[3].set_title("latent drift", fontsize=8)
    for a in ax[:3]:
      a.axis("off")
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=80)
  plt.close(fig)
  atomic.write_bytes(png_path, buffer.getvalue())
  if html_path:
    table = "".join(
        f"<tr><td>{html.escape(r['format'])}</td><td>{html.escape(r['recipe'])}</td>"
        f"<td>{r['mean_psnr_db']:.2f}</td><td>{r['mean_ssim']:.4f}</td>"
        f"<td>{r['threshold_db']}</td><td>{'pass' if r['passed'] else 'FAIL'}</td></tr>"
        for r in results)
    page = (
        "<!doctype html><meta charset='utf-8'><title>edgediff end-to-end parity</title>"
        "<h1>End-to-end parity against PyTorch fp32</h1><table border=1 cellpadding=4>"
        "<tr><th>format</th><th>recipe</th><th>mean image PSNR (dB)</th><th>mean SSIM</th>"
        f"<th>threshold (dB)</th><th>gate</th></tr>{table}</table>"
        f"<img src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>")
    atomic.write_bytes(html_path, page.encode())
