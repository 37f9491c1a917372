"""An export folder's manifest.json: reading and writing it, and what it says about each
artifact (golden inputs, layout, output name, whether a component is current).

The exporter writes it; generate, e2e, check, bench, adb and the model card read it through
this module, so that none of them works out a key, a layout or an output name again.
"""

import hashlib
import json
import os

import numpy as np

from edgediff import atomic
from edgediff.errors import EdgediffError, first_line

MANIFEST = "manifest.json"
# The components of a pipeline and of a whole export, in the order they run.
COMPONENTS = ("text_encoder", "unet", "vae_decoder")


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read(folder: str) -> dict | None:
  """The manifest in `folder` (None when there is none); EdgediffError naming the file when
  it is not one that edgediff wrote (edited, truncated, or another file by that name)."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise EdgediffError(f"{path}: not a manifest edgediff wrote ({first_line(e)})") from None
  if not isinstance(manifest, dict) or not isinstance(manifest.get("components"), dict):
    raise EdgediffError(f"{path}: not a manifest edgediff wrote (no components)")
  return manifest


def write(folder: str, manifest: dict) -> None:
  """Writes the manifest atomically; an in-memory "folder" key is not written."""
  atomic.write_json(os.path.join(folder, MANIFEST),
                    {k: v for k, v in manifest.items() if k != "folder"})


def is_current(entry: dict | None, folder: str, settings: dict) -> bool:
  """A component passed with these settings and its files are the ones it passed with."""
  if not entry or not entry.get("passed") or entry.get("settings") != settings:
    return False
  path = os.path.join(folder, entry["file"])
  for data in entry.get("external_data") or []:
    data_path = os.path.join(folder, data["file"])
    if not os.path.isfile(data_path) or os.path.getsize(data_path) != data["bytes"]:
      return False
  golden = os.path.join(folder, entry["golden"])
  if not os.path.isfile(golden) or sha256(golden) != entry.get("golden_sha256"):
    return False
  if entry.get("ort") and not os.path.isfile(os.path.join(folder, entry["ort"])):
    return False
  return os.path.isfile(path) and sha256(path) == entry["sha256"]


def golden_feeds(folder: str, entry: dict) -> tuple[dict[str, np.ndarray], np.lib.npyio.NpzFile]:
  """A component's golden inputs (and the whole golden file, for its expected outputs)."""
  golden = np.load(os.path.join(folder, entry["golden"]))
  return {i["name"]: golden[i["name"]] for i in entry["inputs"]}, golden


def output_name(entry: dict) -> str:
  return entry["outputs"][0]["name"]


def is_nhwc(entry: dict) -> bool:
  return entry.get("layout") == "NHWC"


def to_layout(arrays: dict[str, np.ndarray], nhwc: bool) -> dict[str, np.ndarray]:
  """NCHW -> NHWC for the 4-D tensors when the artifact's interface is channel-last."""
  if not nhwc:
    return arrays
  return {k: np.ascontiguousarray(np.moveaxis(v, 1, -1)) if v.ndim == 4 else v
          for k, v in arrays.items()}


def from_layout(array: np.ndarray, nhwc: bool) -> np.ndarray:
  """An artifact's channel-last 4-D tensor back to NCHW."""
  return np.moveaxis(array, -1, 1) if nhwc and array.ndim == 4 else array
