"""Calibration data that represents diffusion: inputs recorded along real sampling runs.

The float pipeline generates from a prompt set (the shipped prompts, or the user's) plus the
unconditional (empty) prompt, at the guidance scale the app will sample with: above 1,
every step calls the UNet on the unconditional and the conditional branch at the same
latent and timestep, one after the other, so that both branches are recorded on the
trajectories that guidance really takes, and pairs of consecutive UNet feeds are the
(unconditional, conditional) batch of a --cfg export. Every UNet call along the DDIM
trajectory is recorded (timesteps spread over the whole schedule), the decoder sees the
final latents, the text encoder the prompts' tokens. One dataset, saved as calibration.npz,
feeds both onnxruntime and LiteRT. Seeded.
"""

import io

import numpy as np

from edgediff import atomic
from edgediff import generate as gen


STEPS = 8  # DDIM steps of each recorded sampling run


def record(pipe, latent_size: int, prompts: list[str], steps: int = STEPS, seed: int = 0,
           guidance: float = 1.0) -> dict[str, list[dict[str, np.ndarray]]]:
  """{component: [feeds, ...]} from PyTorch fp32 generations at `guidance`, one seed per
  prompt; batch-1 feeds, in the order the pipeline makes the calls."""
  backend = gen.torch_backend(pipe, latent_size)
  recorded = {c: [] for c in backend.runners}
  runners = dict(backend.runners)

  def recording(component):
    def run(feeds):
      recorded[component].append({k: np.array(v) for k, v in feeds.items()})
      return runners[component](feeds)
    return run

  backend.runners = {c: recording(c) for c in runners}
  for i, prompt in enumerate([""] + list(prompts)):
    gen.generate(backend, prompt, steps=steps, guidance=guidance, seed=seed + i,
                 progress=False)
  return recorded


def batched(feeds: list[dict[str, np.ndarray]], batch: int) -> list[dict[str, np.ndarray]]:
  """Batch-1 recordings regrouped to the export's batch: for a --cfg UNet, recorded with
  guidance, each (unconditional, conditional) pair of one step."""
  if batch == 1:
    return feeds
  return [{k: np.concatenate([f[k] for f in feeds[i:i + batch]]) for k in feeds[0]}
          for i in range(0, len(feeds) - batch + 1, batch)]


def spread(feeds: list[dict[str, np.ndarray]], n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """n of the recorded feeds, seeded; for the UNet spread over the recorded timesteps, from
  the noisiest to the cleanest step of the trajectory (all of them when there are n or
  fewer)."""
  return [feeds[i] for i in _picks(feeds, n, seed)] if len(feeds) > n else list(feeds)


def _picks(feeds: list[dict[str, np.ndarray]], n: int, seed: int) -> list[int]:
  rng = np.random.default_rng(seed)
  if "timestep" not in feeds[0]:
    return [int(i) for i in rng.choice(len(feeds), n, replace=False)]
  at = [float(f["timestep"].flat[0]) for f in feeds]
  steps = sorted(set(at))
  picks: list[int] = []
  for k in np.linspace(0, len(steps) - 1, n).round().astype(int):
    choices = [i for i, t in enumerate(at) if t == steps[k] and i not in picks]
    picks.append(int(rng.choice(choices)))
  return picks


def held_out(feeds: list[dict[str, np.ndarray]], n: int,
             seed: int = 0) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
  """(n recorded feeds to gate on, spread as by `spread`, the rest to calibrate with).

  A calibrated artifact is gated on inputs that the float pipeline really produced but that
  calibration never saw.
  """
  if len(feeds) <= n:
    raise ValueError(f"{len(feeds)} recorded samples: too few to hold {n} out")
  picks = _picks(feeds, n, seed)
  kept = set(picks)
  return [feeds[i] for i in picks], [f for i, f in enumerate(feeds) if i not in kept]


def save(data: dict[str, list[dict[str, np.ndarray]]], path: str) -> None:
  arrays = {f"{c}/{name}": np.stack([f[name] for f in feeds])
            for c, feeds in data.items() if feeds for name in feeds[0]}
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  atomic.write_bytes(path, buffer.getvalue())


def load(path: str, component: str) -> list[dict[str, np.ndarray]]:
  with np.load(path) as data:
    names = [k.split("/", 1)[1] for k in data.files if k.startswith(component + "/")]
    stacked = {n: data[f"{component}/{n}"] for n in names}
  count = len(next(iter(stacked.values())))
  return [{n: stacked[n][i] for n in names} for i in range(count)]


def load_all(path: str) -> dict[str, list[dict[str, np.ndarray]]]:
  with np.load(path) as data:
    components = sorted({k.split("/", 1)[0] for k in data.files})
  return {c: load(path, c) for c in components}
