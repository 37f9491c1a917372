"""The tensors TFLite int8_static keeps in float by rule, found in a real litert-torch graph."""

import pytest
import torch
from torch import nn

from edgediff.export import tflite as tflite_lib
from edgediff.models import md_unet
from edgediff.quant import tflite_static


class _Norms(nn.Module):
  """A GroupNorm and a LayerNorm over sinusoidal timestep features, between linear layers."""

  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(4, 8, 1)
    self.group_norm = nn.GroupNorm(2, 8)
    self.time = nn.Linear(8, 8)
    self.layer_norm = nn.LayerNorm(8)

  def forward(self, sample, timestep):
    h = self.group_norm(self.conv(sample))  # (B, 8, H, W)
    temb = self.layer_norm(self.time(md_unet.timestep_features(timestep, 8)))  # (B, 8)
    return h + temb[:, :, None, None]


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("rule") / "norms.tflite")
  torch.manual_seed(0)
  feeds = {"sample": torch.randn(1, 4, 4, 4), "timestep": torch.tensor([500.0])}
  tflite_lib.export_tflite(_Norms().eval(), feeds, ("out",), path)
  names, ops = tflite_static._graph(path)
  kinds = {names[int(i)]: op["op_name"] for op in ops for i in op["outputs"]}
  return path, names, ops, kinds


def test_norm_statistics_are_the_means_squares_and_inverse_std(graph):
  path, names, ops, kinds = graph
  found = set(tflite_static.norm_statistics(path))
  rsqrt = {names[int(i)] for op in ops if op["op_name"] == "RSQRT" for i in op["outputs"]}
  assert len(rsqrt) == 2 and rsqrt <= found  # one 1/std per norm
  assert {kinds[n] for n in found} >= {"RSQRT", "MEAN"}
  # Not the activations being normalised, nor the normalised outputs' affine transform.
  conv = {names[int(i)] for op in ops if op["op_name"] == "CONV_2D" for i in op["outputs"]}
  assert conv and not conv & found
  assert "FULLY_CONNECTED" not in {kinds[n] for n in found}


def test_time_features_run_from_the_timestep_to_sin_and_cos(graph):
  path, names, ops, kinds = graph
  found = set(tflite_static.time_features(path))
  assert {"SIN", "COS", "MUL"} <= {kinds[n] for n in found}  # timestep x frequencies
  # The features' consumer (the time MLP) stays quantizable.
  assert "FULLY_CONNECTED" not in {kinds[n] for n in found}
  assert not set(tflite_static.norm_statistics(path)) & {
      n for n in found if kinds[n] in ("SIN", "COS")}
