"""Rewriting a .tflite flatbuffer: weights inline and legacy op codes set (for older
readers), or more tensors made graph outputs (for reading them in bounded memory).

Below both the exporter and the quantizers, which each rewrite files this way.
"""

import os

from edgediff import atomic

FLATBUFFER_LIMIT = 2 * 1024**3  # a .tflite flatbuffer cannot exceed 2 GB
# Buffers at file offsets and unset legacy op codes, as ai-edge-quantizer writes them:
PLACEHOLDER_FOR_GREATER_OP_CODES = 127  # the schema's deprecated_builtin_code for codes > 127
BUFFER_ALIGNMENT = 16  # as the TFLite schema's force_align on Buffer.data


def normalize(path: str) -> bool:
  """Rewrites the .tflite at `path` so that every reader sees what the newest one does:
  weights inline in the flatbuffer and every operator code's `deprecated_builtin_code` set.
  Returns whether the file changed; its numbers do not.

  ai-edge-quantizer stores buffers over 256 KiB after the flatbuffer, at file offsets (a
  format extension meant for models over 2 GB), and leaves `deprecated_builtin_code` at 0:
  readers of the schema before v3a read only that field and so take QUANTIZE and
  DEQUANTIZE for ADD, and older GPU-delegate analyzers flag the ops whose weights sit at
  offsets. Files of 2 GB and more must keep their offsets and are left alone.
  """
  if os.path.getsize(path) >= FLATBUFFER_LIMIT:
    return False
  packed = _repacked(path)
  if packed is None:
    return False
  atomic.write_bytes(path, packed)
  return True


def with_outputs(path: str, tensors: list[int], dst: str) -> None:
  """Writes to `dst` the model at `path` with the tensors of index `tensors` added to its
  main subgraph's outputs (an interpreter keeps a graph's outputs alive to the end of a
  call, and reuses the memory of every other intermediate tensor). Indices stay the same."""
  atomic.write_bytes(dst, _repacked(path, outputs=tensors))


def _repacked(path: str, outputs: list[int] | None = None) -> memoryview | None:
  """`_inlined` of the file at `path`, mapped, not read: the buffers are views into it, and
  the one copy held is the builder's (a 1.7 GB fp16 SD-1.5 UNet adds 1.7 GB, not three
  times that)."""
  import mmap

  with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
    return _inlined(data, outputs)  # its views into the mapping are gone when it returns


def _inlined(data, outputs: list[int] | None = None) -> memoryview | None:
  """The flatbuffer in `data` packed again with its buffers inline and legacy op codes set
  (and `outputs` added to the main subgraph's); None when it already is so."""
  import flatbuffers
  import numpy as np
  from ai_edge_litert import schema_py_generated as schema

  model = schema.ModelT.InitFromPackedBuf(data, 0)
  changed = False
  if outputs:
    main = model.subgraphs[0]
    have = [int(i) for i in main.outputs]
    main.outputs = have + [i for i in outputs if i not in have]
    changed = True
  for code in model.operatorCodes or []:
    legacy = min(code.builtinCode, PLACEHOLDER_FOR_GREATER_OP_CODES)
    if code.deprecatedBuiltinCode != legacy:
      code.deprecatedBuiltinCode, changed = legacy, True
  aligned = _aligned_buffer_class()
  for buffer in model.buffers or []:
    if buffer.offset > 1:  # 1 marks "at an offset, not yet placed" while a writer works
      buffer.data = np.frombuffer(data, np.uint8, count=buffer.size, offset=buffer.offset)
      buffer.offset, buffer.size, changed = 0, 0, True
    buffer.__class__ = aligned
  if not changed:
    return None
  builder = flatbuffers.Builder(len(data) + 1024)
  builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
  return memoryview(builder.Bytes)[builder.Head():]


def _aligned_buffer_class():
  from ai_edge_litert import schema_py_generated as schema

  class AlignedBuffer(schema.BufferT):
    """Packs its bytes 16-byte aligned, as TFLite's own converter does (the generated
    BufferT.Pack aligns uint8 data to 1 byte, which kernels reading floats in place may
    not accept)."""

    def Pack(self, builder):
      if self.data is None or not len(self.data):
        return super().Pack(builder)
      payload = self.data.tobytes()
      builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
      builder.head -= len(payload)
      builder.Bytes[builder.head:builder.head + len(payload)] = payload
      vector = builder.EndVector()
      schema.BufferStart(builder)
      schema.BufferAddData(builder, vector)
      return schema.BufferEnd(builder)

  return AlignedBuffer
