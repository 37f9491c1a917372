"""Helpers shared by several test modules."""

import json
import os

import torch

from edgediff import checkpoints, specs


def write_tiny_diffusers_folder(root) -> str:
  """A diffusers-format folder with the tiny SD-1.5 components, written from scratch."""
  root = str(root)
  torch.manual_seed(1)
  sd = specs.pipeline_spec("sd15")
  unet = sd.component("unet").build(tiny=True)
  unet.save_config(os.path.join(root, "unet"))
  checkpoints.write_tensors(unet.state_dict(),
                            os.path.join(root, "unet", "diffusion_pytorch_model.safetensors"))
  vae_cfg = sd.component("vae_decoder").tiny
  vae = sd.component("vae_decoder").build(tiny=True)
  os.makedirs(os.path.join(root, "vae"))
  with open(os.path.join(root, "vae", "config.json"), "w") as f:
    json.dump({"_class_name": "AutoencoderKL", "latent_channels": vae_cfg.latent_channels,
               "block_out_channels": list(vae_cfg.block_out_channels),
               "layers_per_block": vae_cfg.layers_per_block,
               "norm_num_groups": vae_cfg.norm_groups, "scaling_factor": 0.18215}, f)
  vae_state = dict(vae.state_dict())
  vae_state["encoder.conv_in.weight"] = torch.zeros(1)  # the encoder half is ignored
  checkpoints.write_tensors(vae_state,
                            os.path.join(root, "vae", "diffusion_pytorch_model.safetensors"))
  text = sd.component("text_encoder").build(tiny=True)
  os.makedirs(os.path.join(root, "text_encoder"))
  with open(os.path.join(root, "text_encoder", "config.json"), "w") as f:
    json.dump(text.text_model.config.to_dict(), f)
  checkpoints.write_tensors(text.state_dict(),
                            os.path.join(root, "text_encoder", "model.safetensors"))
  return root


def check_readable_by_old_parsers(path):
  """Weights inline (not at file offsets) and every op code in both of the schema's fields,
  as ai-edge-quantizer does not write them (edgediff.tflite_files.normalize)."""
  from ai_edge_litert import schema_py_generated as schema

  with open(path, "rb") as f:
    model = schema.ModelT.InitFromPackedBuf(f.read(), 0)
  assert [b.offset for b in model.buffers if b.offset] == []
  assert any(b.data is not None and len(b.data) for b in model.buffers)
  for code in model.operatorCodes:
    assert code.deprecatedBuiltinCode == min(code.builtinCode, 127), code.builtinCode
