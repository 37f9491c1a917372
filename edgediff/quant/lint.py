"""`edgediff lint`: per-layer hazards for fp16 and int8, measured, not guessed.

The float pipeline generates from the pipeline's prompts (as calibration does) and the
UNet's and decoder's inputs along the trajectory are kept. Each layer's inputs and outputs
on that data are captured, and each layer is then re-run on its own:
- fp16: the layer in half precision on the half-precision input (as a GPU delegate or an fp16
  kernel computes it); its output's peak against fp16's largest finite value, 65504;
- int8: per-output-channel symmetric int8 weights and per-tensor asymmetric int8 input
  activations over the captured range (W8A8 as the static recipes compute it).
Each gives the signal-to-quantization-noise ratio (SQNR, dB) of that layer's output against
fp32. Functional ops that are not modules are measured the same way from their inputs: the
gated feed-forward's activation (swish, gelu, gelu_tanh) and the attention weights (relu or
softmax). Finally the whole component runs with every layer at W8A8 (fake-quantized in
PyTorch) and with every layer in fp16 (the elementwise glue between layers stays fp32), and
its output SQNR is reported: what the hazards add up to. Running the same measurement on
variants of one spec compares swish with gelu and relu with softmax attention on the same
prompts and seeds. Captures hold every layer's inputs and outputs in memory: lint is meant
for small models (the shapes models, tiny configs).
"""

import contextlib
import copy
import dataclasses
import os

import numpy as np
import torch
from torch import nn

from edgediff import metrics
from edgediff.models import md_unet

FP16_MAX = 65504.0
_LAYERS = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)


def fake_quant(x: torch.Tensor, lo: float, hi: float, bits: int = 8) -> torch.Tensor:
  """Asymmetric per-tensor quantize-dequantize over [lo, hi] (which always holds 0)."""
  lo, hi = min(lo, 0.0), max(hi, 0.0)
  levels = 2**bits - 1
  scale = max(hi - lo, 1e-12) / levels
  zero = round(-lo / scale)
  return (torch.clamp(torch.round(x / scale) + zero, 0, levels) - zero) * scale


def fake_quant_weight(w: torch.Tensor, bits: int = 8) -> torch.Tensor:
  """Symmetric per-output-channel quantize-dequantize (dim 0), as the int8 recipes do."""
  q = 2 ** (bits - 1) - 1
  scale = w.abs().reshape(w.shape[0], -1).amax(dim=1).clamp(min=1e-12) / q
  scale = scale.view(-1, *([1] * (w.dim() - 1)))
  return torch.clamp(torch.round(w / scale), -q, q) * scale


def _kind(module: nn.Module) -> str:
  if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
    return "norm (mean/variance reductions)"
  return type(module).__name__.lower()


@dataclasses.dataclass
class LayerReport:
  name: str
  kind: str
  peak: float  # largest |output| in fp32 over the data
  fp16_sqnr_db: float
  int8_sqnr_db: float
  hazards: list[str]

  def to_json(self) -> dict:
    return {k: (round(v, 2) if isinstance(v, float) and np.isfinite(v) else v)
            for k, v in dataclasses.asdict(self).items()}


class _Capture:
  """Forward hooks that keep each layer's inputs and outputs (and the functional ops' inputs)."""

  def __init__(self, module: nn.Module):
    self.io: dict[str, list[tuple]] = {}
    self.handles = []
    for name, sub in module.named_modules():
      if isinstance(sub, _LAYERS):
        self.handles.append(sub.register_forward_hook(self._keep(name)))
      elif isinstance(sub, md_unet.GatedFeedForward):
        # The activation's input is the gate half of proj_in's output.
        self.handles.append(sub.proj_in.register_forward_hook(self._keep(name + ".act")))
      elif isinstance(sub, md_unet.Attention):
        self.handles.append(sub.register_forward_hook(self._keep(name + ".weights")))

  def _keep(self, name):
    def hook(mod, args, output):
      self.io.setdefault(name, []).append((tuple(a.detach() for a in args), output.detach()))
    return hook

  def close(self):
    for h in self.handles:
      h.remove()


def _measure_layer(module, name: str, records) -> LayerReport:
  inputs = [r[0] for r in records]
  outputs = torch.cat([r[1].flatten() for r in records])
  peak = float(outputs.abs().max())
  lo = min(float(i[0].min()) for i in inputs)
  hi = max(float(i[0].max()) for i in inputs)
  with torch.no_grad():
    half_module = copy.deepcopy(module).half()  # .half().float() would round the weights
    half = [half_module(*(a.half() for a in i)).float() for i in inputs]
    int8_module = copy.deepcopy(module)
    if isinstance(module, (nn.Linear, nn.Conv2d)):
      int8_module.weight.data = fake_quant_weight(module.weight.data)
    int8 = [int8_module(fake_quant(i[0], lo, hi), *i[1:]) for i in inputs]
  fp16_sqnr = metrics.sqnr_db(outputs, torch.cat([h.flatten() for h in half]))
  int8_sqnr = metrics.sqnr_db(outputs, torch.cat([q.flatten() for q in int8]))
  hazards = []
  if peak > FP16_MAX / 4:
    hazards.append(f"output peak {peak:.3g} within 4x of fp16's 65504")
  if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
    hazards.append("normalisation: reductions over many values")
  return LayerReport(name, _kind(module), peak, fp16_sqnr, int8_sqnr, hazards)


def _measure_act(kind: str, name: str, records) -> LayerReport:
  gates = torch.cat([r[1].chunk(2, dim=-1)[1].flatten() for r in records])  # act inputs
  ref = md_unet.activation(kind, gates)
  with torch.no_grad():
    half = md_unet.activation(kind, gates.half()).float()
    lo, hi = float(ref.min()), float(ref.max())
    int8 = fake_quant(ref, lo, hi)  # the activation's output as an int8 tensor
  hazards = []
  if kind == "gelu_tanh":
    hazards.append("gelu tanh approximation: cubic term 0.044715 x^3")
  return LayerReport(name, f"activation ({kind})", float(ref.abs().max()),
                     metrics.sqnr_db(ref, half),
                     metrics.sqnr_db(ref, int8), hazards)


def _measure_attention(att, name: str, records) -> LayerReport:
  with torch.no_grad():
    weights = [att.weights_and_values(*i)[0] for i, _ in records]
    ref = torch.cat([w.flatten() for w in weights])
    half_att = copy.deepcopy(att).half()
    half = [half_att.weights_and_values(*(a.half() for a in i))[0].float().flatten()
            for i, _ in records]
    int8 = fake_quant(ref, float(ref.min()), float(ref.max()))
  hazards = ["softmax: exponentials and a row-sum reduction"] if att.kind == "softmax" else []
  return LayerReport(name, f"attention weights ({att.kind})", float(ref.abs().max()),
                     metrics.sqnr_db(ref, torch.cat(half)), metrics.sqnr_db(ref, int8), hazards)


@contextlib.contextmanager
def _simulated(module: nn.Module, ranges: dict[str, tuple[float, float]], mode: str):
  """Every layer of `module` at W8A8 (fake-quantized) or in fp16, for the duration."""
  handles = []
  saved = {k: v.clone() for k, v in module.state_dict().items()}
  for name, sub in module.named_modules():
    if not isinstance(sub, _LAYERS):
      continue
    if mode == "fp16":
      def pre(mod, args):
        return tuple(a.half() for a in args)

      def post(mod, args, out):
        return out.float()
      sub.half()
      handles += [sub.register_forward_pre_hook(pre), sub.register_forward_hook(post)]
    elif name in ranges:  # a layer the data never reached stays float
      lo, hi = ranges[name]

      def pre(mod, args, lo=lo, hi=hi):
        return (fake_quant(args[0], lo, hi), *args[1:])
      if isinstance(sub, (nn.Linear, nn.Conv2d)):
        sub.weight.data = fake_quant_weight(sub.weight.data)
      handles.append(sub.register_forward_pre_hook(pre))
  try:
    yield
  finally:
    for h in handles:
      h.remove()
    module.float()
    module.load_state_dict(saved)  # exact fp32 weights back


def lint_component(module: nn.Module, feeds: list[dict[str, torch.Tensor]]) -> dict:
  """Per-layer reports (worst int8 first) and the whole component's fp16 and W8A8 SQNR."""
  capture = _Capture(module)
  with torch.no_grad():
    references = [module(**f) for f in feeds]
  capture.close()
  modules = dict(module.named_modules())
  layers = []
  for name, records in capture.io.items():
    if name.endswith(".act"):
      owner = modules[name[:-4]]
      layers.append(_measure_act(owner.activation, name, records))
    elif name.endswith(".weights"):
      layers.append(_measure_attention(modules[name[:-8]], name, records))
    else:
      layers.append(_measure_layer(modules[name], name, records))
  ranges = {name: (min(float(r[0][0].min()) for r in recs), max(float(r[0][0].max())
                                                                for r in recs))
            for name, recs in capture.io.items() if name in modules}
  whole = {}
  for mode in ("fp16", "w8a8"):
    with torch.no_grad(), _simulated(module, ranges, mode):
      outs = [module(**f) for f in feeds]
    whole[mode] = metrics.sqnr_db(torch.cat([r.flatten() for r in references]),
                          torch.cat([o.flatten() for o in outs]))
  layers.sort(key=lambda r: r.int8_sqnr_db)
  return {"layers": layers, "whole_sqnr_db": whole}


def mean_sqnr_db(values: list[float]) -> float:
  """The SQNR of the mean noise-to-signal ratio: a layer with no error at all (inf dB) adds
  none, where a mean of decibels would be infinite; the noisiest layers weigh most."""
  noise = float(np.mean([10 ** (-v / 10) for v in values]))
  return -10 * float(np.log10(noise)) if noise > 0 else float("inf")


def summary_by_kind(layers: list[LayerReport]) -> dict[str, dict[str, float]]:
  """fp16 and int8 SQNR (mean_sqnr_db) and the largest peak, per kind of layer."""
  out = {}
  for kind in sorted({r.kind for r in layers}):
    rows = [r for r in layers if r.kind == kind]
    out[kind] = {"count": len(rows),
                 "fp16_sqnr_db": round(mean_sqnr_db([r.fp16_sqnr_db for r in rows]), 2),
                 "int8_sqnr_db": round(mean_sqnr_db([r.int8_sqnr_db for r in rows]), 2),
                 "peak": round(max(r.peak for r in rows), 3)}
  return out


VARIANT_COLUMNS = ("pipeline", "ff_activation", "act_int8", "act_fp16", "act_peak", "attention",
                   "attn_int8", "attn_fp16", "unet_w8a8", "unet_fp16")


def variant_row(name: str, unet: dict) -> dict:
  """One row of the variant comparison from a UNet's lint result."""
  def first(prefix):
    return next(((k, v) for k, v in unet["by_kind"].items() if k.startswith(prefix)),
                ("(-)", {}))
  act_kind, act = first("activation")
  att_kind, att = first("attention")
  return {"pipeline": name, "ff_activation": act_kind[act_kind.index("(") + 1:-1],
          "act_int8": act.get("int8_sqnr_db", "-"), "act_fp16": act.get("fp16_sqnr_db", "-"),
          "act_peak": act.get("peak", "-"),
          "attention": att_kind[att_kind.index("(") + 1:-1],
          "attn_int8": att.get("int8_sqnr_db", "-"), "attn_fp16": att.get("fp16_sqnr_db", "-"),
          "unet_w8a8": unet["whole_sqnr_db"]["w8a8"], "unet_fp16": unet["whole_sqnr_db"]["fp16"]}


def shipped_variants(name: str) -> tuple[list[str], list[str]]:
  """(variants of pipeline `name` whose trained weights ship beside it, those that do not):
  the shapes model's gelu and softmax UNets, to compare with it on the same data."""
  from edgediff import pipeline, specs

  variants = ["shapes-gelu", "shapes-softmax"] if name == "shapes" else []
  shipped = [v for v in variants
             if os.path.isfile(pipeline.shipped_weights_path(specs.pipeline_spec(v)))]
  return shipped, sorted(set(variants) - set(shipped))


def lint_pipeline(pipe, prompts: int = 4, max_feeds: int = 8) -> dict:
  """Lints the UNet and decoder of `pipe` on inputs recorded along its own sampling runs."""
  from edgediff.quant import calibration

  recorded = calibration.record(pipe, pipe.latent_size, list(pipe.prompts[:prompts]))
  out = {}
  for component in ("unet", "vae_decoder"):
    feeds = recorded[component]
    step = max(1, len(feeds) // max_feeds)
    picked = [{k: torch.from_numpy(v) for k, v in f.items()} for f in feeds[::step][:max_feeds]]
    result = lint_component(pipe.build(component), picked)
    out[component] = {"whole_sqnr_db": {k: round(v, 2) for k, v in
                                        result["whole_sqnr_db"].items()},
                      "by_kind": summary_by_kind(result["layers"]),
                      "layers": [r.to_json() for r in result["layers"]]}
  return out
