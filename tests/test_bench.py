import contextlib
import io
import json

import pytest

from edgediff import cli, pipeline
from edgediff.export import exporter


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  """The shapes decoder in ONNX int8_dynamic (integer kernels) and TFLite fp32 (XNNPACK)."""
  out = tmp_path_factory.mktemp("bench")
  pipe = pipeline.open_pipeline("shapes")
  for fmt, recipe in (("onnx", "int8_dynamic"), ("tflite", "fp32")):
    exporter.export_pipeline(pipe, exporter.ExportOptions(
        fmt=fmt, out=str(out), recipe=recipe, components=("vae_decoder",)))
  return out


@pytest.fixture(scope="module")
def record(exports, tmp_path_factory):
  """One `edgediff bench --json --ops` run over both exports, and its results file."""
  results = tmp_path_factory.mktemp("results") / "results.jsonl"
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    code = cli.main(["bench", str(exports), "--runs", "3", "--threads", "1",
                     "--results", str(results), "--json", "--ops"])
  assert code == 0
  return json.loads(out.getvalue()), results


def test_bench_table_json_and_results_file(exports, record, capsys):
  record, results = record
  backends = sorted(r["backend"] for r in record["rows"])
  assert backends == ["onnx/int8_dynamic", "tflite/fp32", "torch/fp32"]  # PyTorch once
  for row in record["rows"]:
    assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"] * 0.999
    assert row["peak_rss_mb"] > 50 and row["runs"] == 3 and row["threads"] == 1
  assert record["machine"]["cores"] >= 1
  saved = [json.loads(line) for line in results.read_text().splitlines()]
  assert len(saved) == 1 and saved[0]["rows"] == record["rows"]
  # The table, with the op profiles, and one more line in the same results file.
  assert cli.main(["bench", str(exports), "--runs", "2", "--results", str(results),
                   "--ops"]) == 0
  text = capsys.readouterr().out
  assert "vae_decoder" in text and "XNNPACK partitions" in text
  assert len(results.read_text().splitlines()) == 2


def test_op_profiles(record):
  profiles = {p["backend"]: p for p in record[0]["ops"]}
  onnx = profiles["onnx"]
  # ORT's kernel times, per op type, descending; dynamic int8 runs integer kernels.
  assert [o["ms"] for o in onnx["ops"]] == sorted((o["ms"] for o in onnx["ops"]), reverse=True)
  assert abs(sum(o["share"] for o in onnx["ops"]) - 1) < 0.01
  assert {"ConvInteger", "DynamicQuantizeMatMul"} & {o["op"] for o in onnx["ops"]}
  tflite = profiles["tflite"]
  total = sum(tflite["ops"].values())
  assert tflite["ops"]["CONV_2D"] > 0 and tflite["partitions"] >= 1
  # Every op is either in a delegate partition or counted outside.
  assert tflite["delegated"] + sum(tflite["outside"].values()) == total
  assert "CONV_2D" not in tflite["outside"]  # XNNPACK takes float convolutions


def test_time_per_image_counts_guidance_calls_by_the_exports_batch():
  from edgediff import bench

  def rows(batch):
    return [{"backend": "onnx/fp32", "component": c, "median_ms": ms, "batch": batch}
            for c, ms in (("text_encoder", 10.0), ("unet", 100.0), ("vae_decoder", 50.0))]

  assert bench.pipeline_seconds(rows(1), steps=8, guidance=False)["onnx/fp32"] == 0.86
  # Batch 1 with guidance: two text encoder and two UNet calls per step.
  assert bench.pipeline_seconds(rows(1), steps=8, guidance=True)["onnx/fp32"] == 1.67
  # Batch 2 (--cfg): both branches in each call, already in its timings.
  assert bench.pipeline_seconds(rows(2), steps=8, guidance=True)["onnx/fp32"] == 0.86


@pytest.mark.parametrize("argv,field,value", [
    # --guidance is a scale in every command; bench's bare --guidance, its old flag, is 7.5.
    (["bench", "d"], "guidance", 1.0),
    (["bench", "d", "--guidance"], "guidance", 7.5),
    (["bench", "d", "--guidance", "3"], "guidance", 3.0),
    (["generate", "--prompt", "p", "--guidance", "3", "--image", "x.png"], "guidance", 3.0),
    # Files a command writes have their own flag; the old --out spellings still reach them.
    (["generate", "--prompt", "p", "--out", "x.png"], "image", "x.png"),
    (["adb-bench", "d", "--benchmark-binary", "b", "--out", "r.json"], "results", "r.json"),
    (["adb-bench", "d", "--benchmark-binary", "b"], "results", "adb_bench.json"),
])
def test_flags_mean_one_thing_across_commands(argv, field, value):
  assert getattr(cli.build_parser().parse_args(argv), field) == value
