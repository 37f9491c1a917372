"""Where an ONNX model's weights go: inline, or in an external data file beside it.

One owner for the line, read by the exporter and by every quantizer that writes a model
(fp16 conversion, static int8), so that all of them lay their files out the same way.
"""

# A protobuf cannot exceed 2 GB, and torch.onnx moves weights to external data above about
# 1.5 GB whatever it is told: past that size edgediff asks for external data itself so that
# the file layout is predictable.
EXTERNAL_DATA_BYTES = 1_500_000_000


def needs_external_data(weights_bytes: int) -> bool:
  return weights_bytes > EXTERNAL_DATA_BYTES


def external_data_files(path: str) -> list[str]:
  """The files (beside `path`) that hold an .onnx model's external data, if any."""
  import onnx

  model = onnx.load(path, load_external_data=False)
  names = {entry.value for init in model.graph.initializer
           if init.data_location == onnx.TensorProto.EXTERNAL
           for entry in init.external_data if entry.key == "location"}
  return sorted(names)
