"""--int8 --target cpu|gpu|npu: which candidate is chosen for the phone's processor."""

import json

from edgediff import cli
from edgediff.export import exporter


def _candidate(latency, noise=0.5, size=100, snr=30.0, passed=True, **more):
  return {"passed": passed, "total_latency_ms": latency, "latency_noise_ms": noise,
          "bytes": size, "worst_snr_db": snr, **more}


def test_cpu_calls_a_difference_within_the_noise_a_tie_won_by_the_smaller():
  tied = {"int8_dynamic": _candidate(10.0, size=300), "int8_static": _candidate(10.4, size=100)}
  chosen, why = exporter.choose(tied)
  assert chosen == "int8_static" and "within the measured noise" in why
  apart = {"int8_dynamic": _candidate(10.0, size=300), "int8_static": _candidate(12.0, size=100)}
  assert exporter.choose(apart)[0] == "int8_dynamic"
  same_size = {"int8_dynamic": _candidate(10.0, snr=25.0), "int8_static": _candidate(10.2)}
  assert exporter.choose(same_size)[0] == "int8_static"  # the more accurate
  failing = {"int8_dynamic": _candidate(1.0, passed=False), "int8_static": _candidate(50.0)}
  assert exporter.choose(failing) == (
      "int8_static", "the only one of the int8 recipes that passed the parity gate")
  assert exporter.choose({"int8_dynamic": _candidate(1.0, passed=False)})[0] is None


def test_gpu_prefers_fewer_ops_on_the_cpu_then_fp16():
  both_whole = {"int8_weight_only": _candidate(1.0, size=50, gpu_on_cpu=[]),
                "fp16": _candidate(9.0, size=100, gpu_on_cpu=[])}
  chosen, why = exporter.choose(both_whole, "gpu")
  assert chosen == "fp16" and "GPU analyzer" in why
  split = {"int8_weight_only": _candidate(1.0, gpu_on_cpu=[]),
           "fp16": _candidate(1.0, gpu_on_cpu=["vae_decoder:RELU_0_TO_1"])}
  assert exporter.choose(split, "gpu")[0] == "int8_weight_only"


def _one_prompt(tmp_path):
  # One prompt records 2 text-encoder inputs, fewer than the gate holds out: every
  # calibrated candidate fails before its recording.
  prompts = tmp_path / "one.txt"
  prompts.write_text("a red circle\n")
  return ["export", "md-tiny", "--fmt", "tflite", "--int8", "--component", "text_encoder",
          "--calib-prompts", str(prompts), "--out", str(tmp_path / "out")]


def test_npu_fails_clearly_without_a_full_integer_artifact(tmp_path, capsys):
  assert cli.main(_one_prompt(tmp_path) + ["--target", "npu"]) == 2
  err = capsys.readouterr().err
  assert "--target npu: no full-integer artifact passed the parity gate" in err
  assert "int8_static:" in err and "w8a16:" in err
  assert not (tmp_path / "out" / "md-tiny" / "tflite" / "int8_dynamic").exists()  # not tried


def test_target_needs_int8(capsys):
  assert cli.main(["export", "md-tiny", "--fmt", "tflite", "--target", "gpu"]) == 2
  assert "use it with --int8" in capsys.readouterr().err


def test_gpu_target_checks_every_candidate_in_the_analyzer(tmp_path, capsys):
  assert cli.main(_one_prompt(tmp_path) + ["--target", "gpu"]) == 3  # int8_static failed
  out = capsys.readouterr().out
  chosen = out.split("chosen recipe: ")[1].split()[0]
  assert chosen == "fp16"  # every candidate leaves the same embedding lookup to the CPU
  folder = tmp_path / "out" / "md-tiny" / "tflite" / chosen
  selection = json.loads((folder / "manifest.json").read_text())["int8_selection"]
  assert selection["target"] == "gpu"
  for recipe in ("fp16", "int8_dynamic", "int8_weight_only"):
    assert selection["candidates"][recipe]["gpu_on_cpu"] == ["text_encoder:EMBEDDING_LOOKUP"]
  assert "failed" in selection["candidates"]["int8_static"]
