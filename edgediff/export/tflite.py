"""PyTorch -> TFLite with litert-torch: one signature with named inputs and outputs."""

import contextlib
import sys

import torch
from torch import nn

from edgediff import atomic
from edgediff.errors import EdgediffError
from edgediff.quant import recipes
from edgediff.tflite_files import FLATBUFFER_LIMIT


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
                  recipe: str = "fp32") -> None:
  """Writes `module` as a .tflite under `recipe`: fp32 or fp16 by litert-torch alone, the
  uncalibrated int8 recipes by ai-edge-quantizer on the converted model, in memory (the
  calibrated ones read an fp32 file: see edgediff.quant.tflite_static)."""
  wrapped = NamedIO(module, feeds.keys(), output_names).eval()
  import litert_torch

  int8 = recipe in ("int8_weight_only", "int8_dynamic")
  with contextlib.redirect_stdout(sys.stderr):  # litert-torch prints progress to stdout
    # lightweight_conversion: constants stay lazy in the MLIR module and LiteRT folds them
    # at the end. md's UNet: 5.5 GiB peak RSS instead of 7.5, the same 2116 ops and bytes.
    edge_model = litert_torch.convert(
        wrapped, sample_kwargs=dict(feeds), lightweight_conversion=True,
        quant_config=None if int8 else recipes.tflite_quant_config(recipe))
    if int8:
      quantized = recipes.quantize_tflite(recipe, edge_model.model_content())
      del edge_model  # the float model, before the quantized one is written
      atomic.write_bytes(path, quantized)
    else:
      edge_model.export(path)
