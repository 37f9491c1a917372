"""Export a pipeline: build -> convert -> run in the runtime -> parity gate -> manifest.

Layout: OUT/<pipeline>/<fmt>/<recipe>/{text_encoder,unet,vae_decoder}.<ext>, one golden
.npz per component, and manifest.json. Every file is written to a temporary name and renamed,
the manifest last, so a killed export leaves no half-written artifact or manifest. A re-run
skips a component whose artifact matches a passing manifest entry made with the same
settings, unless forced.
"""

import contextlib
import dataclasses
import datetime
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import time
from importlib import metadata

import numpy as np
import torch

import edgediff
from edgediff import atomic, console, manifest as manifest_lib, memory, metrics, onnx_files
from edgediff import pipeline as pipeline_lib
from edgediff import runtimes, tflite_files
from edgediff.console import libraries_quiet, log
from edgediff.errors import EdgediffError, first_line
from edgediff.export import compat, inputs as inputs_lib, onnx as onnx_lib, tflite as tflite_lib
from edgediff.models import text_encoder as text_encoder_lib
from edgediff.quant import calibration, onnx_static, recipes, tflite_static
from edgediff.specs import COMPONENTS

EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite"}
PARITY_SAMPLES = 4
CALIBRATION_FILE = "calibration.npz"  # the recording a calibrated export used, beside it


@dataclasses.dataclass(frozen=True)
class ExportOptions:
  fmt: str
  out: str = "out"
  recipe: str = "fp32"
  components: tuple[str, ...] = COMPONENTS
  batch: int = 1  # 2 with classifier-free guidance
  latent_size: int | None = None  # None: the pipeline's default
  force: bool = False
  ort: bool = False  # also write the .ort mobile format (onnx only)
  calib_prompts: tuple[str, ...] | None = None  # None: the shipped prompt set
  nhwc: bool = False  # channel-last 4-D inputs and outputs (tflite only)
  max_memory_gb: float | None = None  # the preflight's budget; None: the RAM available now
  skip_runtimes: tuple[str, ...] = ()  # old runtimes (compat.NAMES) the gate leaves out
  guidance: float = 1.0  # the scale the app samples with: calibration records at it
  clamp: bool = True  # the decoder clamps its image to [0, 1]; False leaves it to the app


def runtime_versions() -> dict[str, str]:
  names = ("torch", "onnx", "onnxruntime", "litert-torch", "ai-edge-litert",
           "ai-edge-quantizer")
  return {n: metadata.version(n) for n in names}


def _settings(pipe, opts: ExportOptions, latent_size: int) -> dict:
  """Everything that changes what an export writes: a component is skipped on a re-run only
  when all of it is the same. The weights count by content (a path names a file, not what
  it holds now)."""
  return {"source": pipe.source, "weights_sha256": _weights_digests(pipe.source),
          "edgediff": edgediff.__version__, "recipe": opts.recipe,
          "thresholds": dataclasses.asdict(recipes.thresholds(opts.recipe)),
          "batch": opts.batch, "latent_size": latent_size, "nhwc": opts.nhwc, "ort": opts.ort,
          "calib_prompts": opts.calib_prompts and list(opts.calib_prompts),
          "guidance": opts.guidance, "vocabulary": list(pipe.vocabulary), "clamp": opts.clamp,
          "old_runtimes": [r.name for r in compat.for_format(opts.fmt, opts.skip_runtimes)]}


def _weights_digests(source: dict) -> list:
  """[path, sha256] of each weights file a source reads (none for seeded zoo weights)."""
  return [[path, manifest_lib.sha256(path)] for path, _, _ in _source_stamp(source)]


def artifact_files(path: str) -> list[str]:
  """The artifact at `path` and the files holding its external data (ONNX over ~1.5 GB)."""
  if not path.endswith(".onnx"):
    return [path]
  folder = os.path.dirname(path)
  return [path] + [os.path.join(folder, n) for n in onnx_files.external_data_files(path)]


def artifact_bytes(path: str, files: list[str] | None = None) -> int:
  """What the artifact takes on disk, its external data included (`files`: its
  artifact_files, when already listed)."""
  return sum(os.path.getsize(f) for f in files or artifact_files(path))


def torch_outputs(module, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
  return [runtimes.torch_call(module, f) for f in feeds]


def _write_float(opts: ExportOptions, module, samples: list[dict[str, np.ndarray]],
                 output_name: str, path: str) -> str | None:
  """Converts `module`. Writes the artifact itself where conversion is the whole recipe
  (returns None), or the fp32 model that a quantizer then reads (returns its path)."""
  feeds = {k: torch.from_numpy(v) for k, v in samples[0].items()}
  ext = EXTENSIONS[opts.fmt]
  if opts.recipe == "fp32" or (opts.fmt == "tflite" and opts.recipe not in recipes.CALIBRATED):
    if opts.fmt == "onnx":
      onnx_lib.export_onnx(module, feeds, (output_name,), path)
    else:
      tflite_lib.export_tflite(module, feeds, (output_name,), path, opts.recipe)
    return None
  fp32_path = path[: -len(ext)] + ".fp32" + ext
  if opts.fmt == "onnx":
    onnx_lib.export_onnx(module, feeds, (output_name,), fp32_path)
  else:
    tflite_lib.export_tflite(module, feeds, (output_name,), fp32_path)
  return fp32_path


def _quantize(opts: ExportOptions, fp32_path: str, path: str, samples, references,
              output_name: str, calib) -> dict | None:
  """Writes the `opts.recipe` artifact from the fp32 model; returns what a calibrated recipe
  did (None otherwise). `samples` and `references` are what fallback stops on. The fp32
  model and its data are removed."""
  info = None
  if opts.fmt == "onnx":
    if opts.recipe in recipes.CALIBRATED:
      info = onnx_static.quantize_with_fallback(fp32_path, path, opts.recipe, calib, samples,
                                                references, output_name,
                                                recipes.thresholds(opts.recipe))
      info["calibration_samples"] = len(calib)
    else:
      recipes.quantize_onnx(opts.recipe, fp32_path, path)
  else:  # litert-torch's fp32, then ai-edge-quantizer
    calib = tflite_static.calibration_subset(calib)
    info = tflite_static.quantize_with_fallback(
        fp32_path, path, opts.recipe, [manifest_lib.to_layout(f, opts.nhwc) for f in calib],
        samples,
        references, output_name, recipes.thresholds(opts.recipe))
    info["calibration_samples"] = len(calib)
  folder = os.path.dirname(path)
  for name in os.listdir(folder):  # the fp32 model and its data
    if name.startswith(os.path.basename(fp32_path)):
      os.remove(os.path.join(folder, name))
  return info


def _estimate(opts: ExportOptions, module, latent_size: int) -> memory.Estimate:
  weights = onnx_lib.param_bytes(module)
  feeds = {i.name: np.zeros(i.shape, i.dtype)
           for i in module.input_specs(opts.batch, latent_size)}
  return memory.estimate(opts.fmt, opts.recipe, weights, memory.activation_bytes(module, feeds),
                         slim=onnx_lib.slims(weights),
                         calibrated=opts.recipe in recipes.CALIBRATED)


def _fits(module, component: str, opts: ExportOptions, latent_size: int) -> memory.Estimate:
  """Refuses a component that cannot be exported here: over the flatbuffer limit (a fact of
  the format, checked first), or over the memory budget (an estimate of this machine)."""
  if opts.fmt == "tflite":
    tflite_lib.check_size(component, onnx_lib.param_bytes(module), opts.recipe)
  return _preflight(component, opts, _estimate(opts, module, latent_size))


def _preflight(component: str, opts: ExportOptions, est: memory.Estimate) -> memory.Estimate:
  """Refuses, before conversion, an export whose estimated peak exceeds the budget (the RAM
  available now, unless --max-memory)."""
  advice = ("export it at a smaller --resolution"
            + (", or with an uncalibrated recipe (--quant int8_dynamic)"
               if opts.recipe in recipes.CALIBRATED else "")
            + ", on a machine with more memory, or raise --max-memory if you know better")
  budget = None if opts.max_memory_gb is None else int(opts.max_memory_gb * memory.GB)
  memory.check(f"{component} ({opts.fmt} {opts.recipe})", est, budget, advice)
  return est


def _disk_bytes(opts: ExportOptions, est: memory.Estimate) -> int:
  """Disk an export of a component writes at once, at most: the float model, the quantized
  one beside it, the .ort copy, and for a calibrated recipe one more copy of the float model
  (ONNX: calibration's augmented model; TFLite: fallback's ranking copy); 5% and 256 KiB
  over for the golden files and headers."""
  fp32 = est.weights_bytes
  final = fp32 * tflite_lib.BYTES_PER_WEIGHT.get(opts.recipe, 1) // 4
  need = fp32 + (final if opts.recipe != "fp32" else 0) + (final if opts.ort else 0)
  if opts.recipe in recipes.CALIBRATED:
    need += fp32
  return int(need * 1.05) + 256 * 1024


def _remove_stale(folder: str) -> None:
  """Removes the .tmp-* folders of exports that were killed (their process is gone)."""
  for name in os.listdir(folder):
    if not name.startswith(".tmp-"):
      continue
    pid = name.rsplit("-", 1)[-1]
    if pid.isdigit() and not _alive(int(pid)):
      shutil.rmtree(os.path.join(folder, name), ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process
    return True
  return True


def _replace_into(tmp_dir: str, folder: str) -> None:
  # Data files first, the model file last: a reader never sees a model without its data.
  models = tuple(EXTENSIONS.values())
  names = sorted(os.listdir(tmp_dir), key=lambda n: n.endswith(models))
  model = names[-1] if names and names[-1].endswith(models) else None
  for name in names:
    if model:  # onnx 1.23 creates external data files 0600: give them the model file's mode
      shutil.copymode(os.path.join(tmp_dir, model), os.path.join(tmp_dir, name))
    os.replace(os.path.join(tmp_dir, name), os.path.join(folder, name))


def _laid_out(feeds: list[dict[str, np.ndarray]], outputs: list[np.ndarray], output_name: str,
              nhwc: bool) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
  """Inputs and their PyTorch outputs in the artifact's layout."""
  return ([manifest_lib.to_layout(f, nhwc) for f in feeds],
          [manifest_lib.to_layout({output_name: r}, nhwc)[output_name] for r in outputs])


def _io_json(arrays: dict[str, np.ndarray]) -> list[dict]:
  return [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items()]


def export_component(pipe, component: str, opts: ExportOptions, folder: str,
                     latent_size: int, text_encoder=None, calib=None,
                     estimate: memory.Estimate | None = None) -> dict:
  """Exports one component, gates it, and returns its manifest entry. `estimate`: its
  memory estimate, when already made (checked again against the RAM available now)."""
  started = time.perf_counter()
  module = pipe.build(component)  # _fits has refused what cannot fit a flatbuffer
  if component == "vae_decoder":
    module.clamp = opts.clamp
  output_name = module.output_names[0]
  if calib:  # a calibrated recipe: gate on recorded inputs that calibration does not see
    _check_recorded(component, len(calib), "")
    samples, calib = calibration.held_out(calib, PARITY_SAMPLES)
    parity_inputs = "held out of the calibration recording"
  else:
    samples = inputs_lib.representative_inputs(
        pipe, component, module, opts.batch, latent_size, n=PARITY_SAMPLES,
        text_encoder=text_encoder)
    parity_inputs = "representative"
  estimate = _preflight(component, opts, estimate or _estimate(opts, module, latent_size))
  references = torch_outputs(module, samples)
  # Fallback decides when to stop on calibration samples of its own, so that the gate's
  # held-out samples judge an artifact that nothing was tuned on.
  stop = calib and calibration.spread(calib, PARITY_SAMPLES, seed=1)
  stop_references = stop and torch_outputs(module, stop)
  if not all(np.isfinite(r).all() for r in references):
    raise EdgediffError(f"{component}: PyTorch fp32's own output is not finite on the gate's "
                        f"inputs (finite weights that overflow): there is nothing to match")
  # What the artifact takes and gives: the same tensors, channel-last with --nhwc.
  samples, references = _laid_out(samples, references, output_name, opts.nhwc)
  if stop:
    stop, stop_references = _laid_out(stop, stop_references, output_name, opts.nhwc)
  if opts.nhwc:
    import litert_torch

    module = litert_torch.to_channel_last_io(
        module, args=[i for i, v in enumerate(samples[0].values()) if v.ndim == 4],
        outputs=[0] if references[0].ndim == 4 else [])

  atomic.check_space(component, folder, _disk_bytes(opts, estimate))
  ext = EXTENSIONS[opts.fmt]
  tmp_dir = os.path.join(folder, f".tmp-{component}-{os.getpid()}")
  os.makedirs(tmp_dir, exist_ok=True)
  tmp_path = os.path.join(tmp_dir, component + ext)
  log(f"[{component}] converting to {opts.fmt} ({opts.recipe}) ...")
  try:
    with libraries_quiet():
      fp32_path = _write_float(opts, module, samples, output_name, tmp_path)
      del module  # the quantizers read the fp32 file: the module's weights are not needed
      memory.release()
      quant_info = fp32_path and _quantize(opts, fp32_path, tmp_path, stop, stop_references,
                                           output_name, calib)
      if opts.fmt == "onnx":  # every ONNX written, quantized ones too
        if opts.recipe == "int8_static":
          onnx_lib.raise_opset(tmp_path, onnx_lib.QDQ_OPSET)
        if opts.recipe != "w8a16":  # 16-bit QDQ is opset 21, IR 10: no older runtime reads it
          onnx_lib.set_ir_version(tmp_path)
        onnx_lib.check(tmp_path)
      else:  # weights inline and legacy op codes set, for older readers (under 2 GB)
        tflite_files.normalize(tmp_path)
    for i, r in enumerate((quant_info or {}).get("history", []), 1):
      kept = " (kept)" if i == quant_info["kept_round"] else ""
      log(f"[{component}] fallback round {i}: {r['float']} tensors in float, snr "
          f"{r['snr_db']:.1f} dB, pearson {r['pearson']:.6f}{kept}")
    if (quant_info or {}).get("stopped"):
      log(f"[{component}] fallback stopped: {quant_info['stopped']}")
    convert_s = time.perf_counter() - started
    runner = runtimes.load_runner(opts.fmt, tmp_path)
    actuals = [runner(f)[output_name] for f in samples]
    del runner
    report = metrics.compare(component, references, actuals, recipes.thresholds(opts.recipe))
    old = compat.check(opts.fmt, tmp_path, samples, references, output_name,
                       recipes.thresholds(opts.recipe), opts.skip_runtimes, log)
    golden = component + "_golden.npz"
    np.savez(os.path.join(tmp_dir, golden), **samples[0],
             **{f"expected_{output_name}": references[0]})
    ort_file = None
    if opts.ort:
      ort_file = os.path.basename(onnx_lib.export_ort(tmp_path))
    _replace_into(tmp_dir, folder)
  except OSError as e:
    if not atomic.no_space(e):
      raise
    raise EdgediffError(f"{component}: no space left in {folder} ({e.strerror}): free "
                        f"some or choose another --out; nothing of it was kept") from None
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)  # whatever a failed or killed step left
  path = os.path.join(folder, component + ext)
  files = artifact_files(path)
  wrong_in_old = compat.failures(old) if report.passed else []  # else said by the gate already
  passed = report.passed and not wrong_in_old
  status = "passed" if passed else "FAILED"
  also = f"; {compat.summary(old)}" if old else ""
  log(f"[{component}] parity {status}: {report.summary()}{also} (converted in "
      f"{convert_s:.1f} s, checked in {time.perf_counter() - started - convert_s:.1f} s)")
  for failure in wrong_in_old:
    log(f"[{component}] {failure}")
  return {
      "file": component + ext, "sha256": manifest_lib.sha256(path),
      "bytes": artifact_bytes(path, files),
      "external_data": [{"file": os.path.basename(f), "bytes": os.path.getsize(f)}
                        for f in files[1:]],
      "memory_estimate_gb": round(estimate.peak_bytes / memory.GB, 2),
      "layout": "NHWC" if opts.nhwc else "NCHW",
      "inputs": _io_json(samples[0]),
      "outputs": _io_json({output_name: references[0]}),
      "golden": golden, "golden_sha256": manifest_lib.sha256(os.path.join(folder, golden)),
      "ort": ort_file, "parity": report.to_json(), "passed": passed,
      "old_runtimes": old, "min_runtime": compat.min_runtime(opts.fmt, old),
      "parity_inputs": parity_inputs,
      "export_seconds": round(convert_s, 2), "quantization": quant_info,
      **({"clamped": opts.clamp} if component == "vae_decoder" else {}),
  }


def _source_stamp(source: dict) -> list:
  """Size and modification time of the weights a source reads, so that a cache keyed on it
  goes stale when the weights change."""
  paths = []
  if source.get("weights"):
    paths.append(source["weights"])
  if source.get("from_diffusers"):
    for sub in ("text_encoder", "unet", "vae"):
      folder = os.path.join(source["from_diffusers"], sub)
      paths += [os.path.join(folder, n) for n in sorted(os.listdir(folder))] if os.path.isdir(
          folder) else []
  return [[p, os.path.getsize(p), os.stat(p).st_mtime_ns] for p in paths if os.path.isfile(p)]


def _check_enough_prompts(pipe, opts: ExportOptions, components: list[str]) -> None:
  """Refuses, before the recording, a prompt set too small for the gate to hold out its
  samples: the text encoder and the decoder get one recorded input per prompt (the empty one
  included), the UNet one per prompt and step; --cfg pairs them."""
  prompts = len(opts.calib_prompts or pipe.prompts) + 1
  branches = 2 if opts.guidance != 1 else 1
  for component in components:
    calls = {"unet": calibration.STEPS * branches, "text_encoder": branches}.get(component, 1)
    _check_recorded(component, prompts * calls // opts.batch,
                    f"{prompts} prompts (the empty one included) give ")


def _check_recorded(component: str, recorded: int, why: str) -> None:
  if recorded <= PARITY_SAMPLES:
    raise EdgediffError(
        f"{component}: {why}{recorded} recorded calibration inputs, but {PARITY_SAMPLES} are "
        f"held out to gate on and at least one must calibrate: give more prompts with "
        f"--calib-prompts")


def _calibration(pipe, opts: ExportOptions, latent_size: int, folder: str) -> dict:
  """The calibration set: recorded along float sampling runs, or reused.

  The recording depends only on the pipeline, its weights, the latent size and the prompts,
  so it is kept once per pipeline in OUT/<pipeline>/calibration/<key>.npz and reused by every
  recipe and format that asks for the same; a copy goes beside the artifacts as
  calibration.npz.
  """
  prompts = list(opts.calib_prompts or pipe.prompts)
  settings = {"source": pipe.source, "stamp": _source_stamp(pipe.source),
              "latent_size": latent_size, "prompts": prompts, "guidance": opts.guidance,
              "steps": calibration.STEPS, "edgediff": edgediff.__version__}
  key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
  shared = os.path.join(opts.out, pipe.name, "calibration", key + ".npz")
  if os.path.isfile(shared):
    log(f"calibration: reusing {shared} ({len(prompts) + 1} prompts x {calibration.STEPS} "
        f"DDIM steps)")
    data = calibration.load_all(shared)
  else:
    log(f"calibration: recording {len(prompts) + 1} prompts x {calibration.STEPS} DDIM steps "
        f"at guidance {opts.guidance:g} in PyTorch fp32")
    started = time.perf_counter()
    data = calibration.record(pipe, latent_size, prompts, guidance=opts.guidance)
    calibration.save(data, shared)
    log(f"calibration: recorded {sum(len(v) for v in data.values())} inputs in "
        f"{time.perf_counter() - started:.0f} s")
  atomic.copy_file(shared, os.path.join(folder, CALIBRATION_FILE))
  return data


@dataclasses.dataclass
class ExportResult:
  """What an export wrote: its folder, and the manifest it wrote there."""
  folder: str
  manifest: dict

  @property
  def passed(self) -> bool:
    return bool(self.manifest.get("passed"))

  def failures(self) -> list[str]:
    """Each component's parity failures; where the gate passed, an old runtime's."""
    return [f for c in self.manifest["components"].values()
            for f in c["parity"]["failures"] or compat.failures(c.get("old_runtimes") or {})]

  def failed_candidates(self) -> dict[str, str]:
    """--int8's candidate recipes that produced no artifact, with the reason."""
    candidates = self.manifest.get("int8_selection", {}).get("candidates", {})
    return {r: c["failed"] for r, c in candidates.items() if "failed" in c}


def export_pipeline(pipe: pipeline_lib.Pipeline, opts: ExportOptions) -> ExportResult:
  """Exports the chosen components; the manifest is also written to the folder."""
  if opts.fmt not in EXTENSIONS:
    raise EdgediffError(f"unknown format {opts.fmt!r}; use onnx or tflite")
  recipes.check_recipe(opts.fmt, opts.recipe)
  if opts.ort and opts.fmt != "onnx":
    raise EdgediffError("--ort writes the ONNX Runtime mobile format: use it with --fmt onnx")
  if opts.batch == 2 and opts.guidance == 1:
    raise EdgediffError("--cfg exports a UNet that takes both guidance branches in one call: "
                        "give the guidance scale it will sample with (--guidance, above 1)")
  if opts.nhwc and opts.fmt != "tflite":
    raise EdgediffError("--nhwc changes the TFLite interface: use it with --fmt tflite")
  latent_size = opts.latent_size or pipe.latent_size
  folder = os.path.join(opts.out, pipe.name, opts.fmt, opts.recipe)
  atomic.check_folder(opts.out)
  created, parent = [], folder
  while parent and not os.path.isdir(parent):
    created.append(parent)
    parent = os.path.dirname(parent)
  os.makedirs(folder, exist_ok=True)
  try:
    with _locked(folder):
      return _export_into(pipe, opts, folder, latent_size)
  finally:
    for made in created:  # deepest first: a refused first export leaves no empty folders
      if os.path.isdir(made) and not os.listdir(made):
        os.rmdir(made)


LOCK = ".lock"


@contextlib.contextmanager
def _locked(folder: str):
  """One export at a time into `folder`: a second one is refused, not interleaved with the
  first (both would rename their files over each other's and race on the manifest). The
  lock file goes when the export ends; a process that opened it just before it went finds
  its inode gone and is refused too."""
  import fcntl

  path = os.path.join(folder, LOCK)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      if not os.path.exists(path) or os.stat(path).st_ino != os.fstat(fd).st_ino:
        raise BlockingIOError
    except BlockingIOError:
      raise EdgediffError(f"{folder}: another export is writing into it now; wait for it to "
                          f"end, or choose another --out") from None
    try:
      yield
    finally:
      os.remove(path)
  finally:
    os.close(fd)


def _export_into(pipe: pipeline_lib.Pipeline, opts: ExportOptions, folder: str,
                 latent_size: int) -> ExportResult:
  try:
    old = manifest_lib.read(folder) or {}
  except EdgediffError as e:  # nothing in it can be trusted: every component is redone
    log(f"{e}; exporting every component again")
    old = {}
  manifest = {
      "edgediff": edgediff.__version__, "runtimes": runtime_versions(),
      "pipeline": pipe.name, "format": opts.fmt, "recipe": opts.recipe,
      "source": pipe.source, "batch": opts.batch, "latent_size": latent_size,
      "prediction_type": pipe.prediction_type,
      "schedule": dataclasses.asdict(pipe.schedule),
      # What an app tokenizes with: these files map each token to the text encoder's input
      # id, the embedding row of a pruned vocabulary (the CLIP ids listed here).
      "tokenizer": list(text_encoder_lib.TOKENIZER_FILES),
      "vocabulary": list(pipe.vocabulary),
      "components": dict(old.get("components", {})),
  }
  if os.path.isfile(os.path.join(folder, old.get("calibration", "-"))):  # components kept
    manifest["calibration"] = old["calibration"]
  _remove_stale(folder)
  settings = _settings(pipe, opts, latent_size)
  todo = []
  for component in opts.components:
    entry = manifest["components"].get(component)
    if not opts.force and manifest_lib.is_current(entry, folder, settings):
      log(f"[{component}] up to date in {folder}; skipped (--force to redo)")
    else:
      todo.append(component)
  # Each export (and a calibration recording) is long work at full size: check first that
  # every component will fit, so that a refusal comes before any of them, not after one.
  estimates = {name: _fits(pipe.build(name), name, opts, latent_size) for name in todo}
  text_encoder = None
  calib = None
  for component in todo:
    if component == "unet" and text_encoder is None:
      # Real text embeddings of real prompts for the UNet's inputs.
      text_encoder = pipe.build("text_encoder", required=False)
    if opts.recipe in recipes.CALIBRATED and calib is None:
      _check_enough_prompts(pipe, opts, todo)
      calib = _calibration(pipe, opts, latent_size, folder)
      manifest["calibration"] = CALIBRATION_FILE
    entry = export_component(pipe, component, opts, folder, latent_size, text_encoder,
                             calib and calibration.batched(calib[component], opts.batch),
                             estimate=estimates[component])
    if component == "unet":
      text_encoder = None  # only the UNet's inputs need it
    memory.release()  # what the component's conversion used, before the next one starts
    entry["settings"] = settings
    manifest["components"][component] = entry
    manifest["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    manifest["passed"] = all(e["passed"] for e in manifest["components"].values())
    if component == todo[0]:  # beside the first artifact: a failed export leaves nothing
      text_encoder_lib.write_tokenizer(folder, pipe.tokenizer, pipe.vocabulary)
    manifest_lib.write(folder, manifest)
  return ExportResult(folder, manifest)


def _latency_ms(result: ExportResult, runs: int = 5) -> tuple[dict[str, float], float]:
  """Per component, the median latency on its golden inputs; and the noise of their sum:
  the sum of each component's interquartile range over the runs."""
  folder, manifest = result.folder, result.manifest
  medians, noise = {}, 0.0
  for component, entry in manifest["components"].items():
    feeds, _ = manifest_lib.golden_feeds(folder, entry)
    run = runtimes.load_runner(manifest["format"], os.path.join(folder, entry["file"]))
    times = runtimes.timed_runs(lambda: run(feeds), runs)[1]
    medians[component] = round(float(np.median(times)), 3)
    noise += float(np.subtract(*np.percentile(times, [75, 25])))
  return medians, round(noise, 3)


def choose(candidates: dict[str, dict], target: str = "cpu") -> tuple[str | None, str]:
  """(chosen recipe, why) among `candidates` ({recipe: {"passed", "total_latency_ms",
  "latency_noise_ms", "bytes", "worst_snr_db", "gpu_on_cpu"?}}, failed ones with "failed").
  None when none passed."""
  passing = [r for r, c in candidates.items() if c["passed"]]
  if not passing:
    return None, "none passed the parity gate"
  if target == "gpu":
    def rank(r):
      return (len(candidates[r].get("gpu_on_cpu") or ()), recipes.GPU_PREFERENCE.index(r),
              -candidates[r]["worst_snr_db"])
    chosen = min(passing, key=rank)
    checked = any("gpu_on_cpu" in candidates[r] for r in passing)
    return chosen, ("for a GPU delegate, which computes in fp16 whatever the file holds: "
                    + ("the fewest ops left to the CPU (TensorFlow's GPU analyzer), then "
                       if checked else "no GPU analyzer result for this format; ")
                    + "fp16 first, then the most accurate")
  # cpu and npu: the fastest here; a difference within the measured noise is a tie, which
  # the smaller and then the more accurate artifact wins.
  fastest = min(passing, key=lambda r: candidates[r]["total_latency_ms"])
  best = candidates[fastest]
  tied = [r for r in passing if candidates[r]["total_latency_ms"] - best["total_latency_ms"]
          <= max(candidates[r]["latency_noise_ms"], best["latency_noise_ms"])]
  chosen = min(tied, key=lambda r: (candidates[r]["bytes"], -candidates[r]["worst_snr_db"]))
  kind = "full-integer (NPU) recipes" if target == "npu" else "int8 recipes"
  if len(passing) == 1:
    return chosen, f"the only one of the {kind} that passed the parity gate"
  why = (f"fastest of the passing {kind} ({', '.join(passing)}) by median latency on the "
         f"golden inputs, measured in this run")
  if len(tied) > 1:
    why += (f"; {', '.join(tied)} within the measured noise of each other, so the smallest, "
            f"then most accurate")
  return chosen, why


def _gpu_on_cpu(export: ExportResult) -> list[str]:
  """The ops, over every component, that TensorFlow's GPU analyzer says a GPU delegate leaves
  to the CPU."""
  from edgediff.export import gpu_compat

  ops = []
  for component, entry in export.manifest["components"].items():
    result = gpu_compat.analyze(os.path.join(export.folder, entry["file"]), log=log)
    ops += [f"{component}:{op}" for op in result["flagged"]]
  return ops


def _candidate_components(manifest: dict) -> dict:
  """Per component: the gate's verdict and numbers, and what calibration and fallback did."""
  out = {}
  for component, entry in manifest["components"].items():
    row = {"passed": entry["passed"], "snr_db": round(entry["parity"]["snr_db"], 2),
           "pearson": round(entry["parity"]["pearson"], 6),
           "psnr_db": round(entry["parity"]["psnr_db"], 2)}
    quant = entry.get("quantization")
    if quant:
      row.update(calibration_samples=quant["calibration_samples"], rounds=quant["rounds"],
                 kept_in_float=len(quant["fallback"]))
    out[component] = row
  return out


def _export_child(conn, source: dict, opts: ExportOptions) -> None:
  """One --int8 candidate, in a process of its own: sends back its manifest's folder, or the
  one-line reason it failed."""
  os.dup2(2, 1)  # whatever the libraries print goes to stderr: stdout is the parent's --json
  console.apply()  # -v, quiet or --log, as the parent was told
  try:
    conn.send(("ok", export_pipeline(pipeline_lib.open_source(source), opts).folder))
  except EdgediffError as e:
    conn.send(("failed", str(e)))
  except MemoryError:
    conn.send(("failed", "out of memory"))
  except Exception as e:  # noqa: BLE001 - a candidate's crash must not end the selection
    conn.send(("failed", f"{type(e).__name__}: {first_line(e)}"))
  finally:
    conn.close()


def _run_candidate(pipe, opts: ExportOptions,
                   timeout_s: float | None) -> tuple[ExportResult | None, str]:
  """Exports one candidate in a child process, so that one that raises, is killed for memory
  or runs out of time leaves the others (and this process) standing."""
  ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads
  receive, send = ctx.Pipe(duplex=False)
  child = ctx.Process(target=_export_child, args=(send, pipe.source, opts))
  child.start()
  send.close()
  result = None
  if receive.poll(timeout_s):
    try:
      result = receive.recv()
    except EOFError:  # the child died before it could answer
      pass
  child.join(timeout=None if result else 5)
  if child.is_alive():
    child.kill()
    child.join()
    return None, f"timed out after {timeout_s:.0f} s (--candidate-timeout)"
  if result is None:
    code = child.exitcode
    if code is not None and code < 0:
      name = signal.Signals(-code).name
      why = " (the kernel kills processes that run out of memory this way)" if (
          -code == signal.SIGKILL) else ""
      return None, f"killed by {name}{why}"
    return None, f"exited with status {code} without a result"
  status, value = result
  if status != "ok":
    return None, value
  return ExportResult(value, manifest_lib.read(value)), ""


def export_int8(pipe: pipeline_lib.Pipeline, opts: ExportOptions,
                timeout_s: float | None = None, target: str = "cpu") -> ExportResult:
  """Exports every candidate recipe for `target` (recipes.target_candidates) and keeps the
  one `choose` picks among those that pass.

  Each candidate is exported in its own process: one that fails, runs out of memory or of
  time (`timeout_s`) is recorded as `failed` with its reason, and the choice is made among
  the others. Speed is the sum over the exported components of the median latency on the
  golden inputs, measured in this run; the chosen recipe's manifest records the candidates,
  the target and the reason. Raises EdgediffError when no candidate produced an artifact, or
  for the npu target when no full-integer artifact passed.
  """
  atomic.check_folder(opts.out)
  candidates = {}
  exports = {}
  for recipe in recipes.target_candidates(opts.fmt, target):
    log(f"--int8: trying {recipe}")
    export, failure = _run_candidate(pipe, dataclasses.replace(opts, recipe=recipe),
                                     timeout_s)
    if export is None:
      log(f"--int8: {recipe} failed: {failure}")
      candidates[recipe] = {"passed": False, "failed": failure}
      continue
    latency, noise = _latency_ms(export)
    entries = export.manifest["components"].values()
    candidates[recipe] = {"passed": export.passed, "latency_ms": latency,
                          "total_latency_ms": round(sum(latency.values()), 3),
                          "latency_noise_ms": noise,
                          "bytes": sum(e["bytes"] for e in entries),
                          "worst_snr_db": round(min(e["parity"]["snr_db"] for e in entries), 2),
                          "manifest": os.path.join(export.folder, manifest_lib.MANIFEST),
                          "components": _candidate_components(export.manifest)}
    if target == "gpu" and opts.fmt == "tflite":
      candidates[recipe]["gpu_on_cpu"] = _gpu_on_cpu(export)
    exports[recipe] = export
  failed = [r for r, c in candidates.items() if "failed" in c]
  chosen, why = choose({r: c for r, c in candidates.items() if r in exports}, target)
  if chosen is None and target == "npu":
    raise EdgediffError(
        "--target npu: no full-integer artifact passed the parity gate (" + "; ".join(
            f"{r}: {c.get('failed') or 'failed the gate, worst snr %.1f dB' % c['worst_snr_db']}"
            for r, c in candidates.items()) + "); an NPU runs no other, so there is nothing "
        "to give it: try more --calib-prompts, or --target cpu|gpu")
  if not exports:
    raise EdgediffError("--int8: every candidate failed: " + "; ".join(
        f"{r}: {c['failed']}" for r, c in candidates.items()))
  if chosen is None:
    chosen = min(exports, key=lambda r: candidates[r]["total_latency_ms"])
    why = "no candidate passed the parity gate; reporting the fastest"
  if failed:
    why += f"; {', '.join(failed)} failed (see candidates)"
  export = exports[chosen]
  export.manifest["int8_selection"] = {"chosen": chosen, "target": target, "why": why,
                                       "candidates": candidates}
  manifest_lib.write(export.folder, export.manifest)
  log(f"--int8: chose {chosen}: {why}")
  return export
