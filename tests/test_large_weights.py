"""ai-edge-quantizer 0.10.0 crashes on conv weights over 32 MiB; edgediff works around it."""

import numpy as np
import torch
from torch import nn

from edgediff import metrics, runtimes
from edgediff.export import tflite
from edgediff.quant import aeq_workaround, recipes


class LargeConv(nn.Module):
  output_names = ("y",)

  def __init__(self):
    super().__init__()
    # 1152 x 1024 x 3 x 3 floats = 42 MB: over the quantizer's 32 MiB chunking threshold.
    self.conv = nn.Conv2d(1024, 1152, 3, padding=1)

  def forward(self, x):
    return self.conv(x)


def test_int8_conversion_of_a_conv_weight_over_32_mib(tmp_path):
  torch.manual_seed(0)
  module = LargeConv().eval()
  assert module.conv.weight.numel() * 4 > 32 * 1024 * 1024
  x = torch.randn(1, 1024, 4, 4)
  path = str(tmp_path / "conv.tflite")
  tflite.export_tflite(module, {"x": x}, ("y",), path, "int8_weight_only")
  got = runtimes.tflite_runner(path)({"x": x.numpy()})["y"]
  with torch.no_grad():
    ref = module(x).numpy()
  report = metrics.compare("conv", [ref], [got], recipes.thresholds("int8_weight_only"))
  assert report.passed, report.failures


def test_flattening_gives_the_same_numbers_as_the_direct_path():
  from ai_edge_quantizer import qtyping

  aeq_workaround.apply()
  from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

  rng = np.random.default_rng(0)
  weight = rng.standard_normal((1152, 3, 3, 1024), dtype=np.float32)  # OHWI, 42 MB
  scale = (np.abs(weight).reshape(1152, -1).max(axis=1) / 127).reshape(1152, 1, 1, 1)
  params = qtyping.UniformQuantParams(
      num_bits=8, quantized_dimension=0, scale=scale,
      zero_point=np.zeros_like(scale, dtype=np.int32), symmetric=True)
  got = uqt.uniform_quantize(weight, params)
  expected = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
  assert got.shape == weight.shape and got.dtype == np.int8
  np.testing.assert_array_equal(got, expected)
