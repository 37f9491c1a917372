"""Names, shapes and dtypes of component inputs: one vocabulary for export, runtimes, apps."""

import dataclasses

MAX_TOKENS = 77  # CLIP context length


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  name: str
  shape: tuple[int, ...]
  dtype: str = "float32"  # numpy dtype name

  def to_json(self) -> dict:
    return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def unet_input_specs(batch: int, channels: int, latent_size: int, context_dim: int):
  return [
      TensorSpec("sample", (batch, channels, latent_size, latent_size)),
      TensorSpec("timestep", (batch,)),
      TensorSpec("encoder_hidden_states", (batch, MAX_TOKENS, context_dim)),
  ]
