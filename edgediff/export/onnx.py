"""PyTorch -> ONNX: torch.onnx's dynamo exporter at opset 18, onnxslim, onnx.checker."""

import contextlib
import os
import sys

import torch
from torch import nn

from edgediff import onnx_files
from edgediff.onnx_files import external_data_files

OPSET = 18  # the dynamo exporter's output is invalid at opset 17
# onnxslim loads the whole model and writes a rewritten copy, so a model of this size or more
# is left as exported: two copies of a full-size UNet in memory (md-lite's 1.1 GB took the
# export to an 11 GB peak) cost more than the folded shape arithmetic saves.
SLIM_MAX_BYTES = 1_000_000_000


def slims(param_bytes_: int) -> bool:
  """Whether export_onnx simplifies a model with this many bytes of weights."""
  return param_bytes_ < SLIM_MAX_BYTES


def param_bytes(module: nn.Module) -> int:
  return sum(p.numel() * p.element_size() for p in module.parameters())


def export_onnx(module: nn.Module, feeds: dict[str, torch.Tensor], output_names, path: str) -> None:
  """Writes `path` (and `path`.data for a large model); the caller makes it atomic."""
  import onnx
  import onnxslim

  weights = param_bytes(module)
  external = onnx_files.needs_external_data(weights)
  with contextlib.redirect_stdout(sys.stderr):  # keep stdout for --json
    program = torch.onnx.export(
        module, tuple(feeds.values()), dynamo=True, opset_version=OPSET,
        input_names=list(feeds), output_names=list(output_names), verbose=False)
    program.save(path, external_data=external)
    del program
  if slims(weights) and not external:
    # onnxslim folds the exporter's shape arithmetic (fewer Reshape/Gemm chains).
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
      onnxslim.slim(path, path)  # prints a summary table: not for the user
  else:
    # The exporter's value_info (shapes of intermediate tensors, which onnxslim drops) goes
    # stale under rewrites: onnxruntime's quantize_dynamic turns a Gemm into a MatMul with
    # a transposed weight, then its shape inference refuses the old shapes ("Inferred
    # shape and existing shape differ"). They are optional: runtimes infer them.
    model = onnx.load(path, load_external_data=False)  # the weights stay where they are
    del model.graph.value_info[:]
    onnx.save(model, path)
    del model
  onnx.checker.check_model(path, full_check=not external)


# onnxruntime before 1.18 refuses IR version 10, which torch.onnx writes; IR 10 adds only the
# 4-bit and other new types of opset 21, and nothing edgediff writes at opset 18 uses them.
IR_VERSION = 9


# QDQ models are declared at opset 19: onnx's reference evaluator (1.23) has no
# DequantizeLinear below 19, so a QDQ model at 18 runs only in onnxruntime.
QDQ_OPSET = 19


def raise_opset(path: str, opset: int) -> None:
  """Declares the default domain's opset as `opset` in the model at `path` (weights stay
  where they are). Only from 18 to 19: opset 19 extends 18's ops (float8 types, Pad's wrap
  mode, Resize's half_pixel_symmetric, AveragePool's dilations) and changes nothing that a
  graph at 18 can say, so it computes the same."""
  import onnx

  model = onnx.load(path, load_external_data=False)
  for entry in model.opset_import:
    if entry.domain in ("", "ai.onnx"):
      if opset != QDQ_OPSET or not OPSET <= entry.version <= opset:
        raise ValueError(f"{path}: opset {entry.version} cannot be declared {opset} as is")
      entry.version = opset
  onnx.save(model, path)
  del model


def check(path: str) -> None:
  """onnx.checker on the model at `path`, with shape inference (its full check) unless its
  weights are external data, which the full check would load whole."""
  import onnx

  onnx.checker.check_model(path, full_check=not external_data_files(path))


def set_ir_version(path: str) -> None:
  """Marks the model at `path` as IR_VERSION, in place, if it says more.

  The field is patched in the file rather than through onnx.load/save, which would hold a
  copy of a full-size model: ir_version is the ModelProto's field 1, which protobuf writes
  first, as the tag 0x08 and a one-byte varint, so the file keeps its length.
  """
  with open(path, "r+b") as f:
    tag, version = f.read(2)
    if tag != 0x08 or version > 0x7F:
      raise ValueError(f"{path}: no ir_version at the start of the ONNX file")
    if version > IR_VERSION:
      f.seek(1)
      f.write(bytes([IR_VERSION]))


def export_ort(path: str) -> str:
  """Writes the .ort mobile format beside `path` (runtime optimizations keep fp16 small)."""
  import pathlib
  from onnxruntime.tools import convert_onnx_models_to_ort as to_ort

  with contextlib.redirect_stdout(sys.stderr):
    to_ort.convert_onnx_models_to_ort(
        pathlib.Path(path), output_dir=pathlib.Path(os.path.dirname(path)),
        optimization_styles=[to_ort.OptimizationStyle.Runtime])
  stem = os.path.splitext(path)[0]
  written = stem + ".with_runtime_opt.ort"  # onnxruntime names it after the style
  if not os.path.isfile(written):
    raise RuntimeError(f"{path}: onnxruntime wrote no .ort file")
  os.replace(written, stem + ".ort")
  return stem + ".ort"
