#!/usr/bin/env python3
"""Write the golden vectors that the Kotlin core's tests must reproduce exactly.

Every number comes from edgediff's own Python code: the CLIP tokenizer (token ids of
prompts, long and non-ASCII ones included), the schedules (alphas_cumprod, timesteps), the
DDIM sampler (`edgediff.generate.generate`, run with small deterministic runners that the
Kotlin test implements too, from a given initial noise), the image conversion of
`save_png`, the parity metrics, and a real export of the shapes text encoder (manifest,
artifact and golden .npz) for manifest and .npz parsing.

Usage: python android_demo/scripts/write_golden.py OUT_DIR
"""

import json
import os
import shutil
import sys

import numpy as np
import torch

from edgediff import generate as gen, metrics
from edgediff import schedule
from edgediff.models.text_encoder import tokenize, tokenizer_dir
from edgediff.quant import recipes

PROMPTS = [
    "",
    "a red circle",
    "a small red triangle in the top left on a gray background",
    "A  Red\tCIRCLE!!  ",
    "it's the dog's bone, isn't it? 3.14 apples & 42 pears",
    "café au lait, naïve façade, Straße, İstanbul, ΣΊΣΥΦΟΣ",
    "日本語のテキスト 🚀 emoji 👩‍👩‍👧",
    "<|endoftext|> hi <|startoftext|>",
    "a photo of " + "a very long prompt " * 30,
    "x" * 300,
]

# The fake runners below are written the same way in the Kotlin test (float32 arithmetic,
# same order), so that the sampler is compared and not the models.
HIDDEN = 4


def fake_text_encoder(feeds):
  ids = feeds["input_ids"].astype(np.float32)  # (B, 77)
  return np.repeat(ids[:, :, None] * np.float32(1e-4), HIDDEN, axis=2)  # (B, 77, 4)


def fake_unet(feeds):
  x, t, text = feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"]
  return (x * np.float32(0.9) + t[:, None, None, None] * np.float32(0.001)
          + text[:, 1:2, 0:1, None] * np.float32(0.5))


def fake_vae_decoder(feeds):
  return feeds["latent"][:, :3] * np.float32(0.5) + np.float32(0.5)


def sampler_cases():
  cases = []
  for name, sched in (("sd", schedule.SD), ("zero_snr", schedule.ZERO_SNR)):
    for prediction, steps, guidance, batch in (
        ("epsilon", 8, 1.0, 1), ("epsilon", 4, 3.0, 2), ("v_prediction", 8, 1.0, 1),
        ("v_prediction", 3, 2.5, 1), ("sample", 1, 1.0, 1)):
      backend = gen.Backend(
          "fake", {"text_encoder": fake_text_encoder, "unet": fake_unet,
                   "vae_decoder": fake_vae_decoder},
          unet_batch=batch, latent_shape=(4, 3, 3), tokenizer=None,
          prediction_type=prediction, schedule=sched)
      seed = len(cases)
      noise = torch.randn((1, *backend.latent_shape),
                          generator=torch.Generator().manual_seed(seed)).numpy()
      result = gen.generate(backend, "a red circle", steps=steps, guidance=guidance,
                            seed=seed, progress=False)
      cases.append({"schedule": name, "prediction_type": prediction, "steps": steps,
                    "guidance": guidance, "unet_batch": batch, "prompt": "a red circle",
                    "latent_shape": list(backend.latent_shape), "noise": _floats(noise),
                    "latents": [_floats(x) for x in result.latents],
                    "image": _floats(result.image)})
  return cases


def image_case():
  rng = np.random.default_rng(0)
  image = (rng.standard_normal((3, 5, 4)) * 0.6 + 0.5).astype(np.float32)
  image[0, 0, :4] = [0.5 / 255, 1.5 / 255, 2.5 / 255, 1.0]  # halves: numpy rounds to even
  pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
  return {"chw": _floats(image), "shape": list(image.shape),
          "hwc": _floats(image.transpose(1, 2, 0)), "rgb": pixels.ravel().tolist()}


def metric_cases():
  rng = np.random.default_rng(1)
  cases = []
  for scale in (0.0, 1e-4, 0.1, 0.5):
    reference = rng.standard_normal((2, 3, 4)).astype(np.float32)
    actual = (reference + scale * rng.standard_normal(reference.shape)).astype(np.float32)
    thresholds = recipes.thresholds("int8_static")
    report = metrics.compare("x", [reference], [actual], thresholds)
    cases.append({"reference": _floats(reference), "actual": _floats(actual),
                  "psnr_db": None if np.isinf(report.psnr_db) else report.psnr_db,
                  "snr_db": None if np.isinf(report.snr_db) else report.snr_db,
                  "pearson": report.pearson, "max_abs": report.max_abs,
                  "thresholds": {"snr_db": thresholds.snr_db, "pearson": thresholds.pearson},
                  "passed": report.passed})
  return cases


def export_case(out: str) -> str:
  """A real export of the shapes text encoder: manifest, artifact, golden .npz."""
  from edgediff import pipeline
  from edgediff.export import exporter

  opts = exporter.ExportOptions(out=os.path.join(out, "export"), fmt="tflite",
                                recipe="fp32", components=("text_encoder",))
  return exporter.export_pipeline(pipeline.open_pipeline(), opts).folder


def _floats(a: np.ndarray) -> list[float]:
  """float32 values, each printed so that it parses back to the same float32."""
  return [float(v) for v in np.asarray(a, np.float32).ravel()]


def main(out: str) -> None:
  os.makedirs(out, exist_ok=True)
  for name in ("vocab.json", "merges.txt"):
    shutil.copy(os.path.join(tokenizer_dir(), name), os.path.join(out, name))
  golden = {
      "tokens": [{"prompt": p, "ids": tokenize([p])[0].tolist()} for p in PROMPTS],
      "schedules": {
          name: {"alphas_cumprod": _floats(s.alphas_cumprod().numpy()),
                 "timesteps": {str(n): s.timesteps(n).tolist() for n in (1, 3, 4, 8, 25, 50)},
                 "zero_terminal_snr": s.zero_terminal_snr, "spacing": s.spacing}
          for name, s in (("sd", schedule.SD), ("zero_snr", schedule.ZERO_SNR))},
      "sampler": sampler_cases(),
      "image": image_case(),
      "metrics": metric_cases(),
      "export": os.path.relpath(export_case(out), out),
  }
  with open(os.path.join(out, "golden.json"), "w", encoding="utf-8") as f:
    json.dump(golden, f, ensure_ascii=False)
  print(f"wrote {os.path.join(out, 'golden.json')}")


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(__doc__.strip().splitlines()[-1])
  main(sys.argv[1])
