"""A memory preflight: estimate an export's peak before the long work, and refuse what won't fit.

A process the kernel kills for memory tells the user nothing, so each component's export
is estimated from what it holds: the weights (bytes of its parameters) and one forward pass's
activations (every intermediate tensor of one call, counted on fake tensors: no memory, no
arithmetic). The factors below are fitted to peaks measured with /usr/bin/time on full-size
exports (md, md-lite, SD-1.5; benchmarks/export_full.py, README) and err on the high side.
"""

import dataclasses

import torch
from torch import nn

from edgediff.errors import EdgediffError

GB = 1024**3
BASE_BYTES = 1.5 * GB  # Python, torch, litert-torch and onnxruntime imported

# Peak per byte of fp32 weights while converting (and gating the result):
# - tflite: litert-torch lowers the module and serialises a flatbuffer, holding the exported
#   program, the lowered module and the flatbuffer at once (md UNet, 1.56 GB of weights:
#   8.0 GB fp32, 9.3 GB fp16; SD-1.5's, 3.44 GB: 18.5 GB fp16, 17.3-17.6 GB int8);
#   with lightweight_conversion md's fp16 is 6.6 GiB and int8_dynamic 6.0, SD-1.5's 14.6 and
#   13.4 GB: the factor stays fitted to the older runs, on the high side, until refitted);
# - onnx: the dynamo exporter and onnxruntime's session (md UNet, written with external
#   data and not simplified: 4.3 GB; md-lite's, 1.13 GB: 5.3 GB; SD-1.5's: 9.5 GB); onnxslim
#   rewrites a model in memory, so a simplified model costs more (md text encoder, 0.49 GB:
#   5.0 GB). Quantizing on top: the float16 converter holds the fp32 model and its fp16 copy
#   (md UNet: 9.8 GB), quantize_dynamic the fp32 model and the quantized one (md UNet 7.0 GB,
#   SD-1.5's 13.4 GB).
CONVERT_FACTOR = {"tflite": 5.0, "onnx": 2.8}
RECIPE_CONVERT_FACTOR = {("onnx", "fp16"): 5.5, ("onnx", "int8_dynamic"): 3.6}
SLIM_FACTOR = 7.0
# Calibrated recipes, on top of the module. TFLite: ai-edge-quantizer keeps the float model,
# its unpacked form and the quantized one; calibration runs one sample at a time (so about
# one call's activations are alive at once) and fallback's ranking is bounded on its own
# (RANKING_CHUNK_BYTES below). Fitted to the md UNet's TFLite int8_static export with 4
# fallback rounds (1.45 GiB of weights, 3.8 GiB of activations per call): 9.2 GB peak,
# estimated 10.9, when fallback still held every tensor of a call. ONNX: onnxruntime's
# quantizer and edgediff's calibration session (no arena, quant/onnx_static.py). Peaks
# measured (GiB), with weights and one call's activations: md's UNet (1.45, 3.78), 7.56 in
# the process that had exported the text encoder before it (4 fallback rounds), the decoder
# (0.04, 2.83) 6.07 in the same process after the UNet. Before calibration and ranking were
# bounded the same UNet peaked at 14.4, md-lite's (1.05, 2.88) at 14.0, and SD-1.5's decoder
# at 512 px (0.18, 7.47) was killed by the kernel at 21.1 GiB, all in qdq_loss_debug's
# ranking or quantize_static's calibration; bounded, that decoder peaked at 10.08 (one
# fallback round), over the 9.71 that one activation set estimated. These estimate md's UNet
# at 11.5 and that decoder at 10.4.
CALIBRATED_WEIGHT_COPIES = {"tflite": 3.5, "onnx": 3.0}
CALIBRATED_ACTIVATION_SETS = {"tflite": 0.75, "onnx": 1.1}
# Fallback's ranking reads intermediate tensors at most this many bytes per call
# (quant/tflite_static.py, quant/onnx_static.py), with a runtime's working memory beside
# them; the model's weights are alive too. md's TFLite decoder at 512 px, ranked this way:
# 4.45 GiB peak.
RANKING_CHUNK_BYTES = 2 * GB
# Without calibration, PyTorch frees each intermediate tensor after its last use and the
# runtimes plan their activation memory with reuse: a fraction of one call's activations is
# alive at once.
LIVE_ACTIVATION_FRACTION = 0.25


@dataclasses.dataclass(frozen=True)
class Estimate:
  weights_bytes: int
  activation_bytes: int
  peak_bytes: int

  def describe(self) -> str:
    return (f"about {self.peak_bytes / GB:.1f} GB (weights {self.weights_bytes / GB:.2f} GB, "
            f"one call's activations {self.activation_bytes / GB:.2f} GB)")


def free_bytes() -> int:
  """The machine's free RAM and reclaimable cache: room for memory on top of what this
  process holds already."""
  import psutil

  return int(psutil.virtual_memory().available)


def available_bytes() -> int:
  """What this process can reach at its peak: free_bytes() plus what the process holds
  already. An estimate is of the whole process's peak, so a check made after loading
  weights or recording calibration must not count the process's own memory against it a
  second time."""
  import psutil

  return free_bytes() + int(psutil.Process().memory_info().rss)


def release() -> None:
  """Hands the memory Python has freed back to the kernel.

  glibc's malloc keeps freed blocks for reuse, so after a component's export the process
  still held what its conversion had used: md's ONNX text encoder left the process at
  3.1 GiB, 1.5 GiB after malloc_trim; md's TFLite int8_static candidate carried 4.9 GiB from
  its UNet into its decoder's export. A later component, or another process, can then use
  it. (On another C library there is no malloc_trim, and nothing to do.)"""
  import ctypes
  import gc

  from torch.fx.experimental import proxy_tensor

  # torch.export keeps its last trace's nodes, and through them the traced module's
  # parameters, in a module-level map until the next export (torch 2.13): md's UNet held
  # 1.46 GiB after its module was dropped, on into its quantization. (litert-torch and the
  # dynamo ONNX exporter both trace with torch.export.)
  getattr(proxy_tensor, "_FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT", {}).clear()
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def activation_bytes(module: nn.Module, feeds: dict) -> int:
  """Bytes of every tensor one forward pass of `module` on `feeds` creates.

  Runs on fake tensors (torch's FakeTensorMode), so nothing is allocated or computed. A
  converted graph can produce more: litert-torch splits each norm into several ops, each
  with a full-size output.
  """
  from torch._subclasses.fake_tensor import FakeTensorMode
  from torch.utils._python_dispatch import TorchDispatchMode
  from torch.utils._pytree import tree_flatten

  class Count(TorchDispatchMode):
    total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
      out = func(*args, **(kwargs or {}))
      for t in tree_flatten(out)[0]:
        if isinstance(t, torch.Tensor):
          Count.total += t.numel() * t.element_size()
      return out

  fake = FakeTensorMode(allow_non_fake_inputs=True)
  with fake:
    inputs = [torch.empty(tuple(v.shape), dtype=torch.from_numpy(v[:0]).dtype)
              for v in feeds.values()]
  with torch.no_grad(), fake, Count():
    module(*inputs)
  return Count.total


def estimate(fmt: str, recipe: str, weights_bytes: int, activations: int, slim: bool,
             calibrated: bool) -> Estimate:
  factor = RECIPE_CONVERT_FACTOR.get((fmt, recipe), CONVERT_FACTOR[fmt])
  if fmt == "onnx" and slim:
    factor = max(factor, SLIM_FACTOR)
  peak = BASE_BYTES + factor * weights_bytes + LIVE_ACTIVATION_FRACTION * activations
  if calibrated:
    peak = max(peak, BASE_BYTES + (1 + CALIBRATED_WEIGHT_COPIES[fmt]) * weights_bytes
               + CALIBRATED_ACTIVATION_SETS[fmt] * activations)
  if calibrated:  # fallback's ranking
    peak = max(peak, BASE_BYTES + weights_bytes + 2 * min(activations, RANKING_CHUNK_BYTES))
  return Estimate(weights_bytes, activations, int(peak))


def check(what: str, est: Estimate, budget_bytes: int | None, advice: str) -> None:
  """Raises an EdgediffError naming `what` when `est` exceeds the budget (default: the RAM
  available now)."""
  budget = available_bytes() if budget_bytes is None else budget_bytes
  if est.peak_bytes > budget:
    raise EdgediffError(
        f"{what}: needs {est.describe()}, more than the {budget / GB:.1f} GB "
        f"{'available' if budget_bytes is None else 'allowed by --max-memory'}; {advice}")
