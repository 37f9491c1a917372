"""The shapes world, its adherence checker, train-demo and the shipped shapes models."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from edgediff import cli, pipeline, specs
from edgediff.models.text_encoder import tokenize
from edgediff import generate as gen
from edgediff.shapes import adherence, checker, data, train


def test_grammar_is_as_documented():
  assert (len(data.SIZES), len(data.COLOURS), len(data.SHAPES), len(data.POSITIONS),
          len(data.BACKGROUNDS)) == (2, 6, 4, 5, 3)
  train_scenes, held = data.split()
  assert len(train_scenes) + len(held) == 720 and len(held) == 108
  assert not set(train_scenes) & set(held)
  for scene in held:  # every held-out value still appears in training, in other captions
    for attribute in data.ATTRIBUTES:
      assert any(getattr(s, attribute) == getattr(scene, attribute) for s in train_scenes)
  scene = data.Scene("small", "red", "triangle", "top left", "gray")
  assert scene.caption == "a small red triangle in the top left on a gray background"
  assert data.parse_caption(scene.caption.upper()) == scene
  assert data.parse_caption("a photo of a cat") is None


def test_dataset_is_deterministic_and_never_yields_held_out_captions():
  a, scenes_a = data.sample(64, seed=3)
  b, scenes_b = data.sample(64, seed=3)
  c, _ = data.sample(64, seed=4)
  assert a.shape == (64, 64, 64, 3) and a.dtype == np.uint8
  assert np.array_equal(a, b) and scenes_a == scenes_b
  assert not np.array_equal(a, c)
  _, many = data.sample(2000, seed=5)
  assert not set(many) & set(data.split()[1])


def test_checker_reads_the_generators_own_images():
  images, scenes = data.sample(1500, seed=11, scenes=tuple(data.all_scenes()))
  scores = checker.score(images, scenes)
  assert all(scores[a] >= 0.99 for a in data.ATTRIBUTES), scores


def test_checker_is_not_lenient():
  images, scenes = data.sample(300, seed=12, scenes=tuple(data.all_scenes()))
  # Each image against another caption: the attributes that differ must be caught.
  shuffled = scenes[1:] + scenes[:1]
  scores = checker.score(images, shuffled)
  assert scores["joint"] < 0.05
  for a in data.ATTRIBUTES:
    agree = np.mean([getattr(s, a) == getattr(t, a) for s, t in zip(scenes, shuffled)])
    assert scores[a] <= agree + 0.01  # no more hits than the captions' chance agreement
  blank = np.full((64, 64, 3), 128, np.uint8)
  assert checker.read(blank) == {"background": "gray", "size": None, "colour": None,
                                 "shape": None, "position": None}


def test_vocabulary_is_the_grammars_tokens():
  ids = tokenize([s.caption for s in data.all_scenes()] + [""])
  assert tuple(sorted(set(ids.flatten().tolist()))) == specs.SHAPES_VOCABULARY


def test_pruned_text_encoder_maps_unknown_words_to_one_row():
  module = specs.COMPONENT_SPECS["shapes-text"].build()
  assert module.text_model.get_input_embeddings().num_embeddings == 29
  vocabulary = specs.SHAPES_VOCABULARY
  a = module(tokenize(["a red zebra"], vocabulary=vocabulary))
  b = module(tokenize(["a red giraffe"], vocabulary=vocabulary))  # both unknown: row 0
  c = module(tokenize(["a red circle"], vocabulary=vocabulary))
  assert torch.equal(a, b) and not torch.allclose(a, c)


def _losses(path):
  with open(path) as f:
    return [json.loads(line)["loss"] for line in f]


def test_train_demo_short_run_loss_decreases(tmp_path):
  out = tmp_path / "run"
  assert cli.main(["train-demo", "--out", str(out), "--steps", "50", "--batch", "24"]) == 0
  diffusion = _losses(out / "swish-relu.loss.jsonl")
  autoencoder = _losses(out / "autoencoder.loss.jsonl")
  text = _losses(out / "text_encoder.loss.jsonl")
  assert len(diffusion) == 50 and len(autoencoder) == 12 and len(text) == 12
  assert np.mean(text[-4:]) < np.mean(text[:4])
  assert np.mean(diffusion[-10:]) < np.mean(diffusion[:10])
  assert np.mean(autoencoder[-4:]) < np.mean(autoencoder[:4])
  # The written weights are a whole pipeline that the shapes spec loads, shapes checked.
  pipe = pipeline.open_pipeline("shapes", weights=str(out / "shapes.safetensors"))
  assert pipe.build("vae_decoder")(torch.zeros(1, 8, 8, 8)).shape == (1, 3, 64, 64)


def test_train_demo_resumes_exactly(tmp_path, monkeypatch):
  cfg = train.TrainConfig(steps=12, batch=8, ae_steps=2, ae_batch=4, dataset=256,
                          checkpoint_every=5, warmup=2, text_steps=2, text_batch=16)
  encoder, _ = train.train_autoencoder(cfg, str(tmp_path), progress=False)
  latents, ids = train.encoded_dataset(cfg, encoder, str(tmp_path), progress=False)
  text_encoder = train.pretrain_text_encoder(cfg, str(tmp_path), progress=False)
  straight, losses = train.train_diffusion(cfg, "swish-relu", text_encoder, latents, ids,
                                           str(tmp_path / "a"), progress=False)

  calls = {"n": 0}
  real_loss = train.F.mse_loss

  def dying_loss(*args, **kwargs):
    calls["n"] += 1
    if calls["n"] == 8:  # after the checkpoint at step 5
      raise KeyboardInterrupt
    return real_loss(*args, **kwargs)

  resumed_dir = str(tmp_path / "b")
  os.makedirs(resumed_dir)
  monkeypatch.setattr(train.F, "mse_loss", dying_loss)
  with pytest.raises(KeyboardInterrupt):
    train.train_diffusion(cfg, "swish-relu", text_encoder, latents, ids, resumed_dir,
                          progress=False)
  monkeypatch.setattr(train.F, "mse_loss", real_loss)
  assert os.path.exists(os.path.join(resumed_dir, "swish-relu.state.pt"))
  resumed, resumed_losses = train.train_diffusion(cfg, "swish-relu", text_encoder, latents,
                                                  ids, resumed_dir, progress=False)
  assert resumed_losses == losses
  for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
    assert torch.equal(a, b), name


def test_shipped_text_encoder_carries_every_attribute_past_the_caption():
  # The UNet's cross-attention weighs the padding tokens after the caption as much as the
  # words: changing any one word must move them, the shape word as much as the others
  # (trained jointly with the UNet, the shape word left them unmoved).
  pipe = pipeline.open_pipeline("shapes")
  encoder = pipe.build("text_encoder")
  moved = {a: [] for a in data.ATTRIBUTES}
  with torch.no_grad():
    for scene in data.split()[1][:12]:
      base = encoder(tokenize([scene.caption], vocabulary=pipe.vocabulary))[0, 20:]
      for a in data.ATTRIBUTES:
        other = next(v for v in data.VALUES[a] if v != getattr(scene, a))
        changed = dataclasses.replace(scene, **{a: other})
        ids = tokenize([changed.caption], vocabulary=pipe.vocabulary)
        moved[a].append(float((encoder(ids)[0, 20:] - base).norm()))
  means = {a: np.mean(v) for a, v in moved.items()}
  assert min(means.values()) > 0.5 * max(means.values()), means


@pytest.mark.parametrize("name", ["shapes", "shapes-gelu", "shapes-softmax"])
def test_shipped_weights_load(name):
  pipe = pipeline.open_pipeline(name)
  for component in specs.COMPONENTS:
    module = pipe.build(component)  # load_state checks every name and shape
    assert all(torch.isfinite(p).all() for p in module.parameters())
  size = os.path.getsize(pipeline.shipped_weights(specs.pipeline_spec(name)))
  assert size < 8 * 2**20


# What the shipped default model follows (edgediff/assets/shapes/MODEL_CARD.md: 97.5% or
# more per attribute on 200 held-out captions).
FOLLOWED = data.ATTRIBUTES


def test_default_model_follows_held_out_captions(tmp_path, capsys):
  assert pipeline.DEFAULT_PIPELINE == "shapes"
  scene = data.split()[1][0]
  out = tmp_path / "x.png"
  assert cli.main(["generate", "--prompt", scene.caption, "--out", str(out)]) == 0
  from PIL import Image

  found = checker.read(np.asarray(Image.open(out).convert("RGB")))
  assert {a: found[a] for a in FOLLOWED} == {a: getattr(scene, a) for a in FOLLOWED}, found
  printed = capsys.readouterr().out
  assert "adherence checker: " in printed and f"colour {scene.colour}" in printed
  # A small sample of the model card's measurement, as a regression guard.
  scores, images, _ = adherence.measure(gen.torch_backend(pipeline.open_pipeline()), n=24,
                                        progress=False)
  assert min(scores[a] for a in FOLLOWED) >= 0.9 and scores["joint"] >= 0.8, scores
  # adherence --grid's sheet: 10 to a row, in order.
  import io

  sheet = np.asarray(Image.open(io.BytesIO(adherence.contact_sheet(images))))
  assert sheet.shape == (3 * 64, 10 * 64, 3)
  assert (sheet[64:128, 192:256] == images[13]).all() and not sheet[128:, 256:].any()
