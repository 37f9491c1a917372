import json

from edgediff import cli, pipeline
from edgediff.export import exporter


def test_bench_table_json_and_results_file(tmp_path, capsys):
  pipe = pipeline.open_pipeline("shapes")
  for fmt, recipe in (("onnx", "fp32"), ("tflite", "int8_dynamic")):
    exporter.export_pipeline(pipe, exporter.ExportOptions(
        fmt=fmt, out=str(tmp_path / "out"), recipe=recipe, components=("vae_decoder",)))
  results = tmp_path / "results.jsonl"
  code = cli.main(["bench", str(tmp_path / "out"), "--runs", "3", "--threads", "1",
                   "--results", str(results), "--json"])
  assert code == 0
  record = json.loads(capsys.readouterr().out)
  backends = sorted(r["backend"] for r in record["rows"])
  assert backends == ["onnx/fp32", "tflite/int8_dynamic", "torch/fp32"]  # PyTorch once
  for row in record["rows"]:
    assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"] * 0.999
    assert row["peak_rss_mb"] > 50 and row["runs"] == 3 and row["threads"] == 1
  assert record["machine"]["cores"] >= 1
  saved = [json.loads(line) for line in results.read_text().splitlines()]
  assert len(saved) == 1 and saved[0]["rows"] == record["rows"]
  assert cli.main(["bench", str(tmp_path / "out"), "--runs", "2", "--results", str(results)]) == 0
  assert "vae_decoder" in capsys.readouterr().out
  assert len(results.read_text().splitlines()) == 2


def test_op_profiles(tmp_path, capsys):
  pipe = pipeline.open_pipeline("shapes")
  for fmt, recipe in (("onnx", "int8_dynamic"), ("tflite", "fp32")):
    exporter.export_pipeline(pipe, exporter.ExportOptions(
        fmt=fmt, out=str(tmp_path), recipe=recipe, components=("vae_decoder",)))
  code = cli.main(["bench", str(tmp_path), "--runs", "2", "--threads", "1", "--results", "",
                   "--ops", "--json"])
  assert code == 0
  profiles = {p["backend"]: p for p in json.loads(capsys.readouterr().out)["ops"]}
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
  assert cli.main(["bench", str(tmp_path), "--runs", "2", "--results", "", "--ops"]) == 0
  assert "XNNPACK partitions" in capsys.readouterr().out


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
