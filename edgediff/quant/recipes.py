"""Named quantization recipes: one table (`TABLE`) of what each is, how it is gated and
where it is refused, read by the code, the CLI's choices and the benchmarks.
The same names are used in file paths and manifests.
"""

import contextlib
import dataclasses
import os
import sys

from edgediff.errors import EdgediffError
from edgediff.metrics import Thresholds

FORMATS = ("onnx", "tflite")


@dataclasses.dataclass(frozen=True)
class Recipe:
  name: str
  summary: str
  # The component gate (worst sample), set between what real artifacts of the shipped model
  # score and what wrong outputs score (benchmarks/gate_metrics.py; the README's table):
  # the reference plus Gaussian noise at 0.1x its standard deviation gives SNR 19.6-20.0 dB,
  # Pearson <= 0.995 and SSIM 0.983, and must fail every recipe's gate; the int8 artifacts
  # that are right score SNR >= 25.1 dB, Pearson >= 0.9986, SSIM >= 0.9969. fp32 differs
  # from PyTorch by float reassociation only (SNR >= 114 dB), fp16 by its rounding (>= 57).
  thresholds: Thresholds
  # The end-to-end gate: minimum image PSNR (dB) against PyTorch fp32 of the mean over
  # prompts and of the worst prompt. A mean can hide one visibly broken image (the shapes
  # model's TFLite int8_static had a 32.0 dB mean over 32 prompts with its worst at 24.8 dB).
  e2e_psnr_db: float
  calibrated: bool = False  # needs a calibration recording
  refused: tuple[tuple[str, str], ...] = ()  # (format, why) where edgediff cannot make it


TABLE = {r.name: r for r in (
    Recipe("fp32", "float32, as PyTorch", Thresholds(80.0, 0.99999, 0.9999), 60.0),
    Recipe("fp16", "fp16 weights (and fp16 compute where the runtime has it), float inputs "
           "and outputs", Thresholds(40.0, 0.9999, 0.999), 40.0),
    Recipe("int8_weight_only", "int8 per-channel weights, dequantized to float for compute",
           Thresholds(25.0, 0.999, 0.99), 35.0,
           refused=(("onnx", "onnxruntime's CPU provider has no int8 weight-only kernels for "
                             "Conv; use int8_dynamic, or --fmt tflite"),)),
    Recipe("int8_dynamic", "int8 weights, activations quantized on the fly per tensor",
           Thresholds(22.0, 0.997, 0.99), 35.0),
    Recipe("int8_static", "int8 weights and activations from calibration (W8A8)",
           Thresholds(22.0, 0.997, 0.99), 30.0, calibrated=True),
    # ONNX: QDQ at opset 21 with uint16 activations, what Qualcomm's NPU (onnxruntime's QNN
    # provider) runs in integer; onnxruntime's CPU provider runs it in float between the
    # DequantizeLinear and QuantizeLinear nodes, no faster than fp32.
    Recipe("w8a16", "int8 weights, int16 activations from calibration",
           Thresholds(25.0, 0.999, 0.99), 35.0, calibrated=True),
)}
RECIPES = tuple(TABLE)
INT8_RECIPES = ("int8_dynamic", "int8_weight_only", "int8_static")  # --int8's, in this order
# What each runtime's path in edgediff can produce today.
SUPPORTED = {fmt: tuple(r for r in RECIPES if fmt not in dict(TABLE[r].refused))
             for fmt in FORMATS}
CALIBRATED = tuple(r for r in RECIPES if TABLE[r].calibrated)


def thresholds(recipe: str) -> Thresholds:
  return TABLE[recipe].thresholds


def check_recipe(fmt: str, recipe: str) -> None:
  if recipe not in TABLE:
    raise EdgediffError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
  why = dict(TABLE[recipe].refused).get(fmt)
  if why:
    raise EdgediffError(f"recipe {recipe} is not available for {fmt}: {why}")


def int8_candidates(fmt: str) -> tuple[str, ...]:
  return tuple(r for r in INT8_RECIPES if r in SUPPORTED[fmt])


# What `--int8 --target T` chooses among, for the phone's processor that will run the model:
# - cpu: the int8 recipes, the fastest here (XNNPACK or onnxruntime's CPU kernels);
# - gpu: fp16 and the int8 recipes: GPU delegates compute in fp16 whatever the file holds;
# - npu: full-integer recipes only (int8 or int16 activations from calibration), the only
#   ones NPUs and DSPs run.
TARGETS = ("cpu", "gpu", "npu")
FULL_INTEGER = ("int8_static", "w8a16")
# --target gpu: among artifacts the delegate runs equally whole, fp16 first (the GPU computes
# in fp16 anyway, so a smaller file buys no speed), then the most accurate.
GPU_PREFERENCE = ("fp16", "int8_weight_only", "w8a16", "int8_static", "int8_dynamic")


def target_candidates(fmt: str, target: str) -> tuple[str, ...]:
  if target == "npu":
    return tuple(r for r in FULL_INTEGER if r in SUPPORTED[fmt])
  if target == "gpu":
    return ("fp16", *int8_candidates(fmt))
  return int8_candidates(fmt)


def tflite_quant_config(recipe: str):
  """litert-torch's recipe for `recipe`, applied during conversion: fp16 only (None for
  fp32; the int8 recipes quantize the converted model, see quantize_tflite)."""
  if recipe == "fp32":
    return None
  if recipe != "fp16":
    raise EdgediffError(f"recipe {recipe} is not applied during TFLite conversion")
  from litert_torch.generative.quantize import quant_recipes

  return quant_recipes.full_fp16_recipe()


def quantize_tflite(recipe: str, model: bytes) -> bytes:
  """int8_weight_only or int8_dynamic of the float .tflite `model`, by ai-edge-quantizer.

  Weights are int8 per channel, as litert-torch's own recipes make them, except the
  FULLY_CONNECTED and EMBEDDING_LOOKUP weights of int8_dynamic, which are per tensor. TFLite
  runtimes that Android apps still bundle compute those two ops wrongly with per-channel
  weights and dynamic activations, and raise no error, because the file keeps the float op
  versions: tflite-runtime 2.14 returns a FULLY_CONNECTED's bias alone and a wrong
  EMBEDDING_LOOKUP, and TF 2.17 zeros from the lookup. The shapes text encoder gave 12.4 dB
  (cosine 0.04) in tflite-runtime 2.14 with per-channel weights. Convolutions stay per
  channel: per tensor there made the shapes UNet's output inf. int8_weight_only dequantizes
  its weights in the graph and computes in float, which every runtime gets right.
  """
  from ai_edge_quantizer import qtyping, quantizer
  from ai_edge_quantizer import recipe as aeq_recipe

  from edgediff.quant import aeq_workaround

  aeq_workaround.apply()  # full-size conv weights over 32 MiB
  qt = quantizer.Quantizer(model)
  if recipe == "int8_weight_only":
    qt.load_quantization_recipe(aeq_recipe.weight_only_wi8_afp32())
  elif recipe == "int8_dynamic":
    qt.load_quantization_recipe(aeq_recipe.dynamic_wi8_afp32())
    for op in (qtyping.TFLOperationName.FULLY_CONNECTED,
               qtyping.TFLOperationName.EMBEDDING_LOOKUP):
      qt.add_dynamic_config(".*", op, 8, qtyping.QuantGranularity.TENSORWISE)
  else:
    raise EdgediffError(f"recipe {recipe} is not an uncalibrated int8 TFLite recipe")
  return qt.quantize().quantized_model


def quantize_onnx(recipe: str, fp32_path: str, path: str) -> None:
  """Writes the `recipe` version of the fp32 model at `fp32_path` to `path`."""

  if recipe == "fp16":
    _onnx_fp16(fp32_path, path)
  elif recipe == "int8_dynamic":
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # u8 weights: onnxruntime's ConvInteger with s8 weights runs about 4x slower than fp32.
    with contextlib.redirect_stdout(sys.stderr):
      quantize_dynamic(fp32_path, path, weight_type=QuantType.QUInt8, per_channel=False)
  elif recipe == "int8_static":
    raise EdgediffError("int8_static needs calibration data: see edgediff.quant.onnx_static")
  else:
    raise EdgediffError(f"recipe {recipe} is not available for onnx")
  if not os.path.isfile(path):
    raise EdgediffError(f"{path}: onnxruntime wrote no {recipe} model")


def _onnx_fp16(fp32_path: str, path: str) -> None:
  """onnxruntime's float16 conversion, with float inputs and outputs (apps feed the same
  tensors whatever the recipe), made a valid graph again.

  The converter puts a Cast before each fp32-only consumer of an fp16 tensor, naming it
  after the tensor: a tensor that feeds two such consumers (the unsimplified graph of a
  full-size UNet feeds shape arithmetic like Range and Max from one value) gets two Casts
  with one name and one output, which onnxruntime refuses ("two nodes with same node
  name"). They compute the same thing, so one is kept. The Casts are also appended at the
  end of the node list, after their consumers, so the graph is sorted again.
  """
  import onnx
  from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

  from edgediff import onnx_files

  # The norms stay fp32, for two Casts per norm and no larger weights. InstanceNormalization
  # (GroupNorm, as the exporter writes it): its variance sums squares over a whole group,
  # which overflows fp16 in a runtime that computes the op in fp16 (onnx.reference: the
  # shapes decoder's first norm gave zeros, 15.5 dB). LayerNormalization: onnxruntime 1.17's
  # fp16 kernel is right on a session's first call only (the shapes text encoder: 81 dB,
  # then -39 dB on every later call); fp32, it gives 82-84 dB on every call.
  # The path, not a loaded model: given a ModelProto the converter infers shapes in memory,
  # which serialises the whole model and fails over protobuf's 2 GB (SD-1.5's UNet, 3.4 GB:
  # "Failed to serialize proto"); given a path it infers them file to file.
  model = convert_float_to_float16(
      fp32_path, keep_io_types=True,
      op_block_list=DEFAULT_OP_BLOCK_LIST + ["InstanceNormalization", "LayerNormalization"])
  graph = model.graph
  seen, kept = set(), []
  for node in graph.node:
    if node.op_type == "Cast":
      key = node.SerializeToString()
      if key in seen:
        continue
      seen.add(key)
    kept.append(node)
  sort_topologically(graph, kept)
  weights = sum(len(init.raw_data) for init in graph.initializer)
  external = onnx_files.needs_external_data(weights)
  onnx.save(model, path, save_as_external_data=external,
            location=os.path.basename(path) + ".data")
  del model
  onnx.checker.check_model(path, full_check=not external)


def sort_topologically(graph, nodes) -> None:
  """Replaces `graph`'s nodes with `nodes` in an order where every tensor is made before it
  is read, keeping the given order wherever it already is (Kahn's algorithm, lowest index
  first). Written here because onnx has no sort and onnxslim's graph surgeon rebuilds every
  initializer to do one (a second copy of a full-size model's weights)."""
  import heapq

  def reads(node):  # the node's inputs, and what its subgraphs read from this scope
    names = list(node.input)
    for attr in node.attribute:
      for sub in list(attr.g.node if attr.HasField("g") else []) + [
          n for g in attr.graphs for n in g.node]:
        names.extend(reads(sub))
    return names

  maker = {out: i for i, node in enumerate(nodes) for out in node.output if out}
  waiting = [0] * len(nodes)
  readers = [[] for _ in nodes]
  for i, node in enumerate(nodes):
    for name in set(reads(node)):
      if name in maker and maker[name] != i:
        waiting[i] += 1
        readers[maker[name]].append(i)
  ready = [i for i, n in enumerate(waiting) if n == 0]
  heapq.heapify(ready)
  order = []
  while ready:
    i = heapq.heappop(ready)
    order.append(nodes[i])
    for j in readers[i]:
      waiting[j] -= 1
      if waiting[j] == 0:
        heapq.heappush(ready, j)
  if len(order) != len(nodes):
    raise EdgediffError("the fp16 ONNX graph has a cycle: it cannot be sorted")
  copies = [type(n)() for n in order]
  for copy, node in zip(copies, order):
    copy.CopyFrom(node)
  del graph.node[:]
  graph.node.extend(copies)
