"""The model zoo: component specs and the pipeline specs that tie three of them together.

Every spec has a real config (the papers' model) and a tiny one derived from it for tests.
"""

import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from edgediff import schedule
from edgediff.errors import EdgediffError
from edgediff.schedule import SD as SD_SCHEDULE, Schedule
from edgediff.manifest import COMPONENTS  # noqa: F401  (read as specs.COMPONENTS too)
from edgediff.models import decoders, md_unet, sd_unets, text_encoder


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
  name: str
  component: str  # one of COMPONENTS
  builder: Callable[[Any], nn.Module]
  config: Any
  tiny: Any
  summary: str

  def build(self, tiny: bool = False, device: str | torch.device = "cpu") -> nn.Module:
    """The module in eval mode; on the meta device it costs no memory."""
    with torch.device(device):
      module = self.builder(self.tiny if tiny else self.config)
    return module.eval()


def _diffusers_unet(config: dict) -> nn.Module:
  return sd_unets.DiffusersUNet(**config)


_MD_TINY = dict(channels=(32, 64, 96), head_dim=16, norm_groups=8, context_dim=64,
                time_proj_dim=32, time_embed_dim=64, sample_size=16)
_TEXT_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=2)
_DECODER_TINY = dict(block_out_channels=(16, 32, 32, 32), norm_groups=8, layers_per_block=1)

_COMPONENT_SPECS = [
    ComponentSpec("clip-l14-text", "text_encoder", text_encoder.TextEncoder,
                  text_encoder.CLIP_L14_TEXT,
                  dataclasses.replace(text_encoder.CLIP_L14_TEXT, **_TEXT_TINY),
                  "CLIP ViT-L/14 text tower (SD-1.5, MobileDiffusion, SnapFusion)"),
    ComponentSpec("md", "unet", md_unet.MDUNet, md_unet.MD,
                  dataclasses.replace(md_unet.MD, **_MD_TINY),
                  "MobileDiffusion UNet (386M in the paper)"),
    ComponentSpec("md-lite", "unet", md_unet.MDUNet, md_unet.MD_LITE,
                  dataclasses.replace(md_unet.MD_LITE, **_MD_TINY),
                  "MobileDiffusion-Lite UNet (278M in the paper)"),
    ComponentSpec("sd15-unet", "unet", _diffusers_unet, sd_unets.SD15_UNET,
                  sd_unets.tiny(sd_unets.SD15_UNET), "Stable Diffusion 1.5 UNet"),
    ComponentSpec("snapfusion-unet", "unet", _diffusers_unet, sd_unets.SNAPFUSION_UNET,
                  sd_unets.tiny(sd_unets.SNAPFUSION_UNET), "SnapFusion UNet (848M in the paper)"),
    ComponentSpec("snapgen-unet", "unet", _diffusers_unet, sd_unets.SNAPGEN_UNET,
                  sd_unets.tiny(sd_unets.SNAPGEN_UNET), "SnapGen UNet (379M in the paper)"),
    ComponentSpec("sd-vae-decoder", "vae_decoder", decoders.VaeDecoder, decoders.SD_VAE_DECODER,
                  dataclasses.replace(decoders.SD_VAE_DECODER, **_DECODER_TINY),
                  "Stable Diffusion VAE decoder"),
    ComponentSpec("md-decoder", "vae_decoder", decoders.VaeDecoder, decoders.MD_DECODER,
                  dataclasses.replace(decoders.MD_DECODER, **_DECODER_TINY),
                  "MobileDiffusion lightweight decoder (9.8M in the paper)"),
    ComponentSpec("snapfusion-decoder", "vae_decoder", decoders.VaeDecoder,
                  decoders.SNAPFUSION_DECODER,
                  dataclasses.replace(decoders.SNAPFUSION_DECODER, **_DECODER_TINY),
                  "SnapFusion pruned decoder (13M in the paper)"),
    ComponentSpec("snapgen-decoder", "vae_decoder", decoders.VaeDecoder,
                  decoders.SNAPGEN_DECODER,
                  dataclasses.replace(decoders.SNAPGEN_DECODER, **_DECODER_TINY),
                  "SnapGen tiny decoder (1.38M in the paper)"),
]

# The shapes model (edgediff/shapes): MobileDiffusion scaled down to 64x64 images of a
# procedural shapes world, small enough to train on a laptop CPU. Same block types as md
# (FullConv, SPConv at the innermost level, cross-attention-only transformers at the middle
# level, self- + cross-attention with shared K/V innermost, gated FF, relu attention, 8 latent
# channels); fewer channels and one transformer block per stage.
_SHAPES_UNET = dataclasses.replace(
    md_unet.MD, channels=(32, 64, 96), down_depths=(0, 1, 1), up_depths=(0, 1, 1), head_dim=32,
    norm_groups=16, context_dim=64, time_proj_dim=64, time_embed_dim=256, sample_size=8)
# The CLIP ids the shapes grammar uses (tests check this against the tokenizer): the text
# encoder keeps 28 embedding rows instead of 49408.
SHAPES_VOCABULARY = (320, 518, 525, 530, 550, 736, 1155, 1253, 1449, 1470, 1579, 1746, 1823,
                     1901, 2119, 2442, 3638, 3999, 4481, 5931, 5994, 6235, 7048, 7117, 14615,
                     38091, 49406, 49407)
_SHAPES_TEXT = dataclasses.replace(
    text_encoder.CLIP_L14_TEXT, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=2, vocabulary=SHAPES_VOCABULARY)
# f=8 like MD's decoder (64x64 images from 8x8x8 latents); latents come out of the shapes
# encoder with unit variance, so no scaling factor.
_SHAPES_DECODER = dataclasses.replace(
    decoders.MD_DECODER, block_out_channels=(16, 32, 64, 64), norm_groups=8, scaling_factor=1.0)
_SHAPES_SPECS = [
    ComponentSpec("shapes-text", "text_encoder", text_encoder.TextEncoder, _SHAPES_TEXT,
                  _SHAPES_TEXT, "the shapes model's text encoder (CLIP, 2 layers of 64)"),
    ComponentSpec("shapes-unet", "unet", md_unet.MDUNet, _SHAPES_UNET, _SHAPES_UNET,
                  "the shapes model's UNet: MobileDiffusion scaled down (swish FF, relu attention)"),
    ComponentSpec("shapes-unet-gelu", "unet", md_unet.MDUNet,
                  dataclasses.replace(_SHAPES_UNET, ff_activation="gelu_tanh"),
                  dataclasses.replace(_SHAPES_UNET, ff_activation="gelu_tanh"),
                  "the shapes UNet with gelu (tanh approximation) in the feed-forward"),
    ComponentSpec("shapes-unet-softmax", "unet", md_unet.MDUNet,
                  dataclasses.replace(_SHAPES_UNET, attention="softmax"),
                  dataclasses.replace(_SHAPES_UNET, attention="softmax"),
                  "the shapes UNet with softmax attention"),
    ComponentSpec("shapes-decoder", "vae_decoder", decoders.VaeDecoder, _SHAPES_DECODER,
                  _SHAPES_DECODER, "the shapes model's decoder: MD's, scaled down"),
]
COMPONENT_SPECS = {spec.name: spec for spec in _COMPONENT_SPECS + _SHAPES_SPECS}


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
  name: str
  text_encoder: str
  unet: str
  vae_decoder: str
  latent_size: int = 64  # 512 px images with the f=8 decoders
  tiny_latent_size: int = 16
  prediction_type: str = "epsilon"
  schedule: Schedule = SD_SCHEDULE
  # Trained weights shipped in edgediff/assets (a pipeline .safetensors), if any.
  weights: str | None = None
  # Prompts for calibration, parity inputs and end-to-end parity (a file in edgediff/assets).
  prompts: str = "prompts.txt"

  def component(self, component: str) -> ComponentSpec:
    return COMPONENT_SPECS[getattr(self, component)]


_PIPELINE_SPECS = [
    PipelineSpec("md", "clip-l14-text", "md", "md-decoder"),
    PipelineSpec("md-lite", "clip-l14-text", "md-lite", "md-decoder"),
    PipelineSpec("sd15", "clip-l14-text", "sd15-unet", "sd-vae-decoder"),
    PipelineSpec("snapfusion", "clip-l14-text", "snapfusion-unet", "snapfusion-decoder"),
    # SnapGen's own text encoders are not modelled; CLIP-L stands in.
    PipelineSpec("snapgen", "clip-l14-text", "snapgen-unet", "snapgen-decoder", latent_size=128),
]
_SHAPES_PIPELINES = [
    PipelineSpec(name, "shapes-text", unet, "shapes-decoder", latent_size=8, tiny_latent_size=8,
                 prediction_type="v_prediction", schedule=schedule.ZERO_SNR,
                 weights=f"shapes/{name}.safetensors", prompts="shapes/prompts.txt")
    for name, unet in (("shapes", "shapes-unet"), ("shapes-gelu", "shapes-unet-gelu"),
                       ("shapes-softmax", "shapes-unet-softmax"))]
PIPELINE_SPECS = {spec.name: spec for spec in _PIPELINE_SPECS + _SHAPES_PIPELINES}


def component_spec(name: str) -> ComponentSpec:
  if name not in COMPONENT_SPECS:
    raise EdgediffError(f"unknown model {name!r}; known: {', '.join(COMPONENT_SPECS)}")
  return COMPONENT_SPECS[name]


def pipeline_spec(name: str) -> PipelineSpec:
  if name not in PIPELINE_SPECS:
    raise EdgediffError(f"unknown pipeline {name!r}; known: {', '.join(PIPELINE_SPECS)}")
  return PIPELINE_SPECS[name]
