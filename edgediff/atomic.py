"""Atomic file writes: a temporary name beside the target, then a rename.

A killed run leaves the old file or none, never half of one.
"""

import json
import os


def write_bytes(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def copy_file(src: str, path: str) -> None:
  """An atomic copy of `src` to `path`."""
  import shutil

  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    shutil.copyfile(src, tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, data) -> None:
  write_bytes(path, json.dumps(data, indent=1).encode())
