"""Prompt adherence for the shapes world: read the five attributes back off an image.

A deterministic checker, no learned weights, so it needs no download and cannot share a
model's blind spots: background = the nearest background colour to the median border pixel;
foreground = pixels far from it; colour = the nearest palette colour to their median;
position = the anchor nearest their centre of mass; size = their area against the area
half-way between the two sizes; shape = the shape whose outline, drawn at that centre and
area, overlaps the foreground best (intersection over union). It is held to >= 99% per
attribute on the generator's own images (tests/test_shapes.py), so a lenient checker cannot
inflate a model's score.
"""

import math

import numpy as np

from edgediff.shapes import data

# A pixel is foreground when its colour is this far (RGB, 0..255 Euclidean) from the
# background; the closest pair of palette and background colours is ~190 apart.
_FOREGROUND_DISTANCE = 90.0
_SIZE_THRESHOLD_AREA = math.pi * (0.5 * sum(data.SIZES.values()))**2  # radius 9 px


def _nearest(value: np.ndarray, palette: dict) -> str:
  names = list(palette)
  dists = [np.linalg.norm(value - np.asarray(palette[n], np.float32)) for n in names]
  return names[int(np.argmin(dists))]


def read(image: np.ndarray) -> dict[str, str | None]:
  """The attributes an image (64, 64, 3) uint8 shows; None where there is no shape."""
  img = np.asarray(image, np.float32)
  border = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3),
                           img[:, :2].reshape(-1, 3), img[:, -2:].reshape(-1, 3)])
  background = _nearest(np.median(border, axis=0), data.BACKGROUNDS)
  bg = np.asarray(data.BACKGROUNDS[background], np.float32)
  fg = np.linalg.norm(img - bg, axis=-1) > _FOREGROUND_DISTANCE  # (H, W) bool
  found = {"background": background, "size": None, "colour": None, "shape": None,
           "position": None}
  area = int(fg.sum())
  if area < 8:  # nothing there worth naming
    return found
  found["colour"] = _nearest(np.median(img[fg], axis=0), data.COLOURS)
  ys, xs = np.nonzero(fg)
  cx, cy = xs.mean() + 0.5, ys.mean() + 0.5  # pixel centres
  found["position"] = min(data.POSITIONS, key=lambda p: math.dist((cx, cy), data.POSITIONS[p]))
  found["size"] = "large" if area > _SIZE_THRESHOLD_AREA else "small"
  radius = math.sqrt(area / math.pi)

  def iou(shape: str) -> float:
    template = data.shape_mask(shape, cx, cy, radius) > 0.5
    return (template & fg).sum() / max((template | fg).sum(), 1)

  found["shape"] = max(data.SHAPES, key=iou)
  return found


def score(images: np.ndarray, scenes: list[data.Scene]) -> dict[str, float]:
  """Fraction of images whose each attribute matches the caption, and all jointly."""
  hits = {a: 0 for a in data.ATTRIBUTES}
  joint = 0
  for image, scene in zip(images, scenes):
    found = read(image)
    ok = [found[a] == getattr(scene, a) for a in data.ATTRIBUTES]
    for a, good in zip(data.ATTRIBUTES, ok):
      hits[a] += good
    joint += all(ok)
  n = max(len(scenes), 1)
  return {**{a: hits[a] / n for a in data.ATTRIBUTES}, "joint": joint / n}


def describe(prompt: str, pixels: np.ndarray) -> str | None:
  """For a caption of the shapes grammar and its image (H, W, 3) uint8: whether the checker
  accepts it, and what it reads off each attribute; None for any other prompt."""
  scene = data.parse_caption(prompt)
  if scene is None or pixels.shape[:2] != (data.IMAGE_SIZE, data.IMAGE_SIZE):
    return None
  found = read(pixels)
  marks = [f"{a} {found[a]}" + ("" if found[a] == getattr(scene, a) else
                               f" (asked: {getattr(scene, a)})") for a in data.ATTRIBUTES]
  ok = all(found[a] == getattr(scene, a) for a in data.ATTRIBUTES)
  return f"{'accepted' if ok else 'rejected'}: {'; '.join(marks)}"
