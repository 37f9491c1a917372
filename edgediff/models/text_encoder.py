"""CLIP ViT-L/14 text tower (transformers' CLIPTextModel) and its offline tokenizer.

The tokenizer's BPE vocabulary ships inside edgediff (edgediff/assets/clip_tokenizer: the
OpenAI CLIP vocabulary, MIT licence), so tokenizing needs no network.
"""

import dataclasses
import functools
import importlib.resources

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from edgediff.models.io import MAX_TOKENS, TensorSpec



@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  vocab_size: int = 49408  # CLIP BPE vocabulary
  max_position_embeddings: int = MAX_TOKENS
  hidden_act: str = "quick_gelu"  # as trained by OpenAI
  # Vocabulary pruning for small models: the CLIP ids kept (empty: all of them). Kept ids map
  # to 1..n in order, every other id to 0, through a lookup table inside the model, so the
  # input stays CLIP's ids while the embedding table holds n + 1 rows instead of 49408.
  vocabulary: tuple[int, ...] = ()

  def to_hf(self) -> CLIPTextConfig:
    fields = dataclasses.asdict(self)
    del fields["vocabulary"]
    bos, eos = 49406, 49407
    if self.vocabulary:
      fields["vocab_size"] = len(self.vocabulary) + 1
      bos, eos = (self.vocabulary.index(i) + 1 if i in self.vocabulary else 0 for i in (bos, eos))
    return CLIPTextConfig(**fields, projection_dim=self.hidden_size,
                          bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)


CLIP_L14_TEXT = TextEncoderConfig()


class TextEncoder(nn.Module):
  """input_ids (B, 77) int32 -> last_hidden_state (B, 77, hidden)."""

  def __init__(self, cfg: TextEncoderConfig = CLIP_L14_TEXT):
    super().__init__()
    self.config = cfg
    hf_cfg = cfg.to_hf()
    hf_cfg._attn_implementation = "eager"  # plain matmuls export to every runtime
    self.text_model = CLIPTextModel(hf_cfg)  # keys as in HF checkpoints: text_model.*
    if cfg.vocabulary:
      table = torch.zeros(cfg.vocab_size, dtype=torch.int32)
      table[list(cfg.vocabulary)] = torch.arange(1, len(cfg.vocabulary) + 1, dtype=torch.int32)
      self.register_buffer("vocab_map", table, persistent=False)  # fixed by the config
    else:
      self.vocab_map = None

  def input_specs(self, batch: int, latent_size: int | None = None) -> list[TensorSpec]:
    del latent_size  # text has no spatial size
    return [TensorSpec("input_ids", (batch, MAX_TOKENS), "int32")]

  output_names = ("last_hidden_state",)

  def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
    if self.vocab_map is not None:
      input_ids = self.vocab_map[input_ids.long()]  # CLIP ids -> pruned ids, (B, 77)
    return self.text_model(input_ids=input_ids.long()).last_hidden_state


@functools.cache
def tokenizer_dir() -> str:
  return str(importlib.resources.files("edgediff") / "assets" / "clip_tokenizer")


@functools.cache
def load_tokenizer(path: str | None = None) -> CLIPTokenizer:
  """The CLIP tokenizer from local files only (edgediff's own, or a diffusers tokenizer/)."""
  return CLIPTokenizer.from_pretrained(path or tokenizer_dir(), local_files_only=True)


def token_count(prompt: str, path: str | None = None) -> int:
  """How many tokens the prompt takes, start and end of text included (truncated past
  MAX_TOKENS by tokenize)."""
  return len(load_tokenizer(path)(prompt, verbose=False).input_ids)


def tokenize(prompts: list[str], path: str | None = None) -> torch.Tensor:
  """Prompts -> input_ids (B, 77) int32, padded with end-of-text as CLIP was trained."""
  ids = load_tokenizer(path)(prompts, padding="max_length", max_length=MAX_TOKENS,
                             truncation=True, return_tensors="pt").input_ids
  return ids.to(torch.int32)
