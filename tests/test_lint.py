import dataclasses

import numpy as np
import torch

from edgediff import metrics, specs
from edgediff.quant import lint


def test_fake_quant_noise_is_what_8_bits_give():
  x = torch.linspace(-1, 3, 10_001)
  # Uniform data over the full range: SQNR ~ 6.02 * 8 + 1.76 dB for a sine, ~48 dB here.
  assert 45 < metrics.sqnr_db(x, lint.fake_quant(x, -1, 3)) < 52
  assert 20 < metrics.sqnr_db(x, lint.fake_quant(x, -1, 3, bits=4)) < 28
  w = torch.randn(16, 8, 3, 3)
  wq = lint.fake_quant_weight(w)
  assert len(torch.unique(wq[0])) <= 255 and metrics.sqnr_db(w, wq) > 35
  assert metrics.sqnr_db(x, x) == float("inf")


def _unet(**changes):
  cfg = dataclasses.replace(specs.COMPONENT_SPECS["shapes-unet"].config, **changes)
  torch.manual_seed(0)
  return specs.COMPONENT_SPECS["shapes-unet"].builder(cfg).eval()


def _feeds(module, n=2):
  g = torch.Generator().manual_seed(1)
  out = []
  for i in range(n):
    sample, timestep, context = module.input_specs(1, 8)
    out.append({"sample": torch.randn(sample.shape, generator=g),
                "timestep": torch.tensor([100.0 + 400 * i]),
                "encoder_hidden_states": torch.randn(context.shape, generator=g)})
  return out


def test_lint_measures_every_layer_and_flags_the_hazards():
  unet = _unet(ff_activation="gelu_tanh", attention="softmax")
  before = {k: v.clone() for k, v in unet.state_dict().items()}
  result = lint.lint_component(unet, _feeds(unet))
  layers = result["layers"]
  n_layers = sum(isinstance(m, lint._LAYERS) for m in unet.modules())
  n_ff = sum(isinstance(m, lint.md_unet.GatedFeedForward) for m in unet.modules())
  n_att = sum(isinstance(m, lint.md_unet.Attention) for m in unet.modules())
  assert len(layers) == n_layers + n_ff + n_att
  assert [r.int8_sqnr_db for r in layers] == sorted(r.int8_sqnr_db for r in layers)
  by_kind = lint.summary_by_kind(layers)
  assert by_kind["activation (gelu_tanh)"]["count"] == n_ff
  assert all(r.hazards for r in layers if r.kind.startswith(("activation", "attention", "norm")))
  for r in layers:  # fp16 keeps ~11 bits, int8 8: fp16 is the closer one, layer by layer
    assert r.fp16_sqnr_db > r.int8_sqnr_db, r
  whole = result["whole_sqnr_db"]
  assert np.isfinite(whole["w8a8"]) and whole["fp16"] > whole["w8a8"] > 0
  # Linting leaves the model as it was: float weights, no hooks.
  after = unet.state_dict()
  assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype
             for k in before)
  assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())
  row = lint.variant_row("x", {"by_kind": by_kind, "whole_sqnr_db": whole})
  assert row["ff_activation"] == "gelu_tanh" and row["attention"] == "softmax"
  assert set(row) == set(lint.VARIANT_COLUMNS)


def test_mean_sqnr_averages_noise_not_decibels():
  # Two layers at 20 and 40 dB: noise ratios 1e-2 and 1e-4, mean 5.05e-3, about 23 dB; a
  # layer with no error adds no noise instead of making the mean infinite.
  assert abs(lint.mean_sqnr_db([20.0, 40.0]) - 22.97) < 0.01
  assert abs(lint.mean_sqnr_db([20.0, float("inf")]) - 23.01) < 0.01
  assert lint.mean_sqnr_db([float("inf")]) == float("inf")


def test_lint_measures_the_models_own_functions(monkeypatch):
  # lint computes the activation and the attention weights through the model's code, so
  # a change there changes what lint measures: here an activation swapped for one that gives
  # zeros, which a copy of the activation inside lint would not see.
  unet = _unet()
  feeds = _feeds(unet, n=1)
  before = [r for r in lint.lint_component(unet, feeds)["layers"]
            if r.kind.startswith("activation")]
  monkeypatch.setattr(lint.md_unet, "activation", lambda kind, x: torch.zeros_like(x))
  after = [r for r in lint.lint_component(unet, feeds)["layers"]
           if r.kind.startswith("activation")]
  assert before and len(after) == len(before)
  assert all(r.peak > 0 for r in before) and all(r.peak == 0 for r in after)
  # The attention weights lint measures are the ones the forward pass multiplies with V.
  att = next(m for m in unet.modules() if isinstance(m, lint.md_unet.Attention))
  x = torch.randn(1, 5, att.to_q.in_features)
  weights, v = att.weights_and_values(x)
  b, n, c = x.shape
  expected = att.to_out((weights @ v).transpose(1, 2).reshape(b, n, c))
  torch.testing.assert_close(att(x), expected)
