import json
import os

import pytest
import torch

from edgediff import checkpoints, pipeline, schedule, specs
from edgediff.errors import EdgediffError
from helpers import write_tiny_diffusers_folder


def _tiny_state(component="unet"):
  module = pipeline.open_pipeline("md-tiny").build(component)
  return module, {f"{component}.{k}": v.clone() for k, v in module.state_dict().items()}


def test_safetensors_round_trip(tmp_path):
  module, state = _tiny_state()
  path = str(tmp_path / "w.safetensors")
  checkpoints.write_tensors({k: v + 1 for k, v in state.items()}, path)
  loaded = pipeline.open_pipeline("md-tiny", weights=path).build("unet")
  for k, v in module.state_dict().items():
    torch.testing.assert_close(loaded.state_dict()[k], v + 1)


def test_missing_file(tmp_path):
  with pytest.raises(EdgediffError, match="no such checkpoint file"):
    pipeline.open_pipeline("md-tiny", weights=str(tmp_path / "nope.safetensors"))


def test_truncated_file(tmp_path):
  _, state = _tiny_state()
  path = tmp_path / "w.safetensors"
  checkpoints.write_tensors(state, str(path))
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(EdgediffError, match=r"w\.safetensors: truncated or corrupt"):
    pipeline.open_pipeline("md-tiny", weights=str(path))


def test_corrupt_file(tmp_path):
  path = tmp_path / "w.safetensors"
  path.write_bytes(b"\x00garbage" * 10)
  with pytest.raises(EdgediffError, match="truncated or corrupt"):
    pipeline.open_pipeline("md-tiny", weights=str(path))


def test_wrong_shape_names_the_tensor(tmp_path):
  _, state = _tiny_state()
  state["unet.conv_in.weight"] = torch.zeros(3, 3, 3, 3)
  path = str(tmp_path / "w.safetensors")
  checkpoints.write_tensors(state, path)
  with pytest.raises(EdgediffError, match=r"'unet\.conv_in\.weight' has shape \(3, 3, 3, 3\)"):
    pipeline.open_pipeline("md-tiny", weights=path).build("unet")


def test_missing_tensor_names_the_tensor(tmp_path):
  _, state = _tiny_state()
  del state["unet.conv_out.bias"]
  path = str(tmp_path / "w.safetensors")
  checkpoints.write_tensors(state, path)
  with pytest.raises(EdgediffError, match=r"w\.safetensors: missing tensor 'conv_out\.bias'"):
    pipeline.open_pipeline("md-tiny", weights=path).build("unet")


def test_diffusers_folder_loads(tmp_path):
  folder = write_tiny_diffusers_folder(tmp_path / "tiny-sd")
  pipe = pipeline.open_pipeline(from_diffusers=folder)
  assert pipe.name == "tiny-sd" and pipe.latent_size == 16
  torch.manual_seed(1)
  expected = specs.pipeline_spec("sd15").component("unet").build(tiny=True)
  unet = pipe.build("unet")
  for k, v in expected.state_dict().items():
    torch.testing.assert_close(unet.state_dict()[k], v)
  assert pipe.build("vae_decoder") is not None and pipe.build("text_encoder") is not None


def test_diffusers_folder_missing_config(tmp_path):
  folder = write_tiny_diffusers_folder(tmp_path / "f")
  os.remove(os.path.join(folder, "vae", "config.json"))
  with pytest.raises(EdgediffError, match=r"vae/config\.json: missing"):
    pipeline.open_pipeline(from_diffusers=folder)


def test_diffusers_scheduler_config_sets_the_schedule(tmp_path):
  folder = write_tiny_diffusers_folder(tmp_path / "f")
  assert pipeline.open_pipeline(from_diffusers=folder).schedule == schedule.SD
  os.makedirs(os.path.join(folder, "scheduler"))
  path = os.path.join(folder, "scheduler", "scheduler_config.json")
  with open(path, "w") as f:
    json.dump({"prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
               "timestep_spacing": "trailing"}, f)
  pipe = pipeline.open_pipeline(from_diffusers=folder)
  assert pipe.prediction_type == "v_prediction" and pipe.schedule == schedule.ZERO_SNR
  with open(path, "w") as f:
    json.dump({"beta_schedule": "squaredcos_cap_v2"}, f)
  with pytest.raises(EdgediffError, match=r"scheduler_config\.json: beta_schedule"):
    pipeline.open_pipeline(from_diffusers=folder)
