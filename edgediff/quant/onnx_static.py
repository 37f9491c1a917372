"""Calibrated ONNX recipes (QDQ, per-channel int8 weights), with sensitivity-driven fallback:
int8_static (W8A8) and w8a16 (uint16 activations, at opset 21, which 16-bit QDQ needs).

onnxruntime.quantization calibrates activation ranges on the recorded diffusion data. When
the result misses the parity gate, each quantized activation is compared with itself after
its QuantizeLinear and DequantizeLinear on a calibration sample (the gate's stay held out; as
onnxruntime's qdq_loss_debug does, in bounded memory), and edgediff.quant.fallback keeps the
nodes with the lowest signal-to-quantization-noise ratio in float, a few at a time (they
compute in float from per-channel uint8 weights: `_weight_only`). The fallback list, with
each node's SQNR, goes into the manifest.
"""

import os
import tempfile

import numpy as np
import onnx

from edgediff import memory, onnx_files, runtimes
from edgediff.quant import calibration, fallback


def _Reader(feeds):
  """A CalibrationDataReader over recorded feeds; `set_range` limits it to a few, so that a
  calibrator's `collect_data` runs one sample at a time."""
  from onnxruntime.quantization import CalibrationDataReader

  class Reader(CalibrationDataReader):
    def __init__(self, feeds):
      self._feeds = list(feeds)
      self.set_range(0, len(self._feeds))

    def get_next(self):
      return next(self._iter, None)

    def rewind(self):
      self.set_range(0, len(self._feeds))

    def __len__(self):
      return len(self._feeds)

    def set_range(self, start_index: int, end_index: int):
      self._iter = iter(self._feeds[start_index:end_index])

  return Reader(feeds)


def _unique_initializers(src: str, dst: str) -> None:
  """Gives every initializer use its own copy: onnxruntime's static quantizer refuses a
  weight shared between nodes ("Quantization parameter shared mode is not supported for
  weight yet"), which the dynamo exporter produces."""
  model = onnx.load(src)
  graph = model.graph
  inits = {i.name: i for i in graph.initializer}
  used = set()
  for node in graph.node:
    for k, name in enumerate(node.input):
      if name in inits:
        if name in used:
          copy = onnx.TensorProto()
          copy.CopyFrom(inits[name])
          copy.name = f"{name}__{node.name or k}_{len(used)}"
          graph.initializer.append(copy)
          node.input[k] = copy.name
        used.add(copy.name if name in used else name)
  onnx.save(model, dst, save_as_external_data=_needs_external_data(model),
            location=os.path.basename(dst) + ".data")


def _needs_external_data(model) -> bool:
  # A protobuf cannot exceed 2 GB: past export's own line, keep the weights beside it.
  return onnx_files.needs_external_data(sum(len(i.raw_data) for i in model.graph.initializer))

# The fallback ranks nodes on this many calibration samples (the gate's stay held out).
SENSITIVITY_SAMPLES = 1


def _calibrate(fp32_path, calib, cache_path) -> None:
  """Each activation's min and max over `calib`, written to onnxruntime's calibration cache
  at `cache_path`, which quantize_static then reads instead of calibrating.

  onnxruntime's MinMax calibrator, as quantize_static runs it, but in less memory:
  quantize_static calibrates while holding its own loaded model (and a copy, when it raises
  the opset), the calibrator keeps the model it augmented, and the session's arena keeps its
  high-water mark. md's UNet peaked at 12.2 GB in that phase. Here the calibrator's model is
  dropped once the augmented copy is on disk, and the session runs without the arena:
  4.1 GB. One sample per call (as CalibStridedMinMax 1): the calibrator otherwise keeps the
  reduced outputs of every sample until it merges them.
  """
  import gc

  import onnxruntime as ort
  from onnxruntime.quantization import calibrate
  from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

  with tempfile.TemporaryDirectory(dir=os.path.dirname(cache_path)) as tmp:
    augmented = os.path.join(tmp, "augmented.onnx")
    # quantize_static's own default: every op type it can quantize.
    calibrator = calibrate.MinMaxCalibrater(
        fp32_path, sorted(set(QLinearOpsRegistry) | set(QDQRegistry)), augmented,
        use_external_data_format=os.path.isfile(fp32_path + ".data"))
    calibrator.augment_graph()
    calibrator.model = None  # on disk now; collect_data and compute_data do not read it
    gc.collect()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    calibrator.infer_session = ort.InferenceSession(augmented, options,
                                                    providers=["CPUExecutionProvider"])
    reader = _Reader(calib)
    for i in range(len(calib)):
      reader.set_range(i, i + 1)
      calibrator.collect_data(reader)
    calibrate.save_tensors_data(calibrator.compute_data(), cache_path)


def _clear(path: str) -> None:
  """Removes the model at `path` and its external data before it is written again.

  onnx appends external data to an existing file: a second round would leave the first
  round's weights in `path`.data as dead bytes (md's UNet: 2.1 GB after 3 rounds, of which
  1.0 GB referenced)."""
  for stale in (path, path + ".data"):
    if os.path.exists(stale):
      os.remove(stale)


def _quantize(fp32_path, path, recipe, calib, exclude, cache_path, tables=()):
  """Calibrates (once: the ranges go to `cache_path` and later rounds reuse them) and writes
  the QDQ model.

  `tables`: initializers that Gather reads (a token embedding table). onnxruntime quantizes
  those with the activation type, so w8a16 would store CLIP's 49408 x 768 table in 16 bits
  (76 MB of SD-1.5's text encoder); they are overridden to 8 bits like the other weights.
  """
  from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

  _clear(path)
  # uint8 weights, as int8_static's activations. With int8 weights, onnxruntime's x86 kernels on
  # CPUs without VNNI (AVX2, AVX-512F) multiply u8 by s8 into saturating 16-bit sums: on
  # this 2-core AVX2 host the shapes decoder came out at 16 dB before any fallback, and at
  # 30.3 dB with u8 weights. u8 weights run on every CPU onnxruntime supports.
  activations = QuantType.QUInt16 if recipe == "w8a16" else QuantType.QUInt8
  if not os.path.isfile(cache_path):
    _calibrate(fp32_path, calib, cache_path)
  quantize_static(fp32_path, path, None, quant_format=QuantFormat.QDQ,  # ranges from the cache
                  per_channel=True, activation_type=activations,
                  weight_type=QuantType.QUInt8, nodes_to_exclude=list(exclude),
                  use_external_data_format=os.path.isfile(fp32_path + ".data"),
                  extra_options={"TensorQuantOverrides": {
                      t: [{"quant_type": QuantType.QUInt8}] for t in tables}},
                  calibration_cache_path=cache_path)
  if exclude:
    _weight_only(path, set(exclude))


def _weight_axis(node, weight) -> int | None:
  """The output-channel axis of `node`'s weight (its input 1), as onnxruntime's QDQ
  quantizer takes it per channel; None for a node or weight it would not quantize so."""
  if node.op_type == "Conv":
    return 0
  if node.op_type == "ConvTranspose":
    return 1
  if node.op_type == "MatMul" and len(weight.dims) == 2:
    return 1
  if node.op_type == "Gemm":
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return 0 if trans_b else 1
  return None


def _weight_only(path: str, nodes: set[str]) -> None:
  """Rewrites the QDQ model at `path` so that the Conv, MatMul and Gemm `nodes` that fallback
  keeps in float read per-channel uint8 weights through a DequantizeLinear (as quantized
  nodes do) instead of fp32 ones: they still compute in float, from int8 weights.

  quantize_static has no per-node weight-only setting: its excluded nodes keep fp32
  weights, which left md's UNet at 80% of the fp32 bytes with 393 nodes in float. Each
  weight is quantized by onnxruntime's own per-tensor helper, one channel at a time, as its
  per-channel quantizer does.
  """
  from onnx import TensorProto, helper, numpy_helper
  from onnxruntime.quantization.quant_utils import quantize_data

  model = onnx.load(path)  # with its external data: the weights are rewritten
  graph = model.graph
  inits = {i.name: i for i in graph.initializer}
  replaced, added, dequantize = set(), [], []
  for node in graph.node:
    if node.name not in nodes or len(node.input) < 2:
      continue
    weight = inits.get(node.input[1])
    if weight is None or weight.data_type != TensorProto.FLOAT or weight.name in replaced:
      continue
    axis = _weight_axis(node, weight)
    if axis is None:
      continue
    w = numpy_helper.to_array(weight)
    zero_points, scales, channels = [], [], []
    for c in range(w.shape[axis]):
      channel = np.take(w, c, axis)
      zp, scale, q = quantize_data(channel.ravel(), TensorProto.UINT8, False)  # asymmetric u8
      zero_points.append(zp)
      scales.append(scale)
      channels.append(np.expand_dims(q.reshape(channel.shape), axis))
    name = weight.name
    added += [numpy_helper.from_array(np.concatenate(channels, axis), name + "_weight_q"),
              numpy_helper.from_array(np.array(scales, np.float32), name + "_weight_scale"),
              numpy_helper.from_array(np.array(zero_points, np.uint8), name + "_weight_zp")]
    dequantize.append(helper.make_node(
        "DequantizeLinear", [name + "_weight_q", name + "_weight_scale", name + "_weight_zp"],
        [name + "_weight_dq"], name=name + "_weight_DequantizeLinear", axis=axis))
    node.input[1] = name + "_weight_dq"
    replaced.add(name)
  if not replaced:
    return
  still_read = {i for n in graph.node for i in n.input}
  kept = [i for i in graph.initializer if i.name not in replaced or i.name in still_read]
  del graph.initializer[:]
  graph.initializer.extend(kept + added)
  # A DequantizeLinear ahead of everything: it reads only initializers.
  nodes_after = list(graph.node)
  del graph.node[:]
  graph.node.extend(dequantize + nodes_after)
  external = os.path.isfile(path + ".data")
  _clear(path)
  onnx.save(model, path, save_as_external_data=external,
            location=os.path.basename(path) + ".data")


def _qdq_pairs(graph) -> list[tuple[str, str]]:
  """(activation, the same after its QuantizeLinear and DequantizeLinear) for every
  activation the QDQ graph quantizes."""
  weights = {i.name for i in graph.initializer}
  readers: dict[str, list] = {}
  for node in graph.node:
    for name in node.input:
      readers.setdefault(name, []).append(node)
  pairs = []
  for q in graph.node:
    if q.op_type != "QuantizeLinear" or q.input[0] in weights:
      continue
    dq = [n for n in readers.get(q.output[0], []) if n.op_type == "DequantizeLinear"]
    if dq:
      pairs.append((q.input[0], dq[0].output[0]))
  return pairs


def _pair_bytes(model, pairs) -> list[int]:
  """Bytes of each pair (two float32 tensors) from shape inference; a shape it leaves
  unknown counts as a whole chunk."""
  inferred = onnx.shape_inference.infer_shapes(model).graph
  shapes = {v.name: v.type.tensor_type.shape for v in (*inferred.value_info, *inferred.input,
                                                        *inferred.output)}
  out = []
  for pre, _ in pairs:
    dims = [d.dim_value for d in shapes[pre].dim] if pre in shapes else []
    known = dims and all(d > 0 for d in dims)
    out.append(2 * 4 * int(np.prod(dims)) if known else memory.RANKING_CHUNK_BYTES)
  return out


def _node_sqnr(fp32_path, qdq_path, feeds) -> dict[str, float]:
  """SQNR (dB) of each quantized node's output on `feeds`: the activation against itself
  after its QuantizeLinear and DequantizeLinear in the QDQ model, as onnxruntime's
  qdq_loss_debug computes it (its `qdq_err`).

  qdq_loss_debug runs the float and the QDQ model with every tensor a graph output and keeps
  both sets for every feed: md's decoder at 512 px took its export from 8 to 19 GB. Here the
  pairs are read memory.RANKING_CHUNK_BYTES at a time, each chunk by a copy of the QDQ graph
  (beside it, sharing its external data file) that outputs them, and only their sums of
  squares are kept."""
  import onnxruntime as ort
  from onnxruntime.quantization.quant_utils import QUANT_INPUT_SUFFIX

  model = onnx.load(qdq_path, load_external_data=False)
  pairs = _qdq_pairs(model.graph)
  sizes = _pair_bytes(model, pairs)
  producers = {o: n.name for n in onnx.load(fp32_path, load_external_data=False).graph.node
               for o in n.output}
  options = ort.SessionOptions()
  # The graph as written: fused, a QuantizeLinear and DequantizeLinear pair has no output.
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
  signal: dict[str, float] = {}
  noise: dict[str, float] = {}
  chunks = fallback.chunks(pairs, sizes)
  copy = qdq_path + ".ranking.onnx"
  try:
    for chunk in chunks:
      augmented = onnx.ModelProto()
      augmented.CopyFrom(model)
      names = list(dict.fromkeys(t for pair in chunk for t in pair))
      for name in names:
        augmented.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
      onnx.save(augmented, copy)
      del augmented
      session = ort.InferenceSession(copy, options, providers=["CPUExecutionProvider"])
      for feed in feeds:
        values = dict(zip(names, session.run(names, feed)))
        for pre, post in chunk:
          x = values[pre].astype(np.float64)
          signal[pre] = signal.get(pre, 0.0) + float(np.square(x).sum())
          noise[pre] = noise.get(pre, 0.0) + float(np.square(x - values[post]).sum())
        del values
      del session
  finally:
    if os.path.exists(copy):
      os.remove(copy)
  out = {}
  for tensor, power in signal.items():
    # A graph output's activation is renamed where a QuantizeLinear reads it.
    node = producers.get(tensor) or producers.get(tensor.removesuffix(QUANT_INPUT_SUFFIX))
    if not node or noise[tensor] == 0:
      # Not a node's output, or left exactly as it was (such as a relu attention's all-zero
      # scores, which qdq_loss_debug would report as 0 dB).
      continue
    if power > np.finfo(np.float32).max:
      # A norm beyond float32, as when a causal mask (float32's minimum) is added to
      # attention scores: no int8 range holds both, and softmax then sees garbage. Such a
      # node ranks first (onnxruntime's float32 SQNR is not finite there).
      value = -np.inf
    else:
      value = 10 * float(np.log10(power / noise[tensor])) if power else -np.inf
    out[node] = min(out.get(node, np.inf), value)
  return out


def _with_consumers(graph, nodes: list[str]) -> list[str]:
  """`nodes` and every node that reads their outputs: onnxruntime quantizes a tensor on the
  input of any quantized node that reads it, so keeping a node's output in float takes its
  consumers out of quantization too."""
  wanted = set(nodes)
  outputs = {o for n in graph.node if n.name in wanted for o in n.output}
  return list(nodes) + [n.name for n in graph.node
                        if n.name not in wanted and outputs & set(n.input)]


def quantize_with_fallback(fp32_path: str, path: str, recipe: str, calib, samples, references,
                           output, thresholds) -> dict:
  """Writes `path`; returns {"fallback": [{op, sqnr_db}], "rounds": n}."""
  with tempfile.TemporaryDirectory() as tmp:
    unique = os.path.join(tmp, "unique.onnx")
    _unique_initializers(fp32_path, unique)

    graph = onnx.load(unique, load_external_data=False).graph

    cache = os.path.join(tmp, "ranges.json")

    initializers = {i.name for i in graph.initializer}
    tables = [n.input[0] for n in graph.node
              if n.op_type == "Gather" and n.input[0] in initializers]

    def quantize(excluded):
      _quantize(unique, path, recipe, calib, _with_consumers(graph, excluded), cache, tables)
      return runtimes.onnx_runner(path)

    ranked_on = calibration.spread(calib, SENSITIVITY_SAMPLES)
    return fallback.quantize_with_fallback(
        quantize, lambda: _node_sqnr(unique, path, ranked_on), samples, references, output,
        thresholds)
