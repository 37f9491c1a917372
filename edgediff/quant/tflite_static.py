"""Calibrated TFLite recipes with ai-edge-quantizer: int8_static (W8A8) and w8a16.

The fp32 .tflite from litert-torch is calibrated on the recorded diffusion data (the same
calibration.npz that feeds onnxruntime) and quantized with per-channel int8 weights and int8
or int16 activations. When the result misses the parity gate, every op output of the
quantized model is compared with the float model's on a few calibration samples (not the
gate's, which stay held out), and edgediff.quant.fallback keeps the ops that add the most
error in float, a few at a time. The fallback list, with each op's SNR, goes
into the manifest. Inputs and outputs stay float, and int8_static keeps two kinds of tensor
in float from the start, by rule (`float_by_rule`): the normalisations' statistics and the
sinusoidal time features.
"""

import contextlib
import functools
import io
import os
import re
import sys
import tempfile

import numpy as np

from edgediff import atomic, runtimes, tflite_files
from edgediff.quant import aeq_workaround, calibration, fallback

_SIGNATURE = "serving_default"  # litert-torch's one signature


def _graph(fp32_path: str):
  """(tensor names by index, ops with their input and output indices) of a .tflite."""
  from ai_edge_litert import interpreter as litert

  interp = litert.Interpreter(model_path=fp32_path)
  names = {d["index"]: d["name"] for d in interp.get_tensor_details()}
  return names, interp._get_ops_details()  # the only API that lists an op's tensors


def _ops_touching(fp32_path: str, tensors: list[str]) -> list[str]:
  """Output names of the ops that produce or consume `tensors`.

  ai-edge-quantizer quantizes a tensor wherever an op that reads it is quantized: keeping
  a tensor in float takes its producer and all its consumers out of quantization.
  """
  if not tensors:
    return []
  names, ops = _graph(fp32_path)
  wanted, out = set(tensors), list(tensors)
  for op in ops:
    if wanted & {names.get(i) for i in op["inputs"]}:
      out += [names[i] for i in op["outputs"] if names.get(i) and names[i] not in out]
  return out


def _weighted_ops():
  from ai_edge_quantizer import qtyping

  names = qtyping.TFLOperationName
  return (names.CONV_2D, names.DEPTHWISE_CONV_2D, names.FULLY_CONNECTED, names.CONV_2D_TRANSPOSE)


def _quantizer(fp32_path: str, recipe: str, excluded: list[str]):
  from ai_edge_quantizer import algorithm_manager, qtyping, quantizer
  from ai_edge_quantizer import recipe as aeq_recipe

  aeq_workaround.apply()  # full-size conv weights over 32 MiB
  qt = quantizer.Quantizer(fp32_path)
  qt.load_quantization_recipe(
      aeq_recipe.static_wi8_ai8() if recipe == "int8_static" else aeq_recipe.static_wi8_ai16())
  # Float inputs and outputs: without this the graph's inputs and outputs become int8 too.
  for io_op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
    qt.update_quantization_recipe(regex=".*", operation_name=io_op,
                                  algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
  # The static recipes leave a token embedding table in float32 (CLIP's, 49408 x 768, was
  # 152 MB of SD-1.5's 238 MB int8_static text encoder): stored in int8 here, and
  # dequantized by a DEQUANTIZE op, so the lookup itself computes as before.
  qt.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.EMBEDDING_LOOKUP,
                            num_bits=8)
  tensors = _ops_touching(fp32_path, excluded)
  if tensors:  # a later, narrower scope overrides '.*'
    # An op's scope is its output tensor names, each followed by ';'. One pattern for all:
    # the quantizer searches every scope pattern for every op. Ops kept in float still store
    # their weights in int8, dequantized for them (a weight-only config): with fp32 weights
    # md's int8_static decoder was 59% of the fp32 bytes after fallback. On the shipped
    # model the gate's SNR after 4 rounds also rose, in one run each: UNet 13.1 to 22.2 dB,
    # decoder 10.1 to 15.7 dB (whose figure has moved as much between rankings before).
    alternatives = "|".join(re.escape(t) for t in tensors)
    scope = f"(^|;)({alternatives});"
    qt.update_quantization_recipe(
        regex=scope, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    for op in _weighted_ops():
      qt.add_weight_only_config(regex=scope, operation_name=op, num_bits=8)
  return qt


# A seeded subset of this many recorded samples (the same for every run, spread over prompts
# and timesteps) calibrates TFLite, which bounds its time at full size: each sample is one
# whole UNet run in the interpreter (seconds for md or SD-1.5 on 2 cores).
MAX_CALIBRATION_SAMPLES = 64


def calibration_subset(calib: list) -> list:
  if len(calib) <= MAX_CALIBRATION_SAMPLES:
    return list(calib)
  picked = np.random.default_rng(0).choice(len(calib), MAX_CALIBRATION_SAMPLES, replace=False)
  return [calib[i] for i in sorted(picked)]


def _calibrate(fp32_path: str, qt, calib) -> dict:
  """Each tensor's min and max over all of `calib`, in bounded memory.

  Two choices, each measured. Ranges: Quantizer.calibrate folds the samples together with a
  moving average that keeps 95% of the past at every sample, so its ranges stay near the
  first sample's and clip the others; a diffusion UNet's activations change range with the
  timestep, and on the shapes UNet that clipping held w8a16 (int16 activations) to 20 dB,
  against 28 dB with the true extremes. The quantizer's own min_max_update merges the
  samples instead, as onnxruntime's MinMax calibrator does. Memory: the default calibrator
  runs the interpreter with every intermediate tensor preserved (a full-size UNet's sum to
  several GB per sample, on top of the model); the profiler-based calibrator tracks min and
  max in C++ as each op runs, with the interpreter's usual memory reuse. On the shapes UNet
  it gives the same ranges for all 1276 tensors, 15x faster.
  """
  from ai_edge_quantizer import calibrator
  from ai_edge_quantizer.utils import qsv_utils

  calib_run = calibrator.Calibrator(
      fp32_path, num_threads=2, mode=calibrator.CalibrationMode.CALIBRATION_PROFILER_BASED,
      qsv_update_func=qsv_utils.min_max_update)
  with contextlib.redirect_stderr(io.StringIO()):  # its own progress bar
    calib_run.calibrate({_SIGNATURE: calib}, qt._recipe_manager)  # pylint: disable=protected-access
  return calib_run.get_model_qsvs()


def _quantize(fp32_path: str, path: str, recipe: str, calib, excluded: list[str],
              calibrated: dict) -> None:
  """Quantizes with `excluded`, and the tensors no range can hold (UNBOUNDED), kept in float.
  Calibration runs once, on the first call, with nothing excluded (every tensor gets its
  range: the quantizer records ranges only for the ops it will quantize), and its result is
  kept in `calibrated`."""
  with contextlib.redirect_stdout(sys.stderr):  # its progress report goes to stdout
    if "result" not in calibrated:
      calibrated["result"] = _calibrate(fp32_path, _quantizer(fp32_path, recipe, []), calib)
    unbounded = _unbounded(calibrated["result"])
    qt = _quantizer(fp32_path, recipe, sorted(set(excluded) | set(unbounded)))
    quantized = qt.quantize(calibrated["result"], enable_progress_report=False)
  del qt  # the float model and its unpacked form, before the file is written
  atomic.write_bytes(path, quantized.quantized_model)


# The fallback ranks ops on this many calibration samples, spread over the trajectory like
# the gate's (which are held out of both calibration and ranking).
SENSITIVITY_SAMPLES = 2
# Ranking compares each op output of the quantized model with the float model's. One call of
# a full-size model produces more than RAM holds (litert-torch's graph of SD-1.5's decoder at
# 512 px: 19.1 GiB; md's, with every tensor preserved, took its process from 4.9 to 12.2 GiB),
# so the tensors are read at most memory.RANKING_CHUNK_BYTES per call, and of each the
# ranking keeps a fixed sample of elements: an SNR's two sums estimated on 16384 elements
# (about 1% off, 0.05 dB, for noise-like error) rank ops as well as on millions, and the
# float model's samples stay in RAM (64 KiB per tensor and feed).
SAMPLED_ELEMENTS = 1 << 14


def _preserving_interpreter(path: str):
  """An interpreter that keeps every intermediate tensor, its model memory-mapped from
  `path` (ai-edge-quantizer's loads a bytes copy of the whole model)."""
  import warnings

  from ai_edge_litert import interpreter as litert

  with warnings.catch_warnings():  # "intended for debugging": preserving is the point here
    warnings.simplefilter("ignore", UserWarning)
    return litert.Interpreter(model_path=path, num_threads=2,
                              experimental_preserve_all_tensors=True)


def _nbytes(detail: dict) -> int:
  return int(np.prod(detail["shape"])) * np.dtype(detail["dtype"]).itemsize


@functools.lru_cache(maxsize=64)
def _sample_index(size: int) -> np.ndarray:
  """SAMPLED_ELEMENTS positions out of `size`, at random but the same for every tensor of
  that size (so a tensor's quantized and float samples line up): a stride would follow a
  tensor's layout and could see one channel only."""
  return np.sort(np.random.default_rng(size).choice(size, SAMPLED_ELEMENTS, replace=False))


def _sample(values: np.ndarray) -> np.ndarray:
  flat = np.asarray(values).reshape(-1)
  if flat.size > SAMPLED_ELEMENTS:
    flat = flat[_sample_index(flat.size)]
  return flat.astype(np.float32)


def _key(detail: dict) -> tuple:
  """A tensor's name and shape: a quantized tensor is compared with the float one of both
  (its samples are flat, and names are not unique in litert-torch's graphs)."""
  return detail["name"], tuple(int(n) for n in detail["shape"])


def _op_outputs(path: str, feeds: list[dict], keys: set[tuple] | None, folder: str):
  """Per feed, a sample (`_sample`) of each op output of the model at `path`, dequantized;
  and a sample of each of its float or quantized constants; each by `_key`. `keys`: only
  these (the float model's, in the quantized one); None: every float32 op output.

  The tensors are read memory.RANKING_CHUNK_BYTES at a time: by an interpreter that
  preserves all of them when they fit, otherwise, per chunk, by a copy of the model (under
  `folder`) that makes the chunk's tensors graph outputs, run on every feed."""
  from ai_edge_litert import interpreter as litert
  from ai_edge_quantizer.utils import tfl_interpreter_utils

  meta = litert.Interpreter(model_path=path)
  details = meta.get_tensor_details()
  produced = {int(i) for op in meta._get_ops_details() for i in op["outputs"]}
  inputs = {d["index"] for d in meta.get_input_details()}
  if keys is None:
    wanted = [d for d in details if d["index"] in produced and d["dtype"] == np.float32
              and np.all(d["shape"]) and d["index"] not in inputs]
  else:
    wanted = [d for d in details if d["index"] in produced and _key(d) in keys]
  constants = [d for d in details if d["index"] not in produced and d["index"] not in inputs
               and np.all(d["shape"]) and (d["dtype"] == np.float32 or
                                           tfl_interpreter_utils.has_quantization_params(d))]
  outputs: list[dict[tuple, np.ndarray]] = [{} for _ in feeds]
  fixed: dict[tuple, np.ndarray] = {}
  del meta
  chunks = fallback.chunks(wanted, [_nbytes(d) for d in wanted])
  for c, chunk in enumerate(chunks):
    if len(chunks) == 1:
      interp = _preserving_interpreter(path)
    else:
      copy = os.path.join(folder, f"chunk{c}.tflite")
      tflite_files.with_outputs(path, [d["index"] for d in chunk], copy)
      interp = litert.Interpreter(model_path=copy, num_threads=2)
    run = interp.get_signature_runner()
    for s, feed in enumerate(feeds):
      run(**feed)
      for d in chunk:
        outputs[s][_key(d)] = _sample(tfl_interpreter_utils.get_tensor_data(interp, d))
    if c == 0:
      for d in constants:
        try:
          fixed[_key(d)] = _sample(tfl_interpreter_utils.get_tensor_data(interp, d))
        except ValueError:  # a tensor with no data (e.g. an unused optional input)
          continue
    del run, interp
    if len(chunks) > 1:
      os.remove(copy)
  return outputs, fixed


class _FloatReference:
  """The float model's op outputs (sampled) on a few feeds, read once per export; `snr` then
  reads the same tensors of each round's quantized model and compares.

  ai-edge-quantizer's validate runs the float and the quantized model side by side with every
  intermediate tensor preserved, each interpreter loaded from a bytes copy of its model, and
  builds the next pair before the last is freed: at full size that held four models and four
  sets of activations at once (md's UNet: 21.3 GB). Here each model runs alone, a chunk of
  tensors at a time (`_op_outputs`).
  """

  def __init__(self, fp32_path: str, feeds: list[dict], folder: str):
    self.outputs, self.constants = _op_outputs(fp32_path, feeds, None, folder)
    self.feeds, self.folder = feeds, folder

  def snr(self, path: str) -> dict[str, float]:
    """SNR (dB) of each op output of the quantized model at `path` against float: the power
    ratio sum(float^2) / sum((quantized - float)^2) over the feeds (on each tensor's sampled
    elements), as ai-edge-quantizer's SNR metric per sample. Weights are compared too: a
    weight's own quantization error ranks the ops that read it."""
    got, got_constants = _op_outputs(path, self.feeds, set(self.outputs[0]), self.folder)
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    pairs = [(ref, got[s]) for s, ref in enumerate(self.outputs)]
    pairs.append((self.constants, got_constants))
    for ref, quantized in pairs:
      for key, values in quantized.items():
        if key not in ref:  # not the float model's (a constant the quantizer added)
          continue
        name = key[0]
        wide = ref[key].astype(np.float64)  # a causal mask's square overflows float32
        signal[name] = signal.get(name, 0.0) + float(np.square(wide).sum())
        noise[name] = noise.get(name, 0.0) + float(np.square(values - wide).sum())
    out = {}
    for name, power in signal.items():
      if noise[name] == 0 or power == 0:
        continue  # no error at all, or a tensor that is all zeros in float
      # Otherwise non-finite: the float tensor overflowed float32, as when a causal mask
      # (float32's minimum) is added to attention scores; no int8 range holds both, and
      # softmax then sees garbage. Such a tensor, like one whose signal is lost, ranks first.
      ratio = power / noise[name]
      out[name] = 10 * float(np.log10(ratio)) if np.isfinite(ratio) else -np.inf
    return out


def _local_snr(fp32_path: str, snr: dict[str, float]) -> dict[str, float]:
  """The SNR (dB) of the error each op adds, from the SNR of its output and inputs.

  validate compares each tensor of the quantized model with the float model's, so its error
  accumulates down the graph and the last ops would always rank worst. Assuming errors add
  as independent noise, an op's own noise-to-signal ratio is its output's minus its noisiest
  input's (inputs with no entry, such as the graph's inputs and constants, carry none).
  """
  names, ops = _graph(fp32_path)
  nsr = {n: 10 ** (-v / 10) for n, v in snr.items()}  # -inf dB: infinite
  out = {}
  for op in ops:
    for index in op["outputs"]:
      name = names.get(index)
      if name not in nsr:
        continue
      inherited = max((nsr.get(names.get(i), 0.0) for i in op["inputs"]), default=0.0)
      own = nsr[name] - inherited if np.isfinite(nsr[name]) else np.inf
      if own > 0:
        out[name] = -10 * float(np.log10(own))
  return out


# Kept in float from the first round of int8_static, by rule: on the shipped UNet the two
# rules took the SNR before any fallback (on the samples fallback stops on) from -4.0 to
# 10.0 dB, and the end-to-end image PSNR from 34.4 / 23.6 dB (mean / worst prompt) to 41.0 /
# 32.2 dB (README, "W8A8 on the shipped model"). Attention weights in float as well added
# nothing there.
#
# Norm statistics. litert-torch lowers LayerNorm and GroupNorm to elementwise ops: MEAN for
# the mean, SQUARED_DIFFERENCE (or SUB and a MUL of a tensor by itself) and another MEAN for
# the variance, ADD for epsilon, RSQRT for 1/std. In int8 these lose what a norm exists to
# keep: a variance spans the square of its input's range, and 1/std is largest where the
# variance is smallest. (onnxruntime keeps each norm one float op between int8 tensors.)
# Time features. A SIN's input is the timestep (0-999) times each frequency, up to ~1000
# radians: an int8 step of either range is several radians, and the features are noise.


def _upstream(ops, starts, stop=lambda op: False) -> set[int]:
  """`starts` and every tensor computed on the way to them: a walk back through producers
  that graph inputs and constants end, and any producer for which `stop(op)` holds (its
  output is kept)."""
  producers = {int(i): op for op in ops for i in op["outputs"]}
  out, todo = set(), [int(i) for i in starts]
  while todo:
    i = todo.pop()
    if i in out or i not in producers:
      continue
    out.add(i)
    if not stop(producers[i]):
      todo += [int(j) for j in producers[i]["inputs"]]
  return out


def norm_statistics(fp32_path: str) -> list[str]:
  """The tensors of `fp32_path` that hold a normalisation's statistics: every tensor on the
  way back from an RSQRT's output to the MEANs it is computed from, and the squares that a
  MEAN averages (a mean's own input is otherwise the activation being normalised)."""
  names, ops = _graph(fp32_path)
  rsqrt = [i for op in ops if op["op_name"] == "RSQRT" for i in op["outputs"]]
  found = _upstream(ops, rsqrt, stop=lambda op: op["op_name"] == "MEAN")
  producers = {int(i): op for op in ops for i in op["outputs"]}
  for op in ops:
    if op["op_name"] != "MEAN" or not found & {int(i) for i in op["outputs"]}:
      continue
    square = producers.get(int(op["inputs"][0]))
    if square and (square["op_name"] == "SQUARED_DIFFERENCE" or (
        square["op_name"] == "MUL" and len(set(square["inputs"])) == 1)):
      found.add(int(op["inputs"][0]))
  return sorted({names[i] for i in found if names.get(i)})


def time_features(fp32_path: str) -> list[str]:
  """The sinusoidal timestep features of `fp32_path`: the outputs of its SIN and COS ops and
  every tensor computed on the way to them from the graph's inputs."""
  names, ops = _graph(fp32_path)
  sinusoids = [i for op in ops if op["op_name"] in ("SIN", "COS") for i in op["outputs"]]
  return sorted({names[i] for i in _upstream(ops, sinusoids) if names.get(i)})


def float_by_rule(fp32_path: str, recipe: str) -> dict[str, list[str]]:
  """{rule: tensors} that `recipe` keeps in float from the first round (int8_static only:
  int16 activations hold both, and w8a16 passes without)."""
  if recipe != "int8_static":
    return {}
  return {"norm_statistics": norm_statistics(fp32_path),
          "time_features": time_features(fp32_path)}


# A tensor whose calibrated range reaches this far holds float32's extremes: a CLIP text
# encoder's causal mask (float32's minimum) added to its attention scores. No int8 or int16
# range can hold it, and LiteRT aborts the whole process (SIGABRT) on the first call of a
# model that quantizes it, before fallback could rank it: such tensors start in float.
UNBOUNDED = 1e30


def _unbounded(qsvs: dict) -> list[str]:
  return sorted(name for name, q in qsvs.items()
                if "min" in q and max(np.abs(q["min"]).max(), np.abs(q["max"]).max()) > UNBOUNDED)


def quantize_with_fallback(fp32_path: str, path: str, recipe: str, calib, samples, references,
                           output: str, thresholds) -> dict:
  """Writes `path`; returns {"fallback": [{op, sqnr_db}], "rounds": n,
  "unbounded_in_float": [tensor] (in float from the first round, see UNBOUNDED),
  "float_by_rule": {rule: how many tensors it keeps in float}}."""
  calibrated, reference = {}, {}
  ranked_on = calibration.spread(calib, SENSITIVITY_SAMPLES)
  rules = float_by_rule(fp32_path, recipe)
  by_rule = {t for tensors in rules.values() for t in tensors}

  def quantize(excluded):
    _quantize(fp32_path, path, recipe, calib, sorted(set(excluded) | by_rule), calibrated)
    return runtimes.tflite_runner(path)

  with tempfile.TemporaryDirectory(prefix=".tmp-float-", dir=os.path.dirname(path)) as folder:

    def sensitivity():
      if "float" not in reference:  # the float model's, the same every round
        reference["float"] = _FloatReference(fp32_path, ranked_on, folder)
      snr = _local_snr(fp32_path, reference["float"].snr(path))
      return {n: v for n, v in snr.items() if n not in by_rule}  # in float already

    info = fallback.quantize_with_fallback(quantize, sensitivity, samples, references, output,
                                           thresholds)
  info["unbounded_in_float"] = _unbounded(calibrated["result"])
  info["float_by_rule"] = {rule: len(tensors) for rule, tensors in rules.items()}
  return info
