"""Parameter and multiply-accumulate counts, on the meta device (no weights allocated).

MACs come from torch.utils.flop_counter (2 FLOPs per MAC for matmuls and convolutions);
norms and elementwise ops are not counted, as in the papers' figures.
"""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgediff.models.io import TensorSpec


def count_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


def meta_inputs(specs: list[TensorSpec]) -> list[torch.Tensor]:
  return [torch.empty(s.shape, dtype=getattr(torch, s.dtype), device="meta") for s in specs]


def count_macs(module: nn.Module, specs: list[TensorSpec]) -> int:
  """MACs of one forward pass; the module should live on the meta device."""
  with torch.no_grad(), FlopCounterMode(display=False) as counter:
    module(*meta_inputs(specs))
  return counter.get_total_flops() // 2


def zoo(tiny: bool = False) -> list[dict]:
  """Every component spec: parameters, MACs (the decoder at a 64x64 latent) and inputs."""
  from edgediff import specs

  rows = []
  for spec in specs.COMPONENT_SPECS.values():
    module = spec.build(tiny=tiny, device="meta")
    inputs = module.input_specs(1, 64 if spec.component == "vae_decoder" else None)
    rows.append({"name": spec.name, "component": spec.component,
                 "params": count_params(module), "macs": count_macs(module, inputs),
                 "inputs": [i.to_json() for i in inputs], "summary": spec.summary})
  return rows
