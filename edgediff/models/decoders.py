"""Latent decoders: SD's VAE decoder and the mobile decoders of the papers.

Each `vae_decoder` component maps latents (B, C, h, w) to an RGB image (B, 3, 8h, 8w) in
[0, 1]: it undoes the latent scaling factor, applies the post-quant 1x1 conv and the decoder
(names as in diffusers' AutoencoderKL, so diffusers `vae/` weights load by rule), and maps
[-1, 1] to [0, 1] so that apps need no post-processing.
"""

import dataclasses

import torch
from torch import nn
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import Decoder

from edgediff.models.io import TensorSpec


@dataclasses.dataclass(frozen=True)
class VaeDecoderConfig:
  latent_channels: int = 4
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  # diffusers runs layers_per_block + 1 residual blocks per up level.
  layers_per_block: int = 2
  norm_groups: int = 32
  mid_attention: bool = True
  scaling_factor: float = 0.18215  # SD's latent scale
  kind: str = "vae"  # vae | snapgen


SD_VAE_DECODER = VaeDecoderConfig()
# MobileDiffusion's decoder is unpublished; this reconstruction fits its 9.8M: SD's decoder
# with 8 latent channels, widths halved and 2 residual blocks per up level.
MD_DECODER = dataclasses.replace(
    SD_VAE_DECODER, latent_channels=8, block_out_channels=(64, 128, 256, 256),
    layers_per_block=1)
# SnapFusion: SD's decoder with 50% uniform channel pruning (paper: 13M, 3.8x fewer).
SNAPFUSION_DECODER = dataclasses.replace(SD_VAE_DECODER, block_out_channels=(64, 128, 256, 256))
# SnapGen's tiny decoder: 16 latent channels, no attention, one GroupNorm, separable convs,
# no conv shortcut; its widths are unpublished, these land near its 1.38M parameters.
SNAPGEN_DECODER = VaeDecoderConfig(
    latent_channels=16, block_out_channels=(64, 128, 256, 448), layers_per_block=2,
    mid_attention=False, scaling_factor=1.0, kind="snapgen")


class SepResBlock(nn.Module):
  """Depthwise 3x3 + pointwise, twice, with an identity shortcut (no conv shortcut)."""

  def __init__(self, c: int):
    super().__init__()
    self.dw1 = nn.Conv2d(c, c, 3, padding=1, groups=c)
    self.pw1 = nn.Conv2d(c, c, 1)
    self.dw2 = nn.Conv2d(c, c, 3, padding=1, groups=c)
    self.pw2 = nn.Conv2d(c, c, 1)

  def forward(self, x):
    h = self.pw1(self.dw1(x))
    h = self.pw2(self.dw2(F.silu(h)))
    return x + h


class SnapGenDecoder(nn.Module):
  """Tiny decoder after SnapGen: separable residual blocks, nearest upsampling."""

  def __init__(self, cfg: VaeDecoderConfig):
    super().__init__()
    widths = list(reversed(cfg.block_out_channels))  # deepest first
    self.conv_in = nn.Conv2d(cfg.latent_channels, widths[0], 3, padding=1)
    self.levels = nn.ModuleList()
    for i, c in enumerate(widths):
      blocks = [SepResBlock(c) for _ in range(cfg.layers_per_block)]
      if i < len(widths) - 1:
        blocks.append(nn.Upsample(scale_factor=2.0, mode="nearest"))
        blocks.append(nn.Conv2d(c, widths[i + 1], 1))
      self.levels.append(nn.Sequential(*blocks))
    self.norm_out = nn.GroupNorm(cfg.norm_groups, widths[-1])  # the one GroupNorm
    self.conv_out = nn.Conv2d(widths[-1], 3, 3, padding=1)

  def forward(self, z):
    x = self.conv_in(z)
    for level in self.levels:
      x = level(x)
    return self.conv_out(F.silu(self.norm_out(x)))


class VaeDecoder(nn.Module):
  """latent (B, C, h, w) -> image (B, 3, 8h, 8w) in [0, 1]; with `clamp` False, values are
  left unclamped, near [0, 1], for the app to clip."""

  def __init__(self, cfg: VaeDecoderConfig = SD_VAE_DECODER):
    super().__init__()
    self.config = cfg
    # The final clamp becomes a RELU_0_TO_1 op in TFLite, which some GPU delegates refuse; an
    # app that clips its pixels anyway can export without it (edgediff export --no-clamp).
    self.clamp = True
    if cfg.kind == "snapgen":
      self.post_quant_conv = None
      self.decoder = SnapGenDecoder(cfg)
    else:
      self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)
      n = len(cfg.block_out_channels)
      self.decoder = Decoder(
          in_channels=cfg.latent_channels, out_channels=3,
          up_block_types=("UpDecoderBlock2D",) * n,
          block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
          norm_num_groups=cfg.norm_groups, act_fn="silu",
          mid_block_add_attention=cfg.mid_attention)

  def input_specs(self, batch: int, latent_size: int) -> list["TensorSpec"]:
    return [TensorSpec("latent", (batch, self.config.latent_channels, latent_size, latent_size))]

  output_names = ("image",)

  def forward(self, latent: torch.Tensor) -> torch.Tensor:
    z = latent / self.config.scaling_factor
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    image = self.decoder(z) / 2 + 0.5
    return image.clamp(0, 1) if self.clamp else image
