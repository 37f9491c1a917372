"""A pipeline to work on: its name, and how to build each component with its weights.

Sources: a pipeline spec by name (`shapes`, `md`, `md-lite`, ...; `<name>-tiny` for the
tiny test config, always seeded weights), with the weights shipped in edgediff/assets where a
spec has them (the shapes models), or a local `.safetensors` file of weights, or a local
diffusers-format folder. Components are built one at a time, so that a full-size export holds one in memory.
"""

import dataclasses
import importlib.resources
import os
from typing import Callable

import torch
from torch import nn

from edgediff import checkpoints, specs
from edgediff.errors import EdgediffError
from edgediff.schedule import SD as SD_SCHEDULE, Schedule

DEFAULT_PIPELINE = "shapes"  # the small trained model shipped in edgediff/assets/shapes


@dataclasses.dataclass(frozen=True)
class Pipeline:
  name: str
  # (component, required=True) -> module in eval mode with its weights. With required=False
  # a weights file that holds nothing for the component gives seeded weights instead (the
  # UNet's parity inputs need some text encoder even when a file holds only a UNet).
  build: Callable[..., nn.Module]
  latent_size: int
  tokenizer: str | None = None  # a tokenizer folder; None: edgediff's CLIP vocabulary
  # The CLIP ids its text encoder keeps (a pruned vocabulary; empty: all): tokenize maps
  # them to the encoder's embedding rows.
  vocabulary: tuple[int, ...] = ()
  prediction_type: str = "epsilon"
  schedule: Schedule = SD_SCHEDULE
  # Prompts for calibration, parity inputs and end-to-end parity: what this model is for.
  prompts: tuple[str, ...] = ()
  # How to open it again (for the manifest and `edgediff parity`): open_pipeline(**source).
  source: dict = dataclasses.field(default_factory=dict)


def _spec_and_tiny(name: str) -> tuple[specs.PipelineSpec, bool]:
  tiny = name.endswith("-tiny")
  return specs.pipeline_spec(name[:-5] if tiny else name), tiny


def open_pipeline(name: str | None = None, *, from_diffusers: str | None = None,
                  weights: str | None = None, seed: int = 0) -> Pipeline:
  if from_diffusers:
    if name or weights:
      raise EdgediffError("--from-diffusers takes no pipeline name and no --weights")
    folder = os.path.abspath(from_diffusers)
    configs = checkpoints.diffusers_configs(folder)  # fails early on a broken folder
    for component in configs:  # on the meta device: no memory, a second or two at SD-1.5
      checkpoints.build_diffusers_component(folder, component, configs)
    return Pipeline(
        name=os.path.basename(folder.rstrip("/")),
        build=lambda component, required=True: checkpoints.load_diffusers_component(
            folder, component),
        latent_size=configs["unet"][1].get("sample_size", 64),
        tokenizer=checkpoints.diffusers_tokenizer(folder),
        **checkpoints.read_scheduler(folder),
        prompts=shipped_prompts(),
        source={"from_diffusers": folder, "seed": seed})

  name = name or DEFAULT_PIPELINE
  spec, tiny = _spec_and_tiny(name)
  if weights is None and spec.weights and not tiny:
    weights_path = shipped_weights(spec)
  else:
    weights_path = weights
  # Read before any long work, so that a bad file fails at once.
  tensors = checkpoints.read_tensors(weights_path) if weights_path else None

  def build(component: str, required: bool = True) -> nn.Module:
    cspec = spec.component(component)
    if tensors is not None:
      empty = checkpoints.build_empty(lambda: cspec.builder(cspec.tiny if tiny else cspec.config))
      if required or checkpoints.holds_component(empty, tensors, component):
        checkpoints.load_state(empty, tensors, weights_path, component)
        return empty
    # Without weights, a seeded initialisation: the same command gives the same artifact.
    # The seed is set inside a fork of torch's RNG, so building leaves the caller's as it was.
    with torch.random.fork_rng(devices=[]):
      torch.manual_seed(seed + specs.COMPONENTS.index(component))
      return cspec.build(tiny=tiny)

  text_spec = spec.component("text_encoder")
  return Pipeline(name=name, build=build,
                  latent_size=spec.tiny_latent_size if tiny else spec.latent_size,
                  vocabulary=getattr(text_spec.tiny if tiny else text_spec.config, "vocabulary",
                                     ()),
                  prediction_type=spec.prediction_type, schedule=spec.schedule,
                  prompts=shipped_prompts(spec.prompts),
                  source={"name": name, "weights": weights and os.path.abspath(weights),
                          "seed": seed})


def shipped_prompts(name: str = "prompts.txt") -> tuple[str, ...]:
  """A prompt file shipped in edgediff/assets, one prompt per line."""
  text = (importlib.resources.files("edgediff") / "assets" / name).read_text()
  return tuple(line.strip() for line in text.splitlines() if line.strip())


def shipped_weights_path(spec: specs.PipelineSpec) -> str:
  return str(importlib.resources.files("edgediff") / "assets" / spec.weights)


def shipped_weights(spec: specs.PipelineSpec) -> str:
  path = shipped_weights_path(spec)
  if not os.path.isfile(path):
    raise EdgediffError(f"{path}: the {spec.name} pipeline's shipped weights are missing; "
                        "reinstall edgediff, or train them with `edgediff train-demo`")
  return path


def open_source(source: dict) -> Pipeline:
  """Opens a pipeline again from the `source` an export recorded in its manifest."""
  return open_pipeline(source.get("name"), from_diffusers=source.get("from_diffusers"),
                       weights=source.get("weights"), seed=source.get("seed", 0))
