"""`edgediff train-demo`: trains the shapes model (a small MobileDiffusion) on this CPU.

Three stages:
1. autoencoder: an SD-style encoder and the shapes decoder learn to map 64x64 images to
   8x8x8 latents and back (L1 + MSE, shape pixels and edges weighted up, with noise added to
   the latents so the decoder is robust to a sampler's imperfect latents); the latent scale
   is then folded into the weights so that latents have unit standard deviation.
2. text encoder: pretrained on the training captions so that every attribute can be read
   from its output (standing in for CLIP's pretraining; see `pretrain_text_encoder`), then
   frozen, as SD and MobileDiffusion freeze theirs.
3. diffusion: the UNet of one variant learns to denoise encoded training images with the
   pipeline's prediction type and schedule (v-prediction, zero terminal SNR: see
   edgediff/schedule.py for why; 10% of captions dropped to "" so that classifier-free
   guidance works); weights averaged (EMA) for sampling. Resumable from the checkpoint it
   writes every few hundred steps, as is the autoencoder's stage.
The encoded training set is cached (latents.safetensors), so that every variant trains on
the same data, seed and step budget. Every step's randomness comes from (seed, step), so a
resumed run continues exactly where it stopped.
"""

import copy
import dataclasses
import io
import json
import math
import os
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import Encoder
from tqdm import tqdm

from edgediff import atomic, checkpoints, schedule, specs
from edgediff.errors import EdgediffError
from edgediff.models.text_encoder import to_rows, tokenize
from edgediff.shapes import data

VARIANTS = {  # variant -> the pipeline spec it trains
    "swish-relu": "shapes", "gelu_tanh": "shapes-gelu", "softmax": "shapes-softmax"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  steps: int = 3600  # diffusion steps (UNet; the text encoder is frozen)
  batch: int = 64
  lr: float = 2e-3
  warmup: int = 100
  ema: float = 0.999
  cond_dropout: float = 0.1  # share of captions replaced by "" (classifier-free guidance)
  ae_steps: int = 2000
  ae_batch: int = 16
  ae_lr: float = 2e-3
  ae_shape_weight: float = 20.0  # loss weight of shape pixels over background pixels
  ae_latent_noise: float = 0.1  # std of the noise added to latents while training the decoder
  text_steps: int = 400  # text encoder pretraining (caption attributes)
  text_batch: int = 128
  text_lr: float = 1e-3
  dataset: int = 40_000  # encoded training images (fewer for short runs; see dataset_size)
  checkpoint_every: int = 200
  seed: int = 0

  def dataset_size(self) -> int:
    return min(self.dataset, max(self.steps * self.batch // 2, 1024))


def build_encoder() -> nn.Module:
  """SD's encoder with the shapes decoder's widths; 64x64 RGB in [-1, 1] -> 8x8x8."""
  cfg = specs.COMPONENT_SPECS["shapes-decoder"].config
  return Encoder(in_channels=3, out_channels=cfg.latent_channels,
                 down_block_types=("DownEncoderBlock2D",) * len(cfg.block_out_channels),
                 block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
                 norm_num_groups=cfg.norm_groups, act_fn="silu", double_z=False)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, H, W) in [0, 1]


def _shape_mask(x: torch.Tensor) -> torch.Tensor:
  """(B, 1, H, W): 1 where a pixel differs from the image's corner colour (the background)."""
  return ((x - x[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > 0.02).float()


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
  """Linear warm-up (at most a tenth of the run), then cosine decay to a tenth of the peak."""
  warmup = max(min(warmup, total // 10), 1)
  if step < warmup:
    return peak * (step + 1) / warmup
  progress = (step - warmup) / max(total - warmup, 1)
  return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _save_state(path: str, state: dict) -> None:
  buffer = io.BytesIO()
  torch.save(state, buffer)
  atomic.write_bytes(path, buffer.getvalue())


def _resume(path: str, modules: dict[str, nn.Module], optimizer
            ) -> tuple[list[float], int, float]:
  """(losses so far, next step, seconds spent) from a stage's checkpoint, if there is one."""
  if not os.path.exists(path):
    return [], 0, 0.0
  state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles objects
  for key, module in modules.items():
    module.load_state_dict(state[key])
  optimizer.load_state_dict(state["optimizer"])
  return state["losses"], int(state["step"]), float(state.get("seconds", 0.0))


def _checkpoint(path: str, modules: dict[str, nn.Module], optimizer, losses: list[float],
                step: int, seconds: float) -> None:
  _save_state(path, {**{key: m.state_dict() for key, m in modules.items()},
                     "optimizer": optimizer.state_dict(), "losses": losses, "step": step,
                     "seconds": seconds})


def _write_log(path: str, losses: list[float]) -> None:
  atomic.write_bytes(path, "".join(
      json.dumps({"step": i + 1, "loss": round(v, 6)}) + "\n"
      for i, v in enumerate(losses)).encode())


def train_autoencoder(cfg: TrainConfig, out: str, progress: bool = True):
  """(encoder, decoder) with unit-variance latents; reads or writes out/autoencoder.*."""
  final = os.path.join(out, "autoencoder.safetensors")
  encoder = build_encoder()
  decoder = specs.COMPONENT_SPECS["shapes-decoder"].build().train()
  if os.path.exists(final):
    tensors = checkpoints.read_tensors(final)
    checkpoints.load_state(encoder, {k[8:]: v for k, v in tensors.items()
                                     if k.startswith("encoder.")}, final, "vae_decoder")
    checkpoints.load_state(decoder, tensors, final, "vae_decoder")
    return encoder.eval(), decoder.eval()

  params = list(encoder.parameters()) + list(decoder.parameters())
  optimizer = torch.optim.AdamW(params, lr=cfg.ae_lr, weight_decay=0.0)
  state_path = os.path.join(out, "autoencoder.state.pt")
  modules = {"encoder": encoder, "decoder": decoder}
  losses, start, seconds = _resume(state_path, modules, optimizer)
  began = time.monotonic()
  bar = tqdm(range(start, cfg.ae_steps), desc="autoencoder", initial=start,
             total=cfg.ae_steps, disable=not progress)
  for step in bar:
    images, _ = data.sample(cfg.ae_batch, seed=cfg.seed * 1_000_003 + step,
                            scenes=tuple(data.all_scenes()))  # pixels only: every scene
    x = _to_tensor(images)
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    z = encoder(x * 2 - 1)
    z_noisy = z + cfg.ae_latent_noise * z.detach().std() * torch.randn(z.shape, generator=g)
    y = decoder(z_noisy)
    # The shape covers 2-9% of the pixels: weighted up, so that the background alone is not
    # a good enough answer (unweighted, the decoder learns grey blobs; shape pixels alone,
    # it learns rounded ones).
    mask = _shape_mask(x)
    # Edges and corners are what tells a square from a circle: weighted up once more.
    edge = F.max_pool2d(mask, 3, 1, 1) - (-F.max_pool2d(-mask, 3, 1, 1))  # dilate - erode
    weight = 1 + cfg.ae_shape_weight * (mask + edge)
    loss = (weight * ((y - x).abs() + (y - x) ** 2)).mean()
    for group in optimizer.param_groups:
      group["lr"] = _lr(step, cfg.ae_steps, cfg.ae_lr, cfg.warmup)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    losses.append(loss.item())
    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.ae_steps:
      _checkpoint(state_path, modules, optimizer, losses, step + 1,
                  seconds + time.monotonic() - began)
  seconds += time.monotonic() - began
  encoder.eval()
  decoder.eval()
  with torch.no_grad():  # fold the latent scale into the weights: unit-std latents
    images, _ = data.sample(512, seed=cfg.seed + 77, scenes=tuple(data.all_scenes()))
    scale = 1.0 / float(encoder(_to_tensor(images) * 2 - 1).std())
    encoder.conv_out.weight.mul_(scale)
    encoder.conv_out.bias.mul_(scale)
    decoder.post_quant_conv.weight.div_(scale)
  tensors = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
  tensors.update({f"vae_decoder.{k}": v for k, v in decoder.state_dict().items()})
  checkpoints.write_tensors(tensors, final)
  _write_log(os.path.join(out, "autoencoder.loss.jsonl"), losses)
  atomic.write_json(os.path.join(out, "autoencoder.train.json"),
                    {**dataclasses.asdict(cfg), "seconds": round(seconds, 1)})
  if os.path.exists(state_path):
    os.remove(state_path)
  return encoder, decoder


def encoded_dataset(cfg: TrainConfig, encoder: nn.Module, out: str, progress: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
  """(latents (N, 8, 8, 8), input_ids (N, 77)) of the training split; cached in out/."""
  path = os.path.join(out, "latents.safetensors")
  n = cfg.dataset_size()
  if os.path.exists(path):
    tensors = checkpoints.read_tensors(path)
    if tensors["latents"].shape[0] == n:
      return tensors["latents"], tensors["input_ids"]
  latents, ids = [], []
  chunk = 512
  for i in tqdm(range(0, n, chunk), desc="encoding the training set", disable=not progress):
    images, scenes = data.sample(min(chunk, n - i), seed=cfg.seed * 7919 + i)
    with torch.no_grad():
      latents.append(encoder(_to_tensor(images) * 2 - 1))
    ids.append(tokenize([s.caption for s in scenes]))
  tensors = {"latents": torch.cat(latents), "input_ids": torch.cat(ids)}
  checkpoints.write_tensors(tensors, path)
  return tensors["latents"], tensors["input_ids"]


def pretrain_text_encoder(cfg: TrainConfig, out: str, progress: bool = True) -> nn.Module:
  """The text encoder, trained to make every attribute of a caption readable; frozen after.

  SD and MobileDiffusion condition on a frozen, pretrained CLIP text encoder. No such encoder
  exists for the shapes world, and one trained jointly with the UNet from scratch never
  separated the shape words (shape adherence stayed at chance: the UNet gets little from a
  word that changes a few latent cells, so little gradient reaches the word). This stage
  stands in for CLIP's pretraining: linear heads read each attribute (size, colour, shape,
  position, background) from the mean of the encoder's output over all 77 tokens, which is
  what an attention that weighs tokens evenly sees. Reads or writes out/text_encoder.*.
  """
  final = os.path.join(out, "text_encoder.safetensors")
  torch.manual_seed(cfg.seed)
  text_encoder = specs.pipeline_spec("shapes").component("text_encoder").build()
  if os.path.exists(final):
    checkpoints.load_state(text_encoder, checkpoints.read_tensors(final), final, "text_encoder")
    return text_encoder.eval().requires_grad_(False)
  # CLIP's token embeddings start at std 0.02, far below what the layers add to the residual
  # stream: trained from scratch, the words after the first few then barely change the
  # output. At unit scale every word stays visible in its own position's output.
  nn.init.normal_(text_encoder.text_model.embeddings.token_embedding.weight, std=1.0)
  scenes = data.split()[0]
  input_ids = tokenize([s.caption for s in scenes], vocabulary=text_encoder.config.vocabulary)
  labels = torch.tensor([[data.VALUES[a].index(getattr(s, a)) for a in data.ATTRIBUTES]
                         for s in scenes])
  width = text_encoder.text_model.config.hidden_size
  heads = nn.ModuleList(nn.Linear(width, len(data.VALUES[a])) for a in data.ATTRIBUTES)
  params = list(text_encoder.parameters()) + list(heads.parameters())
  optimizer = torch.optim.AdamW(params, lr=cfg.text_lr, weight_decay=0.0)
  text_encoder.train()
  losses = []
  for step in tqdm(range(cfg.text_steps), desc="text encoder", disable=not progress):
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    idx = torch.randint(0, len(scenes), (cfg.text_batch,), generator=g)
    pooled = text_encoder(input_ids[idx]).mean(dim=1)
    loss = sum(F.cross_entropy(head(pooled), labels[idx, i]) for i, head in enumerate(heads))
    for group in optimizer.param_groups:
      group["lr"] = _lr(step, cfg.text_steps, cfg.text_lr, cfg.warmup)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
  text_encoder.eval().requires_grad_(False)
  checkpoints.write_tensors(text_encoder.state_dict(), final)
  _write_log(os.path.join(out, "text_encoder.loss.jsonl"), losses)
  return text_encoder


def train_diffusion(cfg: TrainConfig, variant: str, text_encoder: nn.Module,
                    latents: torch.Tensor, input_ids: torch.Tensor, out: str,
                    progress: bool = True) -> tuple[nn.Module, list[float]]:
  """The UNet of `variant` (EMA weights) conditioned on the frozen text encoder, and the
  loss of every step."""
  pipeline = specs.pipeline_spec(VARIANTS[variant])
  torch.manual_seed(cfg.seed)
  unet = pipeline.component("unet").build().train()
  ema = copy.deepcopy(unet).eval().requires_grad_(False)
  optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.0)
  state_path = os.path.join(out, f"{variant}.state.pt")
  modules = {"unet": unet, "ema": ema}
  losses, start, seconds = _resume(state_path, modules, optimizer)
  began = time.monotonic()
  abar = pipeline.schedule.alphas_cumprod()
  # The cached dataset keeps CLIP's ids; the text encoder takes its embedding rows.
  input_ids = to_rows(input_ids, text_encoder.config.vocabulary)
  empty = tokenize([""], vocabulary=text_encoder.config.vocabulary)  # (1, 77)
  v_prediction = {"v_prediction": True, "epsilon": False}[pipeline.prediction_type]
  bar = tqdm(range(start, cfg.steps), desc=f"diffusion ({variant})", initial=start,
             total=cfg.steps, disable=not progress)
  for step in bar:
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    idx = torch.randint(0, latents.shape[0], (cfg.batch,), generator=g)
    x0, ids = latents[idx], input_ids[idx].clone()
    ids[torch.rand(cfg.batch, generator=g) < cfg.cond_dropout] = empty
    t = torch.randint(0, schedule.TRAIN_STEPS, (cfg.batch,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = abar[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    with torch.no_grad():
      context = text_encoder(ids)
    pred = unet(x_t, t.float(), context)
    # The target the pipeline's sampler expects (v: the shapes specs start from pure noise).
    target = a.sqrt() * noise - (1 - a).sqrt() * x0 if v_prediction else noise
    loss = F.mse_loss(pred, target)
    for group in optimizer.param_groups:
      group["lr"] = _lr(step, cfg.steps, cfg.lr, cfg.warmup)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    optimizer.step()
    decay = min(cfg.ema, (1 + step) / (10 + step))  # short runs still average sensibly
    with torch.no_grad():
      for e, p in zip(ema.parameters(), unet.parameters()):
        e.lerp_(p, 1 - decay)
    losses.append(loss.item())
    bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
      _checkpoint(state_path, modules, optimizer, losses, step + 1,
                  seconds + time.monotonic() - began)
  _write_log(os.path.join(out, f"{variant}.loss.jsonl"), losses)
  atomic.write_json(os.path.join(out, f"{variant}.diffusion.json"),
                    {"seconds": round(seconds + time.monotonic() - began, 1)})
  if os.path.exists(state_path):
    os.remove(state_path)
  return ema, losses


def train(cfg: TrainConfig, out: str, variant: str = "swish-relu",
          progress: bool = True) -> str:
  """Trains (or resumes) one variant; returns the path of its pipeline weights file."""
  if variant not in VARIANTS:
    raise EdgediffError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
  os.makedirs(out, exist_ok=True)
  torch.manual_seed(cfg.seed)
  encoder, decoder = train_autoencoder(cfg, out, progress)
  latents, input_ids = encoded_dataset(cfg, encoder, out, progress)
  text_encoder = pretrain_text_encoder(cfg, out, progress)
  unet, _ = train_diffusion(cfg, variant, text_encoder, latents, input_ids, out, progress)
  tensors = {f"text_encoder.{k}": v for k, v in text_encoder.state_dict().items()}
  tensors.update({f"unet.{k}": v for k, v in unet.state_dict().items()})
  tensors.update({f"vae_decoder.{k}": v for k, v in decoder.state_dict().items()})
  path = os.path.join(out, f"{VARIANTS[variant]}.safetensors")
  checkpoints.write_tensors(tensors, path)
  atomic.write_json(os.path.join(out, f"{VARIANTS[variant]}.train.json"),
                    {"variant": variant, **dataclasses.asdict(cfg),
                     "dataset_size": cfg.dataset_size()})
  return path
