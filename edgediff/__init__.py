"""edgediff: mobile text-to-image diffusion models from PyTorch to ONNX and TFLite."""

import logging

# On every import, torchao (a litert-torch dependency) logs that it lacks CUDA kernels,
# diffusers that it cannot use torchao, and torch's pytree a deprecation for torchao's
# enums: noise to a CPU user.
_NOISY = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")
for _name in _NOISY:
  logging.getLogger(_name).setLevel(logging.ERROR)

__version__ = "0.1.0"
