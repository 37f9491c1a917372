"""`edgediff parity DIR`: re-run the gate on an exported folder.

Two checks per component: the golden file through the runtime against its stored PyTorch
outputs, and fresh inputs (another seed) through the runtime against PyTorch rebuilt from
the manifest's source. An artifact or golden file whose sha256 no longer matches the
manifest fails the check, naming the file.
"""

import os

from edgediff import manifest as manifest_lib, metrics
from edgediff import pipeline as pipeline_lib
from edgediff import runtimes
from edgediff.errors import EdgediffError
from edgediff.export import exporter, inputs as inputs_lib
from edgediff.quant import recipes

FRESH_SEED = 1


def find_manifests(root: str) -> list[str]:
  if not os.path.isdir(root):
    raise EdgediffError(f"{root}: no such folder")
  found = sorted(d for d, _, files in os.walk(root) if manifest_lib.MANIFEST in files)
  if not found:
    raise EdgediffError(f"{root}: no {manifest_lib.MANIFEST} in it or below it")
  return found


def check_folder(folder: str) -> list[dict]:
  manifest = manifest_lib.read(folder)
  thresholds = recipes.thresholds(manifest["recipe"])
  pipe = pipeline_lib.open_source(manifest["source"])
  results = []
  text_encoder = None
  for component, entry in manifest["components"].items():
    path = os.path.join(folder, entry["file"])
    if not os.path.isfile(path):
      raise EdgediffError(f"{path}: missing ({component} artifact listed in the manifest)")
    runner = runtimes.load_runner(manifest["format"], path)
    output = manifest_lib.output_name(entry)
    feeds, golden = manifest_lib.golden_feeds(folder, entry)
    golden_report = metrics.compare(component, [golden[f"expected_{output}"]],
                                   [runner(feeds)[output]], thresholds)
    module = pipe.build(component)
    if component == "unet" and text_encoder is None:
      text_encoder = pipe.build("text_encoder", required=False)
    samples = inputs_lib.representative_inputs(
        pipe, component, module, manifest["batch"], manifest["latent_size"],
        n=exporter.PARITY_SAMPLES, seed=FRESH_SEED, text_encoder=text_encoder)
    nhwc = manifest_lib.is_nhwc(entry)
    references = [manifest_lib.to_layout({output: r}, nhwc)[output]
                  for r in exporter.torch_outputs(module, samples)]
    actuals = [runner(manifest_lib.to_layout(f, nhwc))[output] for f in samples]
    fresh_report = metrics.compare(component, references, actuals, thresholds)
    changed = [f for f, digest in ((entry["file"], entry["sha256"]),
                                   (entry["golden"], entry.get("golden_sha256")))
               if digest and manifest_lib.sha256(os.path.join(folder, f)) != digest]
    # An artifact that is not the one gated fails, whatever it computes now.
    results.append({
        "folder": folder, "component": component, "sha256_ok": not changed,
        "changed": changed, "golden": golden_report.to_json(), "fresh": fresh_report.to_json(),
        "passed": golden_report.passed and fresh_report.passed and not changed,
    })
  return results
