"""The shapes world: a captioned image dataset generated from a seed, with no download.

Each image is 64x64 RGB: one filled shape on a plain background. A caption names five
attributes, in this grammar:

  caption    := "a " SIZE " " COLOUR " " SHAPE " " POSITION " on a " BACKGROUND " background"
  SIZE       := "small" | "large"
  COLOUR     := "red" | "green" | "blue" | "yellow" | "magenta" | "cyan"
  SHAPE      := "circle" | "square" | "triangle" | "diamond"
  POSITION   := "in the top left" | "in the top right" | "in the bottom left"
              | "in the bottom right" | "in the center"
  BACKGROUND := "black" | "white" | "gray"

for example "a small red triangle in the top left on a gray background": 2 * 6 * 4 * 5 * 3
= 720 captions. Every shape of a size covers the same area (a circle of radius 7 or 11 px;
smaller shapes do not survive the f=8 autoencoder), its centre of area sits at the named
anchor (20 or 44 px from the left and top, or 32 for the centre) moved by up to 2 px, so
shapes stay inside the frame (at most a triangle's tip touches it), and it is drawn at 4x
and box-filtered down, so edges are anti-aliased. 108 of the 720 captions (15%, drawn with a
fixed seed) are held out of training, so that adherence is measured on captions the model
never saw.
"""

import dataclasses
import functools
import itertools
import math

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SIZES = {"small": 7.0, "large": 11.0}  # radius in px of the circle of the same area
COLOURS = {
    "red": (230, 30, 30), "green": (30, 190, 40), "blue": (30, 60, 230),
    "yellow": (240, 220, 30), "magenta": (220, 40, 220), "cyan": (30, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "diamond")
POSITIONS = {
    "top left": (20, 20), "top right": (44, 20), "bottom left": (20, 44),
    "bottom right": (44, 44), "center": (32, 32),
}
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}
ATTRIBUTES = ("size", "colour", "shape", "position", "background")
VALUES = {"size": tuple(SIZES), "colour": tuple(COLOURS), "shape": SHAPES,
          "position": tuple(POSITIONS), "background": tuple(BACKGROUNDS)}
JITTER = 2  # px of random offset from the anchor
HELD_OUT_FRACTION = 0.15
SPLIT_SEED = 1234
_SUPERSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class Scene:
  size: str
  colour: str
  shape: str
  position: str
  background: str

  @property
  def caption(self) -> str:
    return (f"a {self.size} {self.colour} {self.shape} in the {self.position} "
            f"on a {self.background} background")


def all_scenes() -> list[Scene]:
  return [Scene(*values) for values in itertools.product(
      SIZES, COLOURS, SHAPES, POSITIONS, BACKGROUNDS)]


@functools.cache
def split() -> tuple[tuple[Scene, ...], tuple[Scene, ...]]:
  """(train scenes, held-out scenes): a fixed 15% of the captions never trained on."""
  scenes = all_scenes()
  order = np.random.default_rng(SPLIT_SEED).permutation(len(scenes))
  n_held = round(HELD_OUT_FRACTION * len(scenes))
  held = sorted(order[:n_held])
  train = sorted(order[n_held:])
  return tuple(scenes[i] for i in train), tuple(scenes[i] for i in held)


def parse_caption(caption: str) -> Scene | None:
  """The scene a caption of the grammar names, or None for any other text."""
  for scene in all_scenes():
    if scene.caption == caption.strip().lower():
      return scene
  return None


def outline(shape: str, cx: float, cy: float, radius: float) -> list[tuple[float, float]] | None:
  """Polygon vertices (None for the circle) with area pi*r^2 and centre of area (cx, cy)."""
  area = math.pi * radius**2
  if shape == "circle":
    return None
  if shape == "square":
    h = math.sqrt(area) / 2
    return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
  if shape == "diamond":  # the square turned 45 degrees
    h = math.sqrt(area / 2)
    return [(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)]
  if shape == "triangle":  # equilateral, pointing up; circumradius R, area 3*sqrt(3)/4 R^2
    big_r = math.sqrt(area * 4 / (3 * math.sqrt(3)))
    return [(cx, cy - big_r), (cx + big_r * math.sqrt(3) / 2, cy + big_r / 2),
            (cx - big_r * math.sqrt(3) / 2, cy + big_r / 2)]
  raise ValueError(f"unknown shape {shape!r}")


def shape_mask(shape: str, cx: float, cy: float, radius: float,
               size: int = IMAGE_SIZE) -> np.ndarray:
  """Coverage in [0, 1] of each pixel, (size, size) float32, anti-aliased."""
  s = _SUPERSAMPLE
  canvas = Image.new("L", (size * s, size * s), 0)
  draw = ImageDraw.Draw(canvas)
  poly = outline(shape, cx * s, cy * s, radius * s)
  if poly is None:
    r = radius * s
    draw.ellipse([cx * s - r, cy * s - r, cx * s + r, cy * s + r], fill=255)
  else:
    draw.polygon(poly, fill=255)
  big = np.asarray(canvas, dtype=np.float32) / 255.0
  return big.reshape(size, s, size, s).mean(axis=(1, 3))  # box filter down


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
  """The scene as (64, 64, 3) uint8, its anchor moved by up to JITTER px."""
  ax, ay = POSITIONS[scene.position]
  dx, dy = rng.uniform(-JITTER, JITTER, size=2)
  mask = shape_mask(scene.shape, ax + dx, ay + dy, SIZES[scene.size])[..., None]
  fg = np.array(COLOURS[scene.colour], np.float32)
  bg = np.array(BACKGROUNDS[scene.background], np.float32)
  return np.round(mask * fg + (1 - mask) * bg).astype(np.uint8)


def sample(n: int, seed: int, scenes: tuple[Scene, ...] | None = None
           ) -> tuple[np.ndarray, list[Scene]]:
  """n images (n, 64, 64, 3) uint8 and their scenes, drawn uniformly from `scenes`
  (default: the training split); the same seed gives the same data."""
  scenes = scenes if scenes is not None else split()[0]
  rng = np.random.default_rng(seed)
  picks = [scenes[i] for i in rng.integers(0, len(scenes), size=n)]
  images = np.stack([render(scene, rng) for scene in picks]) if n else np.zeros(
      (0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  return images, picks
