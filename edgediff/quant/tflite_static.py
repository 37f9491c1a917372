"""Calibrated TFLite recipes with ai-edge-quantizer: int8_static (W8A8) and w8a16.

The fp32 .tflite from litert-torch is calibrated on the recorded diffusion data (the same
calibration.npz that feeds onnxruntime) and quantized with per-channel int8 weights and int8
or int16 activations. When the result misses the parity gate, ai-edge-quantizer's validate
compares every intermediate tensor of the quantized model with the float one on the same
inputs, and edgediff.quant.fallback keeps the ops whose outputs have the lowest
signal-to-noise ratio in float, a few at a time. The fallback list, with each op's SNR, goes
into the manifest. Inputs and outputs stay float.
"""

import contextlib
import io
import re
import sys

import numpy as np

from edgediff import atomic
from edgediff.export import runtimes
from edgediff.quant import aeq_workaround, fallback

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
  tensors = _ops_touching(fp32_path, excluded)
  if tensors:  # a later, narrower scope overrides '.*'
    # An op's scope is its output tensor names, each followed by ';'. One pattern for all:
    # the quantizer searches every scope pattern for every op.
    alternatives = "|".join(re.escape(t) for t in tensors)
    qt.update_quantization_recipe(
        regex=f"(^|;)({alternatives});", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
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
              calibrated: dict):
  """Quantizes with `excluded` kept in float. Calibration runs once, on the first call
  (nothing excluded yet, so every tensor gets its range: the quantizer records ranges only
  for the ops it will quantize), and its result is kept in `calibrated`."""
  qt = _quantizer(fp32_path, recipe, excluded)
  with contextlib.redirect_stdout(sys.stderr):  # its progress report goes to stdout
    if "result" not in calibrated:
      calibrated["result"] = _calibrate(fp32_path, qt, calib)
    quantized = qt.quantize(calibrated["result"], enable_progress_report=False)
  atomic.write_bytes(path, bytes(quantized.quantized_model))
  return qt


def _tensor_snr(qt, feeds, peaks: dict[str, float]) -> dict[str, float]:
  """SNR (dB) of each intermediate tensor of the quantized model against float.

  ai-edge-quantizer's SNR is the power ratio mean(float^2) / mean((quantized - float)^2).
  `peaks` is the float model's max |x| per tensor over `feeds` (_float_peaks).
  """
  from ai_edge_quantizer.utils import validation_utils

  with contextlib.redirect_stdout(sys.stderr):
    result = qt.validate({_SIGNATURE: feeds}, error_metrics=[
        validation_utils.ValidationErrorMetric.SNR], num_threads=1)
  tensors = result.get_signature_comparison_result(_SIGNATURE).intermediate_tensors
  out = {}
  for name, metrics in tensors.items():
    value = metrics.get("snr")
    if value is None or value == np.inf or peaks.get(name) == 0:
      continue  # no error at all, or a tensor that is all zeros in float (0/0 is NaN)
    # Otherwise NaN: both powers overflowed float32, as when a causal mask (float32's
    # minimum) is added to attention scores; no int8 range holds both, and softmax then
    # sees garbage. Such a tensor, like one whose signal is lost entirely (0), ranks first.
    out[name] = 10 * float(np.log10(value)) if np.isfinite(value) and value > 0 else -np.inf
  return out


def _float_peaks(fp32_path: str, feeds: list[dict]) -> dict[str, float]:
  """max |x| of every tensor of the float model over `feeds`."""
  from ai_edge_litert import interpreter as litert

  interp = litert.Interpreter(model_path=fp32_path, experimental_preserve_all_tensors=True)
  run = interp.get_signature_runner()
  peaks: dict[str, float] = {}
  for f in feeds:
    run(**f)
    for d in interp.get_tensor_details():
      try:
        peak = float(np.abs(interp.get_tensor(d["index"])).max(initial=0))
      except ValueError:  # a tensor with no data (e.g. an unused optional input)
        continue
      peaks[d["name"]] = max(peak, peaks.get(d["name"], 0.0))
  return peaks


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


def quantize_with_fallback(fp32_path: str, path: str, recipe: str, calib, samples, references,
                           output: str, thresholds) -> dict:
  """Writes `path`; returns {"fallback": [{tensor, snr_db}], "rounds": n}."""
  last, calibrated = {}, {}

  def quantize(excluded):
    last["qt"] = _quantize(fp32_path, path, recipe, calib, excluded, calibrated)
    return runtimes.tflite_runner(path)

  def sensitivity():
    if "peaks" not in last:  # the float model's, the same every round
      last["peaks"] = _float_peaks(fp32_path, samples)
    return _local_snr(fp32_path, _tensor_snr(last["qt"], samples, last["peaks"]))

  return fallback.quantize_with_fallback(quantize, sensitivity, samples, references, output,
                                         thresholds, key="tensor")
