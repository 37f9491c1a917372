"""PyTorch -> TFLite with litert-torch: one signature with named inputs and outputs."""

import contextlib
import os
import sys

import torch
from torch import nn

from edgediff import atomic
from edgediff.errors import EdgediffError
from edgediff.quant import recipes

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
                  recipe: str = "fp32") -> None:
  """Writes `module` as a .tflite under `recipe`: fp32 or fp16 by litert-torch alone, the
  uncalibrated int8 recipes by ai-edge-quantizer on the converted model, in memory (the
  calibrated ones read an fp32 file: see edgediff.quant.tflite_static)."""
  wrapped = NamedIO(module, feeds.keys(), output_names).eval()
  import litert_torch

  int8 = recipe in ("int8_weight_only", "int8_dynamic")
  with contextlib.redirect_stdout(sys.stderr):  # litert-torch prints progress to stdout
    edge_model = litert_torch.convert(
        wrapped, sample_kwargs=dict(feeds),
        quant_config=None if int8 else recipes.tflite_quant_config(recipe))
    if int8:
      quantized = recipes.quantize_tflite(recipe, edge_model.model_content())
      del edge_model  # the float model, before the quantized one is written
      atomic.write_bytes(path, quantized)
    else:
      edge_model.export(path)


# Buffers at file offsets and unset legacy op codes, as ai-edge-quantizer writes them:
PLACEHOLDER_FOR_GREATER_OP_CODES = 127  # the schema's deprecated_builtin_code for codes > 127
BUFFER_ALIGNMENT = 16  # as the TFLite schema's force_align on Buffer.data


def normalize(path: str) -> bool:
  """Rewrites the .tflite at `path` so that every reader sees what the newest one does:
  weights inline in the flatbuffer and every operator code's `deprecated_builtin_code` set.
  Returns whether the file changed; its numbers do not.

  ai-edge-quantizer stores buffers over 256 KiB after the flatbuffer, at file offsets (a
  format extension meant for models over 2 GB), and leaves `deprecated_builtin_code` at 0:
  readers of the schema before v3a read only that field and so take QUANTIZE and
  DEQUANTIZE for ADD, and older GPU-delegate analyzers flag the ops whose weights sit at
  offsets. Files of 2 GB and more must keep their offsets and are left alone.
  """
  import mmap

  if os.path.getsize(path) >= FLATBUFFER_LIMIT:
    return False
  # The file mapped, not read: the buffers are views into it, and the one copy held is the
  # builder's (a 1.7 GB fp16 SD-1.5 UNet adds 1.7 GB, not three times that).
  with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
    packed = _inlined(data)  # its views into the mapping are gone when it returns
  if packed is None:
    return False
  atomic.write_bytes(path, packed)
  return True


def _inlined(data) -> memoryview | None:
  """The flatbuffer in `data` packed again with its buffers inline and legacy op codes set;
  None when it already is."""
  import flatbuffers
  import numpy as np
  from ai_edge_litert import schema_py_generated as schema

  model = schema.ModelT.InitFromPackedBuf(data, 0)
  changed = False
  for code in model.operatorCodes or []:
    legacy = min(code.builtinCode, PLACEHOLDER_FOR_GREATER_OP_CODES)
    if code.deprecatedBuiltinCode != legacy:
      code.deprecatedBuiltinCode, changed = legacy, True
  aligned = _aligned_buffer_class()
  for buffer in model.buffers or []:
    if buffer.offset > 1:  # 1 marks "at an offset, not yet placed" while a writer works
      buffer.data = np.frombuffer(data, np.uint8, count=buffer.size, offset=buffer.offset)
      buffer.offset, buffer.size, changed = 0, 0, True
    buffer.__class__ = aligned
  if not changed:
    return None
  builder = flatbuffers.Builder(len(data) + 1024)
  builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
  return memoryview(builder.Bytes)[builder.Head():]


def _aligned_buffer_class():
  from ai_edge_litert import schema_py_generated as schema

  class AlignedBuffer(schema.BufferT):
    """Packs its bytes 16-byte aligned, as TFLite's own converter does (the generated
    BufferT.Pack aligns uint8 data to 1 byte, which kernels reading floats in place may
    not accept)."""

    def Pack(self, builder):
      if self.data is None or not len(self.data):
        return super().Pack(builder)
      payload = self.data.tobytes()
      builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
      builder.head -= len(payload)
      builder.Bytes[builder.head:builder.head + len(payload)] = payload
      vector = builder.EndVector()
      schema.BufferStart(builder)
      schema.BufferAddData(builder, vector)
      return schema.BufferEnd(builder)

  return AlignedBuffer
