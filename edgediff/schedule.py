"""Noise schedules: SD's scaled-linear betas over 1000 training steps, as in the papers, and
the zero-terminal-SNR variant the shapes model is trained with.

The papers' schedule leaves some signal at the last training step (abar_999 = 0.0047), so a
model learns to read an image's layout and background from what it takes to be signal in
pure noise, and at sampling time copies them from the seed instead of the prompt. Rescaled
to zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps
are Flawed"), with v-prediction and "trailing" timesteps that start at t = 999, the layout
has to come from the text. Both match diffusers' DDIMScheduler (tests/test_generate.py).
"""

import dataclasses

import numpy as np
import torch

TRAIN_STEPS = 1000
SPACINGS = ("leading", "trailing")


@dataclasses.dataclass(frozen=True)
class Schedule:
  beta_start: float = 0.00085
  beta_end: float = 0.012
  zero_terminal_snr: bool = False
  # DDIM timesteps: "leading" (SD's, with steps_offset 1: 876, 751, ..., 1 for 8 steps) or
  # "trailing" (999, 874, ..., 124), which starts at pure noise.
  spacing: str = "leading"

  def __post_init__(self):
    if self.spacing not in SPACINGS:
      raise ValueError(f"timestep spacing must be one of {SPACINGS}, got {self.spacing!r}")

  def alphas_cumprod(self) -> torch.Tensor:
    betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, TRAIN_STEPS,
                           dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - betas, dim=0)
    if self.zero_terminal_snr:
      # Shift sqrt(abar) so that its last value is 0 and scale it so that its first stays.
      root = abar.sqrt()
      root = (root - root[-1]) * root[0] / (root[0] - root[-1])
      abar = root**2
    return abar.float()

  def timesteps(self, steps: int) -> np.ndarray:
    ratio = TRAIN_STEPS // steps
    if self.spacing == "trailing":
      return np.round(np.arange(TRAIN_STEPS, 0, -TRAIN_STEPS / steps)).astype(np.int64) - 1
    return (np.arange(steps) * ratio)[::-1] + 1

  def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, per batch element."""
    abar = self.alphas_cumprod()[t.long()].view(-1, *([1] * (x0.dim() - 1)))
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

  @classmethod
  def from_diffusers(cls, config: dict) -> "Schedule":
    """From a diffusers scheduler_config.json (the fields that change the schedule)."""
    if config.get("beta_schedule", "scaled_linear") != "scaled_linear":
      raise ValueError(f"beta_schedule {config['beta_schedule']!r} is not supported "
                       "(only scaled_linear)")
    return cls(beta_start=config.get("beta_start", cls.beta_start),
               beta_end=config.get("beta_end", cls.beta_end),
               zero_terminal_snr=bool(config.get("rescale_betas_zero_snr", False)),
               spacing=config.get("timestep_spacing", "leading"))


SD = Schedule()
# The shapes model's: starts from pure noise (with v-prediction).
ZERO_SNR = Schedule(zero_terminal_snr=True, spacing="trailing")
