"""Loading weights from local files: a .safetensors file or a diffusers-format folder.

Never unpickles: safetensors, or torch.load(weights_only=True) for diffusers' .bin files.
Names map by rule (see `_candidates`) and every tensor's shape is checked; a missing,
truncated or corrupt file, a missing tensor or a wrong shape raises an EdgediffError that
names the file and the tensor.
"""

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Callable

import torch
from torch import nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from edgediff import atomic, schedule
from edgediff.errors import EdgediffError, first_line
from edgediff.models import decoders, text_encoder

# Prefixes a checkpoint may put before a component's own names: edgediff's whole-pipeline
# files (`unet.conv_in.weight`), and the single-file layouts of diffusers-style exports.
_PREFIXES = {
    "text_encoder": ("text_encoder.", "cond_stage_model.transformer."),
    "unet": ("unet.", "model.diffusion_model."),
    "vae_decoder": ("vae_decoder.", "vae.", "first_stage_model."),
}


class LazyTensors(Mapping):
  """A .safetensors file's tensors by name, each read from the file only when asked for.

  The header is read (and checked against the file's size) at once, so a truncated file
  fails before any long work; a full-size UNet's 3.4 GB are never all in memory twice.
  """

  def __init__(self, path: str):
    self._file = safe_open(path, framework="pt")
    self._names = tuple(self._file.keys())

  def __getitem__(self, name: str) -> torch.Tensor:
    if name not in self._names:
      raise KeyError(name)
    return self._file.get_tensor(name)

  def __iter__(self):
    return iter(self._names)

  def __len__(self) -> int:
    return len(self._names)


def read_tensors(path: str) -> Mapping[str, torch.Tensor]:
  """The tensors of a local .safetensors (or, weights-only, .bin/.pt) file, by name.

  .safetensors files are read lazily (LazyTensors); .bin/.pt files are memory-mapped where
  their format allows it (torch's zip format), so their tensors page in as they are used.
  """
  if not os.path.isfile(path):
    raise EdgediffError(f"{path}: no such checkpoint file")
  try:
    if path.endswith(".safetensors"):
      return LazyTensors(path)
    try:
      tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
      if "mmap" not in str(e):  # only the legacy (pre-zip) format cannot be mapped
        raise
      tensors = torch.load(path, map_location="cpu", weights_only=True)
  except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as e:
    raise EdgediffError(f"{path}: truncated or corrupt checkpoint ({first_line(e)})") from None
  except Exception as e:  # pickle.UnpicklingError: the weights-only loader refused it
    raise EdgediffError(f"{path}: not a weights file torch can read safely "
                        f"({first_line(e)})") from None
  if isinstance(tensors, Mapping) and "state_dict" in tensors and isinstance(
      tensors["state_dict"], Mapping):  # a training checkpoint wrapping its weights
    tensors = tensors["state_dict"]
  if not isinstance(tensors, Mapping) or not all(
      isinstance(v, torch.Tensor) for v in tensors.values()):
    raise EdgediffError(f"{path}: holds a {type(tensors).__name__}, not a mapping of tensor "
                        f"names to tensors")
  return tensors


def build_empty(builder: Callable[[], nn.Module]) -> nn.Module:
  """`builder()` with its parameters on the meta device (no memory, no initialisation);
  buffers, which a checkpoint may not hold (non-persistent ones), are built as usual.
  load_state then assigns the checkpoint's tensors: the weights exist once, not twice."""
  from accelerate import init_empty_weights

  with init_empty_weights(include_buffers=False):
    module = builder()
  return module.eval()


def write_tensors(tensors: dict[str, torch.Tensor], path: str) -> None:
  """An atomic safetensors write."""
  atomic.write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))


def _candidates(name: str, component: str) -> list[str]:
  names = [name] + [p + name for p in _PREFIXES[component]]
  if name.startswith("text_model."):  # newer transformers save CLIP without this prefix
    names.append(name[len("text_model."):])
  return names


def holds_component(module: nn.Module, tensors: Mapping[str, torch.Tensor],
                    component: str) -> bool:
  """Whether `tensors` has any tensor of `module` under any of the name rules."""
  return any(c in tensors for name in module.state_dict() for c in _candidates(name, component))


def load_state(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str,
               component: str) -> None:
  """Puts `tensors` into `module` by name rule, checking every name and shape.

  The tensors are assigned, not copied: `module` may come from build_empty (parameters on
  the meta device), and a full-size model then exists once in memory.
  """
  own = module.state_dict()
  state = {}
  for name, target in own.items():
    found = next((c for c in _candidates(name, component) if c in tensors), None)
    if found is None:
      raise EdgediffError(f"{source}: missing tensor {name!r} for the {component}")
    try:
      value = tensors[found]
    except SafetensorError as e:
      raise EdgediffError(f"{source}: tensor {found!r} cannot be read ({first_line(e)})") from None
    if tuple(value.shape) != tuple(target.shape):
      raise EdgediffError(f"{source}: tensor {found!r} has shape {tuple(value.shape)}, "
                          f"the {component} expects {tuple(target.shape)}")
    state[name] = value.to(target.dtype)
  module.load_state_dict(state, strict=True, assign=True)


def load_weights(module: nn.Module, path: str, component: str) -> None:
  load_state(module, read_tensors(path), path, component)


# --- diffusers-format folders -------------------------------------------------------------

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                 "diffusion_pytorch_model.bin", "pytorch_model.bin")


def _read_config(folder: str, sub: str) -> dict:
  path = os.path.join(folder, sub, "config.json")
  if not os.path.isfile(path):
    raise EdgediffError(f"{path}: missing (a diffusers folder needs {sub}/config.json)")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise EdgediffError(f"{path}: not valid JSON ({e})") from None


def _weights_file(folder: str, sub: str) -> str:
  for name in _WEIGHT_FILES:
    path = os.path.join(folder, sub, name)
    if os.path.isfile(path):
      return path
  raise EdgediffError(f"{os.path.join(folder, sub)}: no weights file (looked for "
                      f"{', '.join(_WEIGHT_FILES)})")


def _pick(config: dict, cls) -> dict:
  fields = {f.name for f in dataclasses.fields(cls)}
  return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in fields}


def diffusers_configs(folder: str) -> dict[str, tuple]:
  """(builder, config) per component from a diffusers folder's config.json files."""
  from edgediff.models import sd_unets  # diffusers import is slow: only when needed

  if not os.path.isdir(folder):
    raise EdgediffError(f"{folder}: no such diffusers folder")
  unet_cfg = _read_config(folder, "unet")
  vae_cfg = _read_config(folder, "vae")
  text_cfg = _read_config(folder, "text_encoder")
  vae = decoders.VaeDecoderConfig(
      latent_channels=vae_cfg.get("latent_channels", 4),
      block_out_channels=tuple(vae_cfg.get("block_out_channels", (128, 256, 512, 512))),
      layers_per_block=vae_cfg.get("layers_per_block", 2),
      norm_groups=vae_cfg.get("norm_num_groups", 32),
      mid_attention=vae_cfg.get("mid_block_add_attention", True),
      scaling_factor=vae_cfg.get("scaling_factor", 0.18215))
  unet = {k: v for k, v in unet_cfg.items() if not k.startswith("_")}
  text = text_encoder.TextEncoderConfig(**_pick(text_cfg, text_encoder.TextEncoderConfig))
  return {
      "text_encoder": (text_encoder.TextEncoder, text),
      "unet": (lambda cfg: sd_unets.DiffusersUNet.from_config(cfg), unet),
      "vae_decoder": (decoders.VaeDecoder, vae),
  }


def load_diffusers_component(folder: str, component: str) -> nn.Module:
  """Builds one component from a diffusers folder and loads its weights."""
  builder, config = diffusers_configs(folder)[component]
  sub = {"text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae"}[component]
  module = build_empty(lambda: builder(config))
  load_weights(module, _weights_file(folder, sub), component)
  return module


def diffusers_tokenizer(folder: str) -> str | None:
  path = os.path.join(folder, "tokenizer")
  return path if os.path.isfile(os.path.join(path, "vocab.json")) else None


def read_scheduler(folder: str) -> dict:
  """{prediction_type, schedule} from a diffusers folder's scheduler/scheduler_config.json."""
  path = os.path.join(folder, "scheduler", "scheduler_config.json")
  if not os.path.isfile(path):
    return {"prediction_type": "epsilon", "schedule": schedule.SD}
  with open(path) as f:
    config = json.load(f)
  try:
    return {"prediction_type": config.get("prediction_type", "epsilon"),
            "schedule": schedule.Schedule.from_diffusers(config)}
  except ValueError as e:
    raise EdgediffError(f"{path}: {e}") from None
