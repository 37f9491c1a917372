import dataclasses
import json

import pytest
import torch

from edgediff import cli, counting, specs
from edgediff.models import md_unet
from edgediff.models.text_encoder import tokenize


def _models_json(capsys):
  assert cli.main(["models", "--json"]) == 0
  return {row["name"]: row for row in json.loads(capsys.readouterr().out)}


def test_full_size_counts_match_the_papers(capsys):
  rows = _models_json(capsys)
  assert rows["md"]["params"] == pytest.approx(386e6, rel=0.03)
  assert rows["md-lite"]["params"] == pytest.approx(278e6, rel=0.03)
  assert rows["md"]["macs"] == pytest.approx(182e9, rel=0.05)
  assert rows["md-lite"]["macs"] == pytest.approx(153e9, rel=0.05)
  # The papers' "GFLOPs" are MACs: the same counter puts SD-1.5 near its 392.
  assert rows["sd15-unet"]["params"] == 859_520_964
  assert rows["sd15-unet"]["macs"] == pytest.approx(392e9, rel=0.05)
  assert rows["snapfusion-unet"]["params"] == pytest.approx(848e6, rel=0.03)
  assert rows["snapgen-unet"]["params"] == pytest.approx(379e6, rel=0.03)
  assert rows["clip-l14-text"]["params"] == pytest.approx(123e6, rel=0.01)
  assert rows["sd-vae-decoder"]["params"] == pytest.approx(49.49e6, rel=0.001)
  assert rows["md-decoder"]["params"] == pytest.approx(9.8e6, rel=0.03)
  assert rows["snapfusion-decoder"]["params"] == pytest.approx(12.4e6, rel=0.03)
  assert rows["snapgen-decoder"]["params"] == pytest.approx(1.38e6, rel=0.03)
  assert rows["md"]["inputs"][0]["shape"] == [1, 8, 64, 64]
  assert set(rows["md"]) >= {"name", "component", "params", "macs"}


def test_md_layout_has_the_papers_attention_layers():
  module = specs.component_spec("md").build(device="meta")
  blocks = [m for m in module.modules() if isinstance(m, md_unet.TransformerBlock)]
  assert sum(b.self_attn is not None for b in blocks) == 15  # SA layers
  assert len(blocks) == 18  # CA layers
  lite = specs.component_spec("md-lite").build(device="meta")
  lite_blocks = [m for m in lite.modules() if isinstance(m, md_unet.TransformerBlock)]
  assert (sum(b.self_attn is not None for b in lite_blocks), len(lite_blocks)) == (12, 15)
  convs = [m for m in module.modules() if isinstance(m, (md_unet.FullConv, md_unet.SPConv))]
  assert len(convs) == 11


@pytest.mark.parametrize("name", list(specs.COMPONENT_SPECS))
def test_tiny_forward_shapes(name):
  spec = specs.component_spec(name)
  module = spec.build(tiny=True)
  inputs = module.input_specs(2, 8 if spec.component == "vae_decoder" else None)
  rows = module.text_model.config.vocab_size if spec.component == "text_encoder" else None
  feeds = [torch.randint(0, rows, s.shape, dtype=torch.int32) if s.dtype == "int32"
           else torch.randn(s.shape) for s in inputs]
  with torch.no_grad():
    out = module(*feeds)
  assert torch.isfinite(out).all()
  if spec.component == "unet":
    assert out.shape == feeds[0].shape
  elif spec.component == "vae_decoder":
    assert out.shape == (2, 3, 64, 64)
    assert out.min() >= 0 and out.max() <= 1
  else:
    assert out.shape == (2, 77, spec.tiny.hidden_size)


def _tiny_md(**changes):
  cfg = dataclasses.replace(specs.component_spec("md").tiny, **changes)
  torch.manual_seed(0)
  return md_unet.MDUNet(cfg).eval(), cfg


def _traced_ops(module, cfg):
  feeds = [torch.randn(s.shape) for s in module.input_specs(1)]
  graph = torch.export.export(module, tuple(feeds)).graph
  return {str(n.target) for n in graph.nodes if n.op == "call_function"}


def test_attention_switch_changes_the_graph():
  relu_ops = _traced_ops(*_tiny_md(attention="relu"))
  softmax_ops = _traced_ops(*_tiny_md(attention="softmax"))
  assert any("softmax" in op for op in softmax_ops)
  assert not any("softmax" in op for op in relu_ops)
  assert any("relu" in op for op in relu_ops)


def test_ff_activation_switch_changes_the_graph():
  swish = _traced_ops(*_tiny_md(ff_activation="swish"))
  gelu = _traced_ops(*_tiny_md(ff_activation="gelu"))
  assert any("gelu" in op for op in gelu) and not any("gelu" in op for op in swish)
  # gelu and gelu_tanh share weights but differ in the approximation.
  exact, _ = _tiny_md(ff_activation="gelu")
  approx, _ = _tiny_md(ff_activation="gelu_tanh")
  approx.load_state_dict(exact.state_dict())
  feeds = [torch.randn(s.shape) for s in exact.input_specs(1)]
  with torch.no_grad():
    diff = (exact(*feeds) - approx(*feeds)).abs().max()
  assert 0 < diff < 1e-2


def test_shared_kv_drops_one_projection():
  shared, _ = _tiny_md(shared_kv=True)
  separate, _ = _tiny_md(shared_kv=False)
  sa = [m for m in shared.modules() if isinstance(m, md_unet.TransformerBlock) and m.self_attn]
  assert sa and all(b.self_attn.to_v is None for b in sa)
  n = sum(b.self_attn.to_k.weight.numel() for b in sa)
  assert counting.count_params(separate) - counting.count_params(shared) == n


def test_bad_config_values_are_refused():
  with pytest.raises(ValueError, match="attention"):
    dataclasses.replace(md_unet.MD, attention="linear")
  with pytest.raises(ValueError, match="ff_activation"):
    dataclasses.replace(md_unet.MD, ff_activation="relu")


def test_tokenizer_works_offline():
  ids = tokenize(["a photo of a cat"])
  assert ids.dtype == torch.int32 and ids.shape == (1, 77)
  # Known CLIP ids: start, a, photo, of, a, cat, end (then end-of-text padding).
  assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 49407]


def test_building_seeded_weights_leaves_the_callers_rng_alone():
  from edgediff import pipeline

  torch.manual_seed(123)
  expected = torch.rand(3)
  torch.manual_seed(123)
  first = pipeline.open_pipeline("md-tiny").build("text_encoder").state_dict()
  assert torch.equal(torch.rand(3), expected)
  again = pipeline.open_pipeline("md-tiny").build("text_encoder").state_dict()
  assert all(torch.equal(first[k], again[k]) for k in first)  # still seeded
