"""Representative inputs for the parity gate: what each component sees when generating.

- text_encoder: tokenized prompts;
- unet: smooth latents noised to timesteps spread over the whole schedule, with the
  pipeline's own text embeddings of real prompts (not random numbers);
- vae_decoder: unit-variance latents, as the scaled latents the UNet produces.
Seeded: the same seed gives the same inputs.
"""

import numpy as np
import torch
import torch.nn.functional as F

from edgediff import schedule
from edgediff.models.text_encoder import tokenize


def _prompts(prompts: tuple[str, ...], n: int, batch: int, offset: int) -> list[list[str]]:
  """n batches of prompts; with batch 2 the first of each is the empty (unconditional) one."""
  out = []
  for i in range(n):
    p = prompts[(offset + i) % len(prompts)]
    out.append(([""] if batch == 2 else []) + [p] * (batch - (1 if batch == 2 else 0)))
  return out


@torch.no_grad()
def representative_inputs(pipe, component: str, module, batch: int, latent_size: int,
                          n: int = 4, seed: int = 0,
                          text_encoder=None) -> list[dict[str, np.ndarray]]:
  """n feeds {input name: array} for one component of `pipe`."""
  gen = torch.Generator().manual_seed(seed)
  specs = module.input_specs(batch, latent_size)
  prompt_sets = _prompts(pipe.prompts, n, batch, offset=seed)
  if component == "text_encoder":
    return [{specs[0].name: tokenize(p, pipe.tokenizer, pipe.vocabulary).numpy()}
            for p in prompt_sets]
  if component == "vae_decoder":
    return [{specs[0].name: torch.randn(specs[0].shape, generator=gen).numpy()}
            for _ in range(n)]
  sample, timestep, context = specs
  text_encoder = text_encoder or pipe.build("text_encoder", required=False)
  # Timesteps spread from pure noise to almost clean.
  steps = torch.linspace(schedule.TRAIN_STEPS - 1, 1, n).round()
  feeds = []
  for i, prompts in enumerate(prompt_sets):
    b, c, h, w = sample.shape
    x0 = F.interpolate(torch.randn(b, c, h // 4 or 1, w // 4 or 1, generator=gen),
                       size=(h, w), mode="bilinear")  # smooth, image-like latents
    t = torch.full((b,), float(steps[i]))
    noisy = pipe.schedule.add_noise(x0, torch.randn(sample.shape, generator=gen), t)
    embeddings = text_encoder(tokenize(prompts, pipe.tokenizer, pipe.vocabulary))
    feeds.append({sample.name: noisy.numpy(), timestep.name: t.numpy(),
                  context.name: embeddings.numpy()})
  return feeds
