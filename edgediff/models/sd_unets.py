"""SD-1.5-family UNets built on diffusers' UNet2DConditionModel.

- `sd15-unet`: SD-1.5's UNet (859,520,964 parameters).
- `snapfusion-unet` (SnapFusion, Li et al. 2023): SD-1.5's blocks re-arranged by
  architecture evolution. Departure kept here: no cross-attention at the highest resolution
  (Down-1 and Up-3 of its Table 3), which is where SD spends most attention time. Its Table 3
  also moves ResNet and cross-attention blocks between the middle stages; that table alone
  does not reproduce the published 848M, so those moves are not modelled and the parameter
  count (846.8M) is held instead.
- `snapgen-unet` (SnapGen, Hu et al. 2024), from SDXL: widths (256, 512, 896), transformer
  depths (0, 2, 4), no mid block, 16 latent channels. Approximated with diffusers blocks:
  SnapGen's expanded separable convs, multi-query attention, QK RMSNorm, 2-D RoPE, FF ratio
  3 and self-attention only at the lowest resolution are not modelled; one residual block at
  the lowest resolution brings the count to 368.9M (paper: 379M).
"""

import torch
from diffusers import UNet2DConditionModel

from edgediff.models.io import TensorSpec, unet_input_specs

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, cross_attention_dim=768,
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 attention_head_dim=8)
SNAPFUSION_UNET = dict(
    SD15_UNET,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
SNAPGEN_UNET = dict(
    SD15_UNET, in_channels=16, out_channels=16, block_out_channels=(256, 512, 896),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(0, 2, 4), attention_head_dim=(4, 8, 14),
    layers_per_block=(2, 2, 1), mid_block_type=None)


def tiny(config: dict) -> dict:
  """A tiny config derived from a real one: same block types, a few channels, one residual
  block per level and at most one transformer block in each (conversion time grows with the
  number of ops, not their size)."""
  levels = len(config["block_out_channels"])
  tiny = dict(config, block_out_channels=(32, 64, 64, 64)[:levels], norm_num_groups=8,
              attention_head_dim=2, cross_attention_dim=64, sample_size=16, layers_per_block=1)
  if "transformer_layers_per_block" in config:
    tiny["transformer_layers_per_block"] = tuple(
        min(n, 1) for n in config["transformer_layers_per_block"])
  return tiny


class DiffusersUNet(UNet2DConditionModel):
  """UNet2DConditionModel returning a plain tensor (exporters want tensors, not dataclasses).

  Parameter names stay diffusers' own, so a diffusers `unet/` folder loads unchanged.
  """

  output_names = ("noise_pred",)

  def input_specs(self, batch: int, latent_size: int | None = None) -> list[TensorSpec]:
    return unet_input_specs(batch, self.config.in_channels,
                            latent_size or self.config.sample_size,
                            self.config.cross_attention_dim)

  def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
              encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    return super().forward(sample, timestep, encoder_hidden_states, return_dict=False)[0]
