"""Loading weights from local files: a .safetensors file or a diffusers-format folder.

Never unpickles: safetensors, or torch.load(weights_only=True) for diffusers' .bin files.
Names map by rule (see `_candidates`) and every tensor's shape, dtype and finiteness is
checked; a missing, empty, truncated or corrupt file, a missing tensor, a wrong shape,
integer weights or NaN/Inf raise an EdgediffError that names the file and the tensor.
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


def _is_safetensors(path: str) -> bool:
  """Whether the file starts as safetensors do: a little-endian header length, then '{'."""
  with open(path, "rb") as f:
    head = f.read(9)
  return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < (
      os.path.getsize(path))


def _refusal(e: Exception) -> str:
  """What torch's weights-only loader found, without its advice to turn the check off."""
  text = str(e)
  if "WeightsUnpickler error:" in text:
    detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
    if "Unsupported global" in detail:
      return f"it holds pickled objects other than tensors ({detail}); they were not loaded"
    return f"not a PyTorch weights file ({detail})"
  return f"not a PyTorch weights file ({type(e).__name__}: {first_line(e)})"


def read_tensors(path: str) -> Mapping[str, torch.Tensor]:
  """The tensors of a local .safetensors (or, weights-only, .bin/.pt) file, by name.

  .safetensors files are read lazily (LazyTensors), whatever the file is named;
  .bin/.pt files are memory-mapped where their format allows it (torch's zip format), so
  their tensors page in as they are used.
  """
  import warnings

  if not os.path.isfile(path):
    raise EdgediffError(f"{path}: no such checkpoint file")
  if os.path.getsize(path) == 0:
    raise EdgediffError(f"{path}: empty file, not a checkpoint")
  try:
    if path.endswith(".safetensors") or _is_safetensors(path):
      return LazyTensors(path)
    with warnings.catch_warnings():  # "Detected pickle protocol 4": the refusal says enough
      warnings.simplefilter("ignore", UserWarning)
      try:
        tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
      except RuntimeError as e:
        if "mmap" not in str(e):  # only the legacy (pre-zip) format cannot be mapped
          raise
        tensors = torch.load(path, map_location="cpu", weights_only=True)
  except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as e:
    raise EdgediffError(f"{path}: truncated or corrupt checkpoint ({first_line(e)})") from None
  except Exception as e:  # pickle.UnpicklingError: the weights-only loader refused it
    raise EdgediffError(f"{path}: refused by torch's weights-only loader: {_refusal(e)}") from None
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
    if target.is_floating_point() and not value.is_floating_point():
      raise EdgediffError(f"{source}: tensor {found!r} is {str(value.dtype)[6:]}, the "
                          f"{component} expects floating-point weights")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
      bad = "NaN" if bool(torch.isnan(value).any()) else "Inf"
      raise EdgediffError(f"{source}: tensor {found!r} holds {bad}: the {component} would "
                          f"compute nothing finite")
    state[name] = value.to(target.dtype)
  module.load_state_dict(state, strict=True, assign=True)


def load_weights(module: nn.Module, path: str, component: str) -> None:
  load_state(module, read_tensors(path), path, component)


# --- diffusers-format folders -------------------------------------------------------------

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                 "diffusion_pytorch_model.bin", "pytorch_model.bin")


def _read_json(path: str) -> dict:
  """A JSON object from `path`, or an EdgediffError naming the file and what is wrong."""
  try:
    with open(path, "rb") as f:
      text = f.read().decode("utf-8")
    config = json.loads(text)
  except UnicodeDecodeError:
    raise EdgediffError(f"{path}: not a UTF-8 text file, so not JSON") from None
  except json.JSONDecodeError as e:
    raise EdgediffError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(config, dict):
    raise EdgediffError(f"{path}: holds a JSON {type(config).__name__}, not an object of "
                        f"settings")
  return config


def _read_config(folder: str, sub: str) -> dict:
  path = os.path.join(folder, sub, "config.json")
  if not os.path.isfile(path):
    raise EdgediffError(f"{path}: missing (a diffusers folder needs {sub}/config.json)")
  return _read_json(path)


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


def _subfolder(component: str) -> str:
  return {"text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae"}[component]


def build_diffusers_component(folder: str, component: str, configs: dict) -> nn.Module:
  """The component built from its config.json on the meta device (no weights), or an
  EdgediffError naming the config when its settings do not make a model."""
  builder, config = configs[component]
  try:
    return build_empty(lambda: builder(config))
  except (KeyError, ValueError, TypeError, AttributeError, AssertionError) as e:
    what = f"unknown value {e.args[0]!r}" if isinstance(e, KeyError) else first_line(e)
    raise EdgediffError(f"{os.path.join(folder, _subfolder(component), 'config.json')}: "
                        f"does not build a {component}: {what}") from None


def load_diffusers_component(folder: str, component: str) -> nn.Module:
  """Builds one component from a diffusers folder and loads its weights."""
  module = build_diffusers_component(folder, component, diffusers_configs(folder))
  load_weights(module, _weights_file(folder, _subfolder(component)), component)
  return module


def diffusers_tokenizer(folder: str) -> str | None:
  path = os.path.join(folder, "tokenizer")
  return path if os.path.isfile(os.path.join(path, "vocab.json")) else None


def read_scheduler(folder: str) -> dict:
  """{prediction_type, schedule} from a diffusers folder's scheduler/scheduler_config.json."""
  path = os.path.join(folder, "scheduler", "scheduler_config.json")
  if not os.path.isfile(path):
    return {"prediction_type": "epsilon", "schedule": schedule.SD}
  config = _read_json(path)
  try:
    return {"prediction_type": config.get("prediction_type", "epsilon"),
            "schedule": schedule.Schedule.from_diffusers(config)}
  except ValueError as e:
    raise EdgediffError(f"{path}: {e}") from None
