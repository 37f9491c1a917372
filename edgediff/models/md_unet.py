"""MobileDiffusion UNet (MD and MD-Lite), built from the papers in shared/seeds.

Departures from SD-1.5's UNet, as the papers describe them:
- three levels (64, 32, 16 px of a 64x64 latent) instead of four; no 8x8 level and no
  separate mid block: the innermost down stack, bottleneck and innermost up stack are one
  unit at 16x16 where the transformers sit;
- no transformer at 64x64; cross-attention only (no self-attention) at 32x32;
- separable ConvNeXt-like residual blocks (SPConv) at 16x16, SD residual blocks elsewhere;
- self-attention shares one projection for key and value;
- gated feed-forward with swish and inner width 3d;
- relu(QK^T) attention instead of softmax (softmax stays available);
- 8 latent channels.
Gaps the papers leave are closed as in shared/design/mobilediffusion.md and noted below.
"""

import dataclasses
import math

import torch
from torch import nn
import torch.nn.functional as F

from edgediff.models.io import TensorSpec, unet_input_specs


@dataclasses.dataclass(frozen=True)
class MDUNetConfig:
  in_channels: int = 8  # MobileDiffusion's latent space has 8 channels (SD: 4)
  out_channels: int = 8
  channels: tuple[int, ...] = (320, 640, 1024)  # per level: 64, 32, 16 px of a 64x64 latent
  # Residual block type per level: SPConv only at 16x16, where most parameters sit.
  conv_types: tuple[str, ...] = ("full", "full", "sp")
  down_blocks: tuple[int, ...] = (1, 1, 2)
  up_blocks: tuple[int, ...] = (2, 2, 3)
  # Transformer blocks after each residual block, per level (0 = none).
  down_depths: tuple[int, ...] = (0, 1, 3)
  up_depths: tuple[int, ...] = (0, 1, 3)  # MD-Lite: (0, 1, 2)
  # Self-attention per level: MobileDiffusion keeps it only at 16x16 (cross-attention only at 32).
  self_attention: tuple[bool, ...] = (False, False, True)
  context_dim: int = 768  # CLIP ViT-L/14 text width
  head_dim: int = 64  # assumed: 16 heads at 1024, 14 at 896, 10 at 640
  # relu (paper default) or softmax: relu avoids softmax's exponentials on mobile.
  attention: str = "relu"
  # swish (default), gelu (exact) or gelu_tanh: swish, not gelu, since gelu's tanh
  # approximation has a cubic term that can overflow fp16 and widen int8 ranges.
  ff_activation: str = "swish"
  ff_inner_mult: int = 3  # gated FF: Linear d->2*3d, value * act(gate), Linear 3d->d
  shared_kv: bool = True  # self-attention uses one projection for key and value (W_K = W_V)
  spconv_expansion: int = 3  # SPConv pointwise expansion (assumed; 2 gives 377.6M, 4 403.3M)
  time_proj_dim: int = 320  # sinusoidal timestep features
  time_embed_dim: int = 1280
  norm_groups: int = 32
  sample_size: int = 64  # default latent height and width

  def __post_init__(self):
    if self.attention not in ("relu", "softmax"):
      raise ValueError(f"attention must be 'relu' or 'softmax', got {self.attention!r}")
    if self.ff_activation not in ("swish", "gelu", "gelu_tanh"):
      raise ValueError(
          f"ff_activation must be 'swish', 'gelu' or 'gelu_tanh', got {self.ff_activation!r}")


MD = MDUNetConfig()
MD_LITE = dataclasses.replace(MD, channels=(320, 640, 896), up_depths=(0, 1, 2))


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
  """Sinusoidal features of timesteps (B,) -> (B, dim), cos first as in SD."""
  half = dim // 2
  freqs = torch.exp(
      -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
  args = t.float()[:, None] * freqs[None]  # (B, half)
  return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class FullConv(nn.Module):
  """SD's residual block: GN-SiLU-conv3x3 (+ time) GN-SiLU-conv3x3, 1x1 shortcut."""

  def __init__(self, c_in: int, c_out: int, cfg: MDUNetConfig):
    super().__init__()
    self.norm1 = nn.GroupNorm(cfg.norm_groups, c_in, eps=1e-5)
    self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
    self.time_proj = nn.Linear(cfg.time_embed_dim, c_out)
    self.norm2 = nn.GroupNorm(cfg.norm_groups, c_out, eps=1e-5)
    self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
    self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

  def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    h = self.conv1(F.silu(self.norm1(x)))
    h = h + self.time_proj(F.silu(temb))[:, :, None, None]
    h = self.conv2(F.silu(self.norm2(h)))
    return self.shortcut(x) + h


class SPConv(nn.Module):
  """Separable residual block (ConvNeXt-like, 3x3 depthwise; layout assumed).

  GN(C_in) -> depthwise 3x3 -> + time -> pointwise C_in -> e*C_out -> swish ->
  pointwise e*C_out -> C_out, plus a 1x1 shortcut when channels change.
  """

  def __init__(self, c_in: int, c_out: int, cfg: MDUNetConfig):
    super().__init__()
    hidden = cfg.spconv_expansion * c_out
    self.norm = nn.GroupNorm(cfg.norm_groups, c_in, eps=1e-5)
    self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in)
    self.time_proj = nn.Linear(cfg.time_embed_dim, c_in)
    self.pointwise1 = nn.Conv2d(c_in, hidden, 1)
    self.pointwise2 = nn.Conv2d(hidden, c_out, 1)
    self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

  def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    h = self.depthwise(self.norm(x))
    h = h + self.time_proj(F.silu(temb))[:, :, None, None]
    h = self.pointwise2(F.silu(self.pointwise1(h)))
    return self.shortcut(x) + h


class Attention(nn.Module):
  """Multi-head attention with relu or softmax weights and optional shared K/V."""

  def __init__(self, dim: int, context_dim: int | None, cfg: MDUNetConfig, shared_kv: bool):
    super().__init__()
    self.heads = dim // cfg.head_dim
    self.head_dim = cfg.head_dim
    self.kind = cfg.attention
    kv_dim = context_dim or dim
    self.to_q = nn.Linear(dim, dim, bias=False)
    self.to_k = nn.Linear(kv_dim, dim, bias=False)
    # Shared key/value (self-attention only): one projection fewer, same output.
    self.to_v = None if shared_kv else nn.Linear(kv_dim, dim, bias=False)
    self.to_out = nn.Linear(dim, dim)

  def weights_and_values(self, x: torch.Tensor, context: torch.Tensor | None = None):
    """The attention weights (B, h, N, L) and values (B, h, L, d) of input `x` (B, N, C)."""
    b, n, _ = x.shape
    ctx = x if context is None else context
    q = self.to_q(x)
    k = self.to_k(ctx)
    v = k if self.to_v is None else self.to_v(ctx)
    q = q.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)
    k = k.view(b, -1, self.heads, self.head_dim).transpose(1, 2)  # (B, h, L, d)
    v = v.view(b, -1, self.heads, self.head_dim).transpose(1, 2)  # (B, h, L, d)
    scores = q @ k.transpose(-1, -2) * (self.head_dim**-0.5)  # (B, h, N, L)
    if self.kind == "relu":
      # relu attention: no exponentials; normalised by the key length (assumed).
      weights = F.relu(scores) / k.shape[2]
    else:
      weights = scores.softmax(dim=-1)
    return weights, v

  def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    b, n, c = x.shape
    weights, v = self.weights_and_values(x, context)
    out = (weights @ v).transpose(1, 2).reshape(b, n, c)  # (B, N, C)
    return self.to_out(out)


def activation(kind: str, x: torch.Tensor) -> torch.Tensor:
  """The gated feed-forward's activation: swish (MobileDiffusion's), gelu or gelu_tanh."""
  if kind == "swish":
    return F.silu(x)
  if kind == "gelu":
    return F.gelu(x)
  return F.gelu(x, approximate="tanh")


class GatedFeedForward(nn.Module):
  """Linear d -> 2*m*d, value * act(gate), Linear m*d -> d."""

  def __init__(self, dim: int, cfg: MDUNetConfig):
    super().__init__()
    inner = cfg.ff_inner_mult * dim
    self.proj_in = nn.Linear(dim, 2 * inner)
    self.proj_out = nn.Linear(inner, dim)
    self.activation = cfg.ff_activation

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    value, gate = self.proj_in(x).chunk(2, dim=-1)
    return self.proj_out(value * activation(self.activation, gate))


class TransformerBlock(nn.Module):
  """[LN -> self-attention] -> LN -> cross-attention -> LN -> gated FF, each residual."""

  def __init__(self, dim: int, cfg: MDUNetConfig, self_attention: bool):
    super().__init__()
    if self_attention:
      self.norm_sa = nn.LayerNorm(dim)
      self.self_attn = Attention(dim, None, cfg, shared_kv=cfg.shared_kv)
    else:
      self.norm_sa = None
      self.self_attn = None
    self.norm_ca = nn.LayerNorm(dim)
    self.cross_attn = Attention(dim, cfg.context_dim, cfg, shared_kv=False)
    self.norm_ff = nn.LayerNorm(dim)
    self.ff = GatedFeedForward(dim, cfg)

  def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    if self.self_attn is not None:
      x = x + self.self_attn(self.norm_sa(x))
    x = x + self.cross_attn(self.norm_ca(x), context)
    return x + self.ff(self.norm_ff(x))


class Transformer(nn.Module):
  """GroupNorm -> linear proj_in -> blocks -> linear proj_out -> residual."""

  def __init__(self, dim: int, depth: int, cfg: MDUNetConfig, self_attention: bool):
    super().__init__()
    self.norm = nn.GroupNorm(cfg.norm_groups, dim, eps=1e-6)
    self.proj_in = nn.Linear(dim, dim)
    self.blocks = nn.ModuleList(
        TransformerBlock(dim, cfg, self_attention) for _ in range(depth))
    self.proj_out = nn.Linear(dim, dim)

  def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    t = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
    t = self.proj_in(t)
    for block in self.blocks:
      t = block(t, context)
    t = self.proj_out(t).transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
    return x + t


class Stage(nn.Module):
  """One residual block optionally followed by a transformer stack."""

  def __init__(self, c_in, c_out, conv_type, depth, self_attention, cfg):
    super().__init__()
    self.resnet = (FullConv if conv_type == "full" else SPConv)(c_in, c_out, cfg)
    self.transformer = Transformer(c_out, depth, cfg, self_attention) if depth else None

  def forward(self, x, temb, context):
    x = self.resnet(x, temb)
    if self.transformer is not None:
      x = self.transformer(x, context)
    return x


class Upsample(nn.Module):
  def __init__(self, c: int):
    super().__init__()
    self.conv = nn.Conv2d(c, c, 3, padding=1)

  def forward(self, x):
    return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MDUNet(nn.Module):
  """Predicts noise from (sample, timestep, encoder_hidden_states)."""

  def __init__(self, cfg: MDUNetConfig = MD):
    super().__init__()
    self.config = cfg
    ch = cfg.channels
    self.time_mlp = nn.Sequential(
        nn.Linear(cfg.time_proj_dim, cfg.time_embed_dim), nn.SiLU(),
        nn.Linear(cfg.time_embed_dim, cfg.time_embed_dim))
    self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)

    self.down = nn.ModuleList()
    self.downsamplers = nn.ModuleList()
    skips = [ch[0]]
    c = ch[0]
    for level, c_out in enumerate(ch):
      stages = nn.ModuleList()
      for _ in range(cfg.down_blocks[level]):
        stages.append(Stage(c, c_out, cfg.conv_types[level], cfg.down_depths[level],
                            cfg.self_attention[level], cfg))
        c = c_out
        skips.append(c)
      self.down.append(stages)
      if level < len(ch) - 1:
        self.downsamplers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        skips.append(c)

    self.up = nn.ModuleList()
    self.upsamplers = nn.ModuleList()
    for level in reversed(range(len(ch))):
      stages = nn.ModuleList()
      for _ in range(cfg.up_blocks[level]):
        c_in = c + skips.pop()  # skip connections concatenate, as in SD
        stages.append(Stage(c_in, ch[level], cfg.conv_types[level], cfg.up_depths[level],
                            cfg.self_attention[level], cfg))
        c = ch[level]
      self.up.append(stages)
      if level > 0:
        self.upsamplers.append(Upsample(c))
    if skips:
      raise ValueError(f"up_blocks do not consume every skip connection: {len(skips)} left")

    self.norm_out = nn.GroupNorm(cfg.norm_groups, ch[0], eps=1e-5)
    self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

  def input_specs(self, batch: int, latent_size: int | None = None) -> list[TensorSpec]:
    return unet_input_specs(batch, self.config.in_channels, latent_size or self.config.sample_size,
                            self.config.context_dim)

  output_names = ("noise_pred",)

  def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
              encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    timestep = timestep.reshape(-1).expand(sample.shape[0])  # (B,)
    temb = self.time_mlp(timestep_features(timestep, self.config.time_proj_dim))  # (B, 1280)
    x = self.conv_in(sample)
    skips = [x]
    for level, stages in enumerate(self.down):
      for stage in stages:
        x = stage(x, temb, encoder_hidden_states)
        skips.append(x)
      if level < len(self.downsamplers):
        x = self.downsamplers[level](x)
        skips.append(x)
    for i, stages in enumerate(self.up):
      for stage in stages:
        x = stage(torch.cat([x, skips.pop()], dim=1), temb, encoder_hidden_states)
      if i < len(self.upsamplers):
        x = self.upsamplers[i](x)
    return self.conv_out(F.silu(self.norm_out(x)))
