"""Text to image through any runtime: tokenizer -> text encoder -> UNet steps -> decoder.

One small runner interface (feeds in, outputs out) serves PyTorch, onnxruntime and
ai_edge_litert; the runners of an export read its manifest for names, shapes and layout.
"""

import dataclasses
import functools
import io
import os
import time
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from edgediff import atomic, schedule
from edgediff import manifest as manifest_lib
from edgediff.errors import EdgediffError
from edgediff.schedule import SD as SD_SCHEDULE, Schedule
from edgediff.models.text_encoder import tokenize

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]  # feeds -> the one output, NCHW


@dataclasses.dataclass
class Backend:
  name: str
  runners: dict[str, Runner]  # text_encoder, unet, vae_decoder
  unet_batch: int  # 2: both guidance branches in one call
  latent_shape: tuple[int, ...]  # (C, h, w)
  tokenizer: str | None
  prediction_type: str
  schedule: Schedule = SD_SCHEDULE
  vocabulary: tuple[int, ...] = ()  # a pruned text encoder's CLIP ids (tokenize's rows)


def torch_backend(pipe, latent_size: int | None = None) -> Backend:
  modules = {c: pipe.build(c) for c in manifest_lib.COMPONENTS}

  from edgediff.runtimes import torch_call

  sample = modules["unet"].input_specs(1, latent_size or pipe.latent_size)[0]
  runners = {c: functools.partial(torch_call, m) for c, m in modules.items()}
  return Backend("torch", runners, 1, sample.shape[1:],
                 pipe.tokenizer, pipe.prediction_type, pipe.schedule, pipe.vocabulary)


def artifact_backend(folder: str, tokenizer: str | None = None) -> Backend:
  from edgediff import runtimes

  manifest = manifest_lib.read(folder)
  if manifest is None:
    raise EdgediffError(f"{folder}: no {manifest_lib.MANIFEST}; point --artifacts at an export "
                        "folder such as out/<pipeline>/<fmt>/<recipe>")
  missing = set(manifest_lib.COMPONENTS) - set(manifest["components"])
  if missing:
    raise EdgediffError(f"{folder}: the export lacks {', '.join(sorted(missing))}")

  def runner(entry) -> Runner:
    run = runtimes.load_runner(manifest["format"], os.path.join(folder, entry["file"]))
    output, nhwc = manifest_lib.output_name(entry), manifest_lib.is_nhwc(entry)

    def call(feeds):
      return manifest_lib.from_layout(run(manifest_lib.to_layout(feeds, nhwc))[output], nhwc)
    return call

  unet = manifest["components"]["unet"]
  shape = unet["inputs"][0]["shape"]
  latent = tuple(shape[3:] + shape[1:3]) if manifest_lib.is_nhwc(unet) else tuple(shape[1:])
  return Backend(f"{manifest['format']}/{manifest['recipe']}",
                 {c: runner(e) for c, e in manifest["components"].items()},
                 manifest["batch"], latent, tokenizer,
                 manifest.get("prediction_type", "epsilon"),
                 schedule.Schedule(**manifest.get("schedule", {})),
                 tuple(manifest.get("vocabulary", ())))


def predict_x0_eps(model_out, x, abar, prediction_type):
  """(x0, eps) from the UNet's output for epsilon-, v- or sample (x0)-prediction."""
  a, s = np.sqrt(abar), np.sqrt(1 - abar)
  if prediction_type == "epsilon":
    return (x - s * model_out) / a, model_out
  if prediction_type == "v_prediction":
    return a * x - s * model_out, a * model_out + s * x
  if prediction_type == "sample":  # UFOGen-style one-step models predict x0 directly
    return model_out, (x - a * model_out) / s
  raise EdgediffError(f"unknown prediction type {prediction_type!r}")


@dataclasses.dataclass
class Generation:
  image: np.ndarray  # (3, H, W) in [0, 1]
  latents: list[np.ndarray]  # after each step
  seconds: dict[str, float]


def generate(backend: Backend, prompt: str, steps: int = 8, guidance: float = 1.0,
             seed: int = 0, progress: bool = True) -> Generation:
  seconds = {"text_encoder": 0.0, "unet": 0.0, "vae_decoder": 0.0}

  def timed(component, feeds):
    start = time.perf_counter()
    out = backend.runners[component](feeds)
    seconds[component] += time.perf_counter() - start
    return out

  use_cfg = guidance != 1.0
  prompts = ["", prompt] if use_cfg else [prompt]
  embeddings = [timed("text_encoder", {"input_ids": tokenize(
      [p], backend.tokenizer, backend.vocabulary).numpy()}) for p in prompts]  # each (1, 77, D)
  generator = torch.Generator().manual_seed(seed)
  x = torch.randn((1, *backend.latent_shape), generator=generator).numpy()
  abar_all = backend.schedule.alphas_cumprod().numpy().astype(np.float64)
  timesteps = backend.schedule.timesteps(steps)
  latents = []
  for i, t in enumerate(tqdm(timesteps, desc="denoising", disable=not progress)):
    if use_cfg and backend.unet_batch == 2:
      out = timed("unet", {"sample": np.concatenate([x, x]),
                           "timestep": np.full((2,), t, np.float32),
                           "encoder_hidden_states": np.concatenate(embeddings)})
      outs = [out[:1], out[1:]]
    else:
      outs = [timed("unet", {"sample": x, "timestep": np.full((1,), t, np.float32),
                             "encoder_hidden_states": e}) for e in embeddings]
    model_out = outs[0] + guidance * (outs[1] - outs[0]) if use_cfg else outs[0]
    abar = abar_all[t]
    x0, eps = predict_x0_eps(model_out.astype(np.float64), x.astype(np.float64), abar,
                             backend.prediction_type)
    if steps == 1:
      x = x0  # the one-step x0 path of UFOGen-style one-step models
    else:
      # DDIM with eta 0; after the last step SD's final alpha is abar[0] (not 1).
      abar_prev = abar_all[timesteps[i + 1]] if i + 1 < len(timesteps) else abar_all[0]
      x = np.sqrt(abar_prev) * x0 + np.sqrt(1 - abar_prev) * eps
    x = x.astype(np.float32)
    latents.append(x)
  # Clipped here as an app clips its pixels: a decoder exported with --no-clamp leaves it.
  image = np.clip(timed("vae_decoder", {"latent": x})[0], 0, 1)
  return Generation(image=image, latents=latents, seconds=seconds)


def to_pixels(image: np.ndarray) -> np.ndarray:
  """A decoded image (3, H, W) in [0, 1] (clipped, as an app does) as 8-bit RGB (H, W, 3)."""
  return (np.clip(image, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def png_bytes(pixels: np.ndarray) -> bytes:
  """8-bit RGB pixels (H, W, 3) as a PNG file's bytes."""
  from PIL import Image

  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def save_png(image: np.ndarray, path: str) -> None:
  atomic.write_bytes(path, png_bytes(to_pixels(image)))
