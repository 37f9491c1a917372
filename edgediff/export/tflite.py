"""PyTorch -> TFLite with litert-torch: one signature with named inputs and outputs."""

import contextlib
import sys

import torch
from torch import nn

from edgediff.errors import EdgediffError

FLATBUFFER_LIMIT = 2 * 1024**3  # a .tflite flatbuffer cannot exceed 2 GB


class NamedIO(nn.Module):
  """Keyword inputs and a dict output, so that the signature says `sample`, not `args_0`."""

  def __init__(self, module: nn.Module, input_names, output_names):
    super().__init__()
    self.module = module
    self.input_names = list(input_names)
    self.output_name = output_names[0]

  def forward(self, **inputs):
    return {self.output_name: self.module(*(inputs[n] for n in self.input_names))}


BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2}  # the int8 recipes store 1


def check_size(component: str, fp32_bytes: int, recipe: str) -> None:
  """Refuses a component whose weights under `recipe` exceed the flatbuffer limit."""
  weight_bytes = fp32_bytes * BYTES_PER_WEIGHT.get(recipe, 1) // 4
  if weight_bytes > FLATBUFFER_LIMIT:
    raise EdgediffError(
        f"{component}: its {recipe} weights take {weight_bytes / 1024**3:.2f} GB, over the "
        f"2 GB TFLite flatbuffer limit; export it with --fp16 or --int8, or to --fmt onnx")


def export_tflite(module: nn.Module, feeds: dict[str, torch.Tensor], output_names, path: str,
                  quant_config=None) -> None:
  wrapped = NamedIO(module, feeds.keys(), output_names).eval()
  import litert_torch

  with contextlib.redirect_stdout(sys.stderr):  # litert-torch prints progress to stdout
    edge_model = litert_torch.convert(wrapped, sample_kwargs=dict(feeds),
                                      quant_config=quant_config)
    edge_model.export(path)
