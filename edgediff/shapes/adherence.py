"""Prompt adherence of a pipeline on held-out captions of the shapes world.

Images come from the same `generate` the CLI runs (any backend: PyTorch or an export), one
per (caption, seed); the checker reads their attributes back. Captions are drawn with a fixed
seed from the 108 held out of training, so the figure measures generalisation, not recall.
"""

import numpy as np

from edgediff import generate as gen
from edgediff.shapes import checker, data


def held_out_prompts(n: int, seed: int = 0) -> list[data.Scene]:
  held = data.split()[1]
  rng = np.random.default_rng(seed)
  return [held[i] for i in rng.permutation(np.arange(n) % len(held))]


def measure(backend: gen.Backend, n: int = 200, steps: int = 8, guidance: float = 1.0,
            seed: int = 0, progress: bool = True) -> tuple[dict[str, float], np.ndarray,
                                                           list[data.Scene]]:
  """(scores per attribute and joint, images (n, 64, 64, 3) uint8, their scenes)."""
  from tqdm import tqdm

  scenes = held_out_prompts(n, seed)
  images = []
  for i, scene in enumerate(tqdm(scenes, desc="adherence", disable=not progress)):
    image = gen.generate(backend, scene.caption, steps=steps, guidance=guidance,
                         seed=seed + i, progress=False).image  # (3, H, W) in [0, 1]
    images.append(gen.to_pixels(image))
  images = np.stack(images)
  return checker.score(images, scenes), images, scenes


def contact_sheet(images: np.ndarray, cols: int = 10) -> bytes:
  """The images (n, H, W, 3) uint8 as one PNG, `cols` to a row."""
  n, h, w, _ = images.shape
  rows = -(-n // cols)
  sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
  for i, image in enumerate(images):
    sheet[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = image
  return gen.png_bytes(sheet)
