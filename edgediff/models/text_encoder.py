"""CLIP ViT-L/14 text tower (transformers' CLIPTextModel) and its offline tokenizer.

The tokenizer's BPE vocabulary ships inside edgediff (edgediff/assets/clip_tokenizer: the
OpenAI CLIP vocabulary, MIT licence), so tokenizing needs no network.
"""

import dataclasses
import functools
import importlib.resources
import json
import os

import numpy as np
import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from edgediff import atomic

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
  # to rows 1..n of the embedding table in order, every other id to row 0 (n + 1 rows instead
  # of 49408). The mapping is the tokenizer's (`tokenize(..., vocabulary)`, and the vocab.json
  # an export ships), not a lookup inside the graph: a gather on the input ids is an op that
  # phone GPU delegates refuse.
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
  """input_ids (B, 77) int32 -> last_hidden_state (B, 77, hidden). With a pruned vocabulary
  the ids are embedding rows (`to_rows`), not CLIP's ids."""

  def __init__(self, cfg: TextEncoderConfig = CLIP_L14_TEXT):
    super().__init__()
    self.config = cfg
    hf_cfg = cfg.to_hf()
    hf_cfg._attn_implementation = "eager"  # plain matmuls export to every runtime
    self.text_model = CLIPTextModel(hf_cfg)  # keys as in HF checkpoints: text_model.*

  def input_specs(self, batch: int, latent_size: int | None = None) -> list[TensorSpec]:
    del latent_size  # text has no spatial size
    return [TensorSpec("input_ids", (batch, MAX_TOKENS), "int32")]

  output_names = ("last_hidden_state",)

  def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
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


@functools.cache  # one table per vocabulary, not one per tokenize call
def row_table(vocabulary: tuple[int, ...]) -> np.ndarray:
  """CLIP id -> embedding row of a pruned vocabulary: kept ids to 1..n, the others to 0."""
  table = np.zeros(CLIP_L14_TEXT.vocab_size, np.int32)
  table[list(vocabulary)] = np.arange(1, len(vocabulary) + 1, dtype=np.int32)
  return table


def to_rows(input_ids: torch.Tensor, vocabulary: tuple[int, ...] = ()) -> torch.Tensor:
  """CLIP ids -> the ids a text encoder with this vocabulary takes (unchanged when unpruned)."""
  if not vocabulary:
    return input_ids
  return torch.from_numpy(row_table(vocabulary))[input_ids.long()]


def tokenize(prompts: list[str], path: str | None = None,
             vocabulary: tuple[int, ...] = ()) -> torch.Tensor:
  """Prompts -> input_ids (B, 77) int32, padded with end-of-text as CLIP was trained; the
  rows of a pruned `vocabulary` when one is given."""
  ids = load_tokenizer(path)(prompts, padding="max_length", max_length=MAX_TOKENS,
                             truncation=True, return_tensors="pt").input_ids
  return to_rows(ids.to(torch.int32), vocabulary)


TOKENIZER_FILES = ("vocab.json", "merges.txt")


def write_tokenizer(folder: str, path: str | None = None,
                    vocabulary: tuple[int, ...] = ()) -> None:
  """Writes the tokenizer an app needs beside an export: vocab.json, with each token's id
  being the artifact's input (its embedding row under a pruned vocabulary), and merges.txt."""
  source = path or tokenizer_dir()
  with open(os.path.join(source, "vocab.json"), encoding="utf-8") as f:
    vocab = json.load(f)
  if vocabulary:
    table = row_table(vocabulary)
    vocab = {token: int(table[i]) for token, i in vocab.items()}
  atomic.write_bytes(os.path.join(folder, "vocab.json"),
                     json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
  atomic.copy_file(os.path.join(source, "merges.txt"), os.path.join(folder, "merges.txt"))
