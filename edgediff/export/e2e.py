"""End-to-end parity: the same prompts and seeds through PyTorch fp32 and an export.

Per prompt and seed: image PSNR and SSIM (scikit-image) against PyTorch fp32, and the
latent drift curve (latent PSNR after each denoising step). A threshold per recipe that the
mean image PSNR and the worst prompt's must both clear. The report (PNG sheet, and an HTML page embedding it with the table) shows
the fp32 image beside the exported one, an error heat map and the drift curve.
"""

import base64
import dataclasses
import html
import io

import numpy as np

from edgediff import atomic, manifest as manifest_lib, metrics
from edgediff import generate as gen
from edgediff import pipeline as pipeline_lib
from edgediff.quant import recipes


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
        guidance: float = 1.0, attribute: int = 4) -> dict:
  """Images of every prompt and seed from PyTorch fp32 and from the export in `folder`.

  Below the recipe's threshold, the `attribute` worst cases are generated again with one
  exported component at a time in an otherwise fp32 PyTorch pipeline: the component whose
  swap costs the most image PSNR is the one that dominates the error."""
  from skimage.metrics import structural_similarity

  manifest = manifest_lib.read(folder)
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
          prompt, seed, metrics.image_psnr_db(ref.image, got.image),
          float(structural_similarity(ref.image, got.image, channel_axis=0, data_range=1.0)),
          [metrics.psnr_db(r, g) for r, g in zip(ref.latents, got.latents)],
          ref.image, got.image))
  threshold = recipes.TABLE[manifest["recipe"]].e2e_psnr_db
  result = {"folder": folder, "format": manifest["format"], "recipe": manifest["recipe"],
            **verdict([c.psnr_db for c in cases], threshold),
            "mean_ssim": float(np.mean([c.ssim for c in cases])), "cases": cases}
  if not result["passed"] and attribute:
    worst = sorted(cases, key=lambda c: c.psnr_db)[:attribute]
    by_component = {}
    for component in exported.runners:
      hybrid = dataclasses.replace(
          reference, runners={**reference.runners, component: exported.runners[component]},
          unet_batch=exported.unet_batch if component == "unet" else reference.unet_batch)
      by_component[component] = float(np.mean([metrics.image_psnr_db(
          c.reference, gen.generate(hybrid, c.prompt, steps, guidance, c.seed,
                                    progress=False).image) for c in worst]))
    result["component_psnr_db"] = by_component
    dominant = min(by_component, key=by_component.get)
    quantization = manifest["components"][dominant].get("quantization") or {}
    result["dominant_component"] = dominant
    # The layers that component's own sensitivity ranking found worst and kept in float
    # (calibrated recipes): where the error came from before fallback.
    result["dominant_layers"] = quantization.get("fallback", [])[:5]
  return result


def verdict(psnrs: list[float], threshold: float) -> dict:
  """The end-to-end gate over the images' PSNRs: the mean and the worst must both clear
  `threshold`."""
  mean, worst = float(np.mean(psnrs)), float(min(psnrs))
  return {"mean_psnr_db": mean, "worst_psnr_db": worst, "threshold_db": threshold,
          "passed": mean >= threshold and worst >= threshold}


def summary(result: dict) -> dict:
  """The JSON-able part of a result (no images)."""
  out = {k: v for k, v in result.items() if k != "cases"}
  out["cases"] = [{"prompt": c.prompt, "seed": c.seed, "psnr_db": c.psnr_db, "ssim": c.ssim,
                   "drift_db": c.drift_db} for c in result["cases"]]
  if not result["passed"]:
    worst = min(result["cases"], key=lambda c: c.psnr_db)
    drops = np.diff([min(d, 200.0) for d in worst.drift_db])
    out["shortfall_db"] = result["threshold_db"] - min(result["mean_psnr_db"],
                                                       result["worst_psnr_db"])
    out["drift_grows_most_at_step"] = int(np.argmin(drops)) + 2 if len(drops) else 1
  return out


def explain(s: dict) -> str:
  """One line on an export below its threshold: by how much, where, and what dominates."""
  text = (f"image PSNR mean {s['mean_psnr_db']:.2f} dB, worst prompt {s['worst_psnr_db']:.2f} "
          f"dB, below {s['threshold_db']} (short by {s['shortfall_db']:.2f} dB); latent drift "
          f"grows most at step "
          f"{s['drift_grows_most_at_step']}")
  if "component_psnr_db" in s:
    swaps = ", ".join(f"{c} {v:.1f} dB" for c, v in s["component_psnr_db"].items())
    text += (f"; one exported component at a time in fp32 PyTorch, worst cases: {swaps}: "
             f"{s['dominant_component']} dominates")
    # Manifests written before the one vocabulary named the op "node" (ONNX) or "tensor".
    layers = [(f.get("op") or f.get("node") or f.get("tensor", "?")).rsplit("/", 1)[-1]
              for f in s["dominant_layers"]]
    if layers:
      text += f" (its fallback kept in float first: {', '.join(layers)})"
  return text


def runtimes_agree(results: list[dict]) -> list[dict]:
  """Per recipe exported in more than one format: mean image PSNR of each runtime against
  PyTorch fp32 and of the runtimes against each other, on the same prompts and seeds."""
  rows = []
  for recipe in dict.fromkeys(r["recipe"] for r in results):
    mine = {r["format"]: r for r in results if r["recipe"] == recipe}
    if len(mine) < 2:
      continue
    row = {"recipe": recipe}
    for fmt, r in mine.items():
      row[f"{fmt}_vs_torch_db"] = round(r["mean_psnr_db"], 2)
    (fa, a), (fb, b) = list(mine.items())[:2]
    images = {(c.prompt, c.seed): c.image for c in b["cases"]}
    row[f"{fa}_vs_{fb}_db"] = round(float(np.mean([
        metrics.image_psnr_db(c.image, images[(c.prompt, c.seed)]) for c in a["cases"]
        if (c.prompt, c.seed) in images])), 2)
    rows.append(row)
  return rows


def write_report(results: list[dict], png_path: str, html_path: str | None = None) -> None:
  """A PNG sheet and, optionally, a self-contained HTML page with the table around it.

  One row per prompt and seed: the PyTorch fp32 image, then for every export its image and
  its error heat map (each scaled to its own maximum, given in the title), and the latent
  drift curves of all exports."""
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  keys = [(c.prompt, c.seed) for c in results[0]["cases"]]
  cases = [{(c.prompt, c.seed): c for c in r["cases"]} for r in results]
  labels = [f"{r['format']}/{r['recipe']}" for r in results]
  cols = 2 + 2 * len(results)
  fig, axes = plt.subplots(len(keys), cols, figsize=(1.5 * cols + 1.5, 1.6 * len(keys)),
                           squeeze=False,
                           gridspec_kw={"width_ratios": [1] * (cols - 1) + [2]})
  for row, key in zip(axes, keys):
    first = cases[0][key]
    row[0].imshow(np.clip(first.reference, 0, 1).transpose(1, 2, 0))
    row[0].set_title(f"fp32 (seed {key[1]})\n{key[0][:34]}", fontsize=5)
    for k, (label, mine) in enumerate(zip(labels, cases)):
      case = mine.get(key)
      if case is None:
        continue
      error = np.abs(case.reference - case.image).mean(axis=0)
      row[1 + 2 * k].imshow(np.clip(case.image, 0, 1).transpose(1, 2, 0))
      row[1 + 2 * k].set_title(f"{label}\n{case.psnr_db:.1f} dB, SSIM {case.ssim:.3f}",
                               fontsize=5)
      row[2 + 2 * k].imshow(error, cmap="inferno", vmin=0, vmax=max(float(error.max()), 1e-6))
      row[2 + 2 * k].set_title(f"|error| (max {error.max():.3f})", fontsize=5)
      row[-1].plot(np.arange(1, len(case.drift_db) + 1), np.minimum(case.drift_db, 200.0),
                   marker=".", lw=0.8, label=label)
    for a in row[:-1]:
      a.axis("off")
    row[-1].set_xlabel("step", fontsize=5)
    row[-1].set_ylabel("latent PSNR (dB)", fontsize=5)
    row[-1].tick_params(labelsize=5)
  axes[0][-1].legend(fontsize=4, loc="lower left")
  axes[0][-1].set_title("latent drift (capped at 200 dB)", fontsize=5)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  plt.close(fig)
  atomic.write_bytes(png_path, buffer.getvalue())
  if html_path:
    table = "".join(
        f"<tr><td>{html.escape(r['format'])}</td><td>{html.escape(r['recipe'])}</td>"
        f"<td>{r['mean_psnr_db']:.2f}</td><td>{r['worst_psnr_db']:.2f}</td>"
        f"<td>{r['mean_ssim']:.4f}</td>"
        f"<td>{r['threshold_db']}</td><td>{'pass' if r['passed'] else 'FAIL'}</td></tr>"
        for r in results)
    agree = runtimes_agree(results)
    if agree:
      heads = list(agree[0])
      table += ("</table><h2>Runtimes against each other</h2><table border=1 cellpadding=4><tr>"
                + "".join(f"<th>{html.escape(h)}</th>" for h in heads) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{row.get(h, '')}</td>" for h in heads)
                          + "</tr>" for row in agree))
    notes = "".join(f"<li>{html.escape(s['folder'])}: {html.escape(explain(s))}</li>"
                    for s in map(summary, results) if not s["passed"])
    page = (
        "<!doctype html><meta charset='utf-8'><title>edgediff end-to-end parity</title>"
        "<h1>End-to-end parity against PyTorch fp32</h1><table border=1 cellpadding=4>"
        "<tr><th>format</th><th>recipe</th><th>mean image PSNR (dB)</th>"
        "<th>worst prompt (dB)</th><th>mean SSIM</th>"
        f"<th>threshold (dB)</th><th>gate</th></tr>{table}</table>"
        + (f"<h2>Below threshold</h2><ul>{notes}</ul>" if notes else "")
        + f"<img src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>")
    atomic.write_bytes(html_path, page.encode())
