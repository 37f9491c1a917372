import json

from edgediff import cli, pipeline
from edgediff.export import exporter


def test_bench_table_json_and_results_file(tmp_path, capsys):
  pipe = pipeline.open_pipeline("md-tiny")
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
