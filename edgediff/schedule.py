"""The noise schedule of the papers: SD's scaled-linear betas over 1000 training steps."""

import torch

TRAIN_STEPS = 1000


def alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012,
                   steps: int = TRAIN_STEPS) -> torch.Tensor:
  betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
  return torch.cumprod(1.0 - betas, dim=0).float()


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, per batch element."""
  abar = alphas_cumprod()[t.long()].view(-1, *([1] * (x0.dim() - 1)))
  return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
