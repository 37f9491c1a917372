"""A workaround for ai-edge-quantizer 0.10.0 on weights over 32 MiB.

Its `uniform_quantize` quantizes tensors over 32 MiB in chunks: it reshapes the weight to
2-D but broadcasts the per-channel scales with their 4-D shape, and a conv weight of a
full-size UNet (e.g. MD's Up-2 FullConv, 1664 x 640 x 3 x 3 floats = 38 MB) fails with
"input operand has more dimensions than allowed by the axis remapping". Here such a weight
is flattened to [O, -1] with scales and zero points [O, 1] (per-channel on axis 0, TFLite's
output-channel axis), quantized, and reshaped back: the same numbers, in the 2-D layout the
chunking path handles. Remove once upstream fixes it.
"""

import dataclasses
import functools

import numpy as np

_CHUNK_BYTES = 32 * 1024 * 1024  # where ai-edge-quantizer switches to its chunking path


def _needs_flattening(tensor: np.ndarray, scale) -> bool:
  scale = np.asarray(scale)
  return (tensor.ndim > 2 and tensor.nbytes > _CHUNK_BYTES and scale.ndim == tensor.ndim
          and scale.shape[0] == tensor.shape[0] and scale.size == tensor.shape[0])


def _flattening(original):
  @functools.wraps(original)
  def uniform_quantize(tensor_data, quantization_params, *args, **kwargs):
    if not _needs_flattening(tensor_data, quantization_params.scale):
      return original(tensor_data, quantization_params, *args, **kwargs)
    channels = tensor_data.shape[0]
    params = dataclasses.replace(
        quantization_params,
        scale=np.asarray(quantization_params.scale).reshape(channels, 1),
        zero_point=np.asarray(quantization_params.zero_point).reshape(channels, 1))
    flat = original(tensor_data.reshape(channels, -1), params, *args, **kwargs)  # (O, HWI)
    return flat.reshape(tensor_data.shape)

  uniform_quantize.edgediff_workaround = True
  return uniform_quantize


def apply() -> None:
  """Installs the workaround once; every ai-edge-quantizer algorithm calls it by module."""
  from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

  if not getattr(uqt.uniform_quantize, "edgediff_workaround", False):
    uqt.uniform_quantize = _flattening(uqt.uniform_quantize)
