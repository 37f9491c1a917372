"""The `edgediff` command line."""

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

from edgediff import adb, atomic, console, metrics
from edgediff.errors import EdgediffError
from edgediff.manifest import COMPONENTS
from edgediff.export import compat
from edgediff.quant import recipes as recipes_lib


def _print_table(rows: list[dict], columns: list[str]) -> None:
  widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
  print("  ".join(c.ljust(widths[c]) for c in columns))
  for r in rows:
    print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
  if value <= 0:
    raise argparse.ArgumentTypeError(f"{value}: must be 1 or more")
  return value


def _finite_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
  if not np.isfinite(value):
    raise argparse.ArgumentTypeError(f"{text}: must be a finite number")
  return value


def _positive_float(text: str) -> float:
  value = _finite_float(text)
  if value <= 0:
    raise argparse.ArgumentTypeError(f"{text}: must be above 0")
  return value


def _resolution(text: str) -> int:
  value = _positive_int(text)
  if value % 8:
    raise argparse.ArgumentTypeError(f"{value} is not a multiple of 8 (the VAE's factor)")
  return value


def cmd_models(args) -> int:
  from edgediff import counting, specs

  rows = counting.zoo(tiny=args.tiny)
  if args.json:
    print(json.dumps(rows, indent=1))
    return 0
  for r in rows:
    r["params_m"] = f"{r['params'] / 1e6:.2f}M"
    r["gmacs"] = f"{r['macs'] / 1e9:.1f}G"
    r["input_shapes"] = " ".join(f"{i['name']}{tuple(i['shape'])}" for i in r["inputs"])
  _print_table(rows, ["name", "component", "params_m", "gmacs", "input_shapes"])
  print("\npipelines:")
  for p in specs.PIPELINE_SPECS.values():
    print(f"  {p.name}: {p.text_encoder} + {p.unet} + {p.vae_decoder}")
  return 0


def cmd_export(args) -> int:
  from edgediff import pipeline
  from edgediff.export import exporter

  if args.target and not args.int8:
    raise EdgediffError("--target chooses among --int8's candidate recipes: use it with --int8")
  pipe = pipeline.open_pipeline(args.pipeline, from_diffusers=args.from_diffusers,
                                weights=args.weights)
  latent_size = None
  if args.resolution:
    latent_size = args.resolution // 8
  recipe = "fp16" if args.fp16 else args.quant
  opts = exporter.ExportOptions(
      fmt=args.fmt, out=args.out, recipe=recipe,
      components=tuple(args.component or exporter.COMPONENTS),
      batch=2 if args.cfg else 1, latent_size=latent_size, force=args.force, ort=args.ort,
      nhwc=args.nhwc, calib_prompts=_read_prompts(args.calib_prompts),
      max_memory_gb=args.max_memory, skip_runtimes=tuple(args.skip_runtime or ()),
      guidance=args.guidance if args.guidance is not None else (7.5 if args.cfg else 1.0),
      clamp=not args.no_clamp)
  if args.int8:
    result = exporter.export_int8(pipe, opts, timeout_s=args.candidate_timeout,
                                  target=args.target or "cpu")
  else:
    result = exporter.export_pipeline(pipe, opts)
  manifest = result.manifest
  if args.json:
    print(json.dumps({**manifest, "folder": result.folder}, indent=1))
  else:
    rows = [{"component": name, "file": c["file"], "MB": f"{c['bytes'] / 1e6:.2f}",
             "snr_db": f"{c['parity']['snr_db']:.1f}", "pearson": f"{c['parity']['pearson']:.6f}",
             "ssim": "-" if c["parity"]["ssim"] is None else f"{c['parity']['ssim']:.4f}",
             "psnr_db": f"{c['parity']['psnr_db']:.1f}",
             "parity": "pass" if c["passed"] else "FAIL"}
            for name, c in manifest["components"].items()]
    _print_table(rows, ["component", "file", "MB", "snr_db", "pearson", "ssim", "psnr_db",
                        "parity"])
    if "int8_selection" in manifest:
      sel = manifest["int8_selection"]
      print(f"chosen recipe: {sel['chosen']} ({sel['why']})")
    print(f"manifest: {result.folder}/manifest.json")
  failures = result.failures()
  for f in failures:
    print(f"edgediff: parity failed: {f}", file=sys.stderr)
  if failures:
    return 1
  crashed = result.failed_candidates()
  for recipe, why in crashed.items():
    print(f"edgediff: --int8 candidate {recipe} failed: {why}", file=sys.stderr)
  return 3 if crashed else 0


def _read_prompts(path: str | None) -> tuple[str, ...] | None:
  """One prompt per line; None without a file."""
  if not path:
    return None
  try:
    with open(path, encoding="utf-8") as f:
      prompts = tuple(line.strip() for line in f if line.strip())
  except OSError as e:
    raise EdgediffError(f"{path}: cannot read prompts ({e.strerror})") from None
  except UnicodeDecodeError:
    raise EdgediffError(f"{path}: not a UTF-8 text file of prompts, one per line") from None
  if any("\x00" in p for p in prompts):
    raise EdgediffError(f"{path}: holds NUL bytes: not a text file of prompts")
  if not prompts:
    raise EdgediffError(f"{path}: no prompts in it")
  return prompts


def cmd_parity_e2e(args) -> int:
  from edgediff.export import check, e2e

  prompts = _read_prompts(args.prompts)  # None: the pipeline's own prompts
  results = [e2e.run(folder, prompts, args.seeds, steps=args.steps)
             for folder in check.find_manifests(args.dir)]
  summaries = [e2e.summary(r) for r in results]
  if args.report:
    png = os.path.splitext(args.report)[0] + ".png"
    e2e.write_report(results, png, args.report if args.report.endswith(".html") else None)
  if args.json:
    print(json.dumps(summaries, indent=1))
  else:
    rows = [{"format": s["format"], "recipe": s["recipe"],
             "image_psnr_db": f"{s['mean_psnr_db']:.2f}",
             "worst_psnr_db": f"{s['worst_psnr_db']:.2f}", "ssim": f"{s['mean_ssim']:.4f}",
             "threshold_db": s["threshold_db"], "parity": "pass" if s["passed"] else "FAIL",
             "folder": s["folder"]} for s in summaries]
    _print_table(rows, ["format", "recipe", "image_psnr_db", "worst_psnr_db", "ssim",
                        "threshold_db", "parity", "folder"])
    agree = e2e.runtimes_agree(results)
    if agree:
      print("\nruntimes against each other (mean image PSNR, dB):")
      _print_table(agree, list(agree[0]))
  for s in summaries:
    if not s["passed"]:
      print(f"edgediff: end-to-end parity failed in {s['folder']}: {e2e.explain(s)}",
            file=sys.stderr)
  return 0 if all(s["passed"] for s in summaries) else 1


def cmd_parity(args) -> int:
  from edgediff.export import check

  if args.e2e:
    return cmd_parity_e2e(args)

  results = [r for folder in check.find_manifests(args.dir) for r in check.check_folder(folder)]
  if args.json:
    print(json.dumps(results, indent=1))
  else:
    rows = [{"folder": r["folder"], "component": r["component"],
             "golden_snr": f"{r['golden']['snr_db']:.1f}",
             "fresh_snr": f"{r['fresh']['snr_db']:.1f}",
             "fresh_pearson": f"{r['fresh']['pearson']:.6f}",
             "sha256": "ok" if r["sha256_ok"] else "CHANGED",
             "parity": "pass" if r["passed"] else "FAIL"} for r in results]
    _print_table(rows, ["folder", "component", "golden_snr", "fresh_snr", "fresh_pearson",
                        "sha256", "parity"])
  for r in results:
    for f in r["golden"]["failures"]:
      print(f"edgediff: parity failed (golden) in {r['folder']}: {f}", file=sys.stderr)
    for f in r["fresh"]["failures"]:
      print(f"edgediff: parity failed (fresh inputs) in {r['folder']}: {f}", file=sys.stderr)
    for name in r["changed"]:
      print(f"edgediff: {os.path.join(r['folder'], name)}: sha256 differs from the manifest's "
            f"({r['component']}): not the file that passed the gate", file=sys.stderr)
  return 0 if all(r["passed"] for r in results) else 1


def cmd_gpu_check(args) -> int:
  from edgediff import manifest as manifest_lib
  from edgediff.export import check, gpu_compat

  rows, results = [], []
  for folder in check.find_manifests(args.dir):
    manifest = manifest_lib.read(folder)
    if manifest.get("format") != "tflite":
      continue
    for component, entry in manifest["components"].items():
      result = gpu_compat.analyze(os.path.join(folder, entry["file"]), log=console.log)
      results.append({"folder": folder, "component": component, **result})
      rows.append({"folder": folder, "component": component,
                   "gpu_delegate": "all ops" if result["compatible"] else "PARTIAL",
                   "on_cpu": gpu_compat.flagged_ops(result)})
  if not results:
    raise EdgediffError(f"{args.dir}: no TFLite export in it (the analyzer reads .tflite)")
  if args.json:
    print(json.dumps(results, indent=1))
  else:
    _print_table(rows, ["folder", "component", "gpu_delegate", "on_cpu"])
    print(f"analyzer: {results[0]['analyzer']}")
  return 0 if all(r["compatible"] for r in results) else 1


def cmd_generate(args) -> int:
  from edgediff import generate as gen
  from edgediff import pipeline
  from edgediff import manifest as manifest_lib

  atomic.check_file(args.image)
  if args.artifacts:
    if args.pipeline or args.from_diffusers or args.weights:
      raise EdgediffError("--artifacts brings its own pipeline: drop PIPELINE/--weights")
    manifest = manifest_lib.read(args.artifacts)
    backend = gen.artifact_backend(args.artifacts)  # raises, naming the folder, if not one
    pipe = pipeline.open_source(manifest["source"])
    backend = dataclasses.replace(backend, tokenizer=pipe.tokenizer)
    latent_size = manifest["latent_size"]
  else:
    pipe = pipeline.open_pipeline(args.pipeline, from_diffusers=args.from_diffusers,
                                  weights=args.weights)
    latent_size = pipe.latent_size
    backend = gen.torch_backend(pipe)
  from edgediff.models import text_encoder

  tokens = text_encoder.token_count(args.prompt, pipe.tokenizer)
  if tokens > text_encoder.MAX_TOKENS:
    print(f"edgediff: note: the prompt takes {tokens} tokens; the text encoder reads the first "
          f"{text_encoder.MAX_TOKENS} (start and end of text included), as CLIP does, and the "
          f"rest is dropped", file=sys.stderr)
  result = gen.generate(backend, args.prompt, steps=args.steps, guidance=args.guidance,
                        seed=args.seed)
  gen.save_png(result.image, args.image)
  timing = ", ".join(f"{c} {s * 1e3:.0f} ms" for c, s in result.seconds.items())
  print(f"wrote {args.image} ({backend.name}, {args.steps} steps); time per component: {timing}")
  if args.artifacts:
    reference = gen.generate(gen.torch_backend(pipe, latent_size), args.prompt,
                             steps=args.steps, guidance=args.guidance, seed=args.seed,
                             progress=False)
    psnr = metrics.image_psnr_db(reference.image, result.image)
    print(f"image PSNR against PyTorch fp32 (same prompt and seed): {psnr:.2f} dB")
  from edgediff.shapes import checker

  verdict = checker.describe(args.prompt, gen.to_pixels(result.image))
  if verdict:
    print(f"adherence checker: {verdict}")
  return 0


def cmd_adherence(args) -> int:
  from edgediff import generate as gen
  from edgediff import pipeline
  from edgediff.shapes import adherence

  if args.artifacts:
    backend = gen.artifact_backend(args.artifacts)
  else:
    backend = gen.torch_backend(pipeline.open_pipeline(args.pipeline, weights=args.weights))
  scores, images, _ = adherence.measure(backend, n=args.n, steps=args.steps,
                                        guidance=args.guidance, seed=args.seed)
  if args.grid:
    atomic.write_bytes(args.grid, adherence.contact_sheet(images))
  record = {"backend": backend.name, "n": args.n, "steps": args.steps,
            "guidance": args.guidance, "seed": args.seed, "scores": scores}
  if args.json:
    print(json.dumps(record, indent=1))
  else:
    print(f"adherence on {args.n} held-out captions ({backend.name}, {args.steps} steps, "
          f"guidance {args.guidance}):")
    for name, value in scores.items():
      print(f"  {name:<10} {100 * value:5.1f}%")
  return 0


def cmd_bench(args) -> int:
  from edgediff import bench
  from edgediff.export import check

  record = bench.run_bench(check.find_manifests(args.dir), args.runs, args.threads,
                           args.steps, args.guidance != 1.0, args.results, ops=args.ops)
  if args.json:
    print(json.dumps(record, indent=1))
    return 0
  rows = [{k: ("-" if r.get(k) is None else r[k]) for k in bench.SCHEMA} for r in record["rows"]]
  _print_table(rows, list(bench.SCHEMA))
  guided = f", guidance {args.guidance:g}" if args.guidance != 1.0 else ""
  print(f"\ntime per image ({args.steps} steps{guided}):")
  for backend, seconds in sorted(record["seconds_per_image"].items()):
    print(f"  {backend}: {seconds:.3f} s")
  for p in record.get("ops", []):
    where = f"{p['folder']} {p['component']} ({p['backend']})"
    if p["backend"] == "tflite":
      outside = ", ".join(f"{op} x{n}" for op, n in p["outside"].items()) or "none"
      print(f"\n{where}: {sum(p['ops'].values())} ops, {p['delegated']} in "
            f"{p['partitions']} XNNPACK partitions; outside XNNPACK: {outside}")
    else:
      print(f"\n{where}: {p['total_ms']:.2f} ms of kernels per run; top ops by time:")
      _print_table(p["ops"][:args.top_ops], ["op", "calls", "ms", "share"])
  if args.results:
    print(f"appended to {args.results}")
  return 0


def cmd_lint(args) -> int:
  from edgediff import pipeline
  from edgediff.quant import lint

  name = args.pipeline or pipeline.DEFAULT_PIPELINE
  compare = args.compare
  if compare is None:  # the trained variants that ship beside the default model
    compare, missing = lint.shipped_variants(name)
    if missing:
      print(f"note: {', '.join(missing)} not shipped; train them with `edgediff train-demo "
            "--variant gelu_tanh|softmax`")
  results = {n: lint.lint_pipeline(pipeline.open_pipeline(n)) for n in [name, *compare]}
  if args.json:
    print(json.dumps(results, indent=1))
    return 0
  for n, result in results.items():
    for component, r in result.items():
      whole = r["whole_sqnr_db"]
      print(f"\n{n} {component}: whole-component SQNR fp16 {whole['fp16']:.1f} dB, "
            f"W8A8 {whole['w8a8']:.1f} dB")
      rows = [{"kind": k, **v} for k, v in r["by_kind"].items()]
      _print_table(rows, ["kind", "count", "fp16_sqnr_db", "int8_sqnr_db", "peak"])
      print(f"worst {args.top} layers at int8:")
      _print_table([{**l, "hazards": "; ".join(l["hazards"])} for l in r["layers"][:args.top]],
                   ["name", "kind", "peak", "fp16_sqnr_db", "int8_sqnr_db", "hazards"])
  if len(results) > 1:
    print("\nUNet variants on the same prompts and seeds (SQNR in dB, higher is better):")
    _print_table([lint.variant_row(n, r["unet"]) for n, r in results.items()],
                 list(lint.VARIANT_COLUMNS))
  return 0


def cmd_train_demo(args) -> int:
  from edgediff.shapes import train

  defaults = train.TrainConfig()
  cfg = dataclasses.replace(
      defaults, steps=args.steps or defaults.steps, batch=args.batch or defaults.batch,
      ae_steps=args.ae_steps if args.ae_steps is not None else (
          defaults.ae_steps if args.steps is None else max(args.steps // 4, 1)),
      text_steps=defaults.text_steps if args.steps is None else max(args.steps // 4, 1),
      seed=args.seed)
  path = train.train(cfg, args.out, args.variant)
  print(f"wrote {path}")
  return 0


def cmd_adb_bench(args) -> int:
  settings = adb.BenchSettings(
      threads=args.threads, runs=args.runs, warmup_runs=args.warmup_runs, xnnpack=args.xnnpack,
      gpu=args.gpu, nnapi=args.nnapi, allow_fp16=args.allow_fp16, cooldown=args.cooldown)
  result = adb.run(args.dir, args.benchmark_binary, settings, serial=args.serial,
                   components=args.component, log_dir=args.log_dir)
  atomic.write_json(args.results, result)
  print(json.dumps(result, indent=1))
  return 0


def cmd_adb_push(args) -> int:
  count, serial = adb.push_export(args.dir, args.serial, args.remote, log=console.log)
  print(f"{count} files in {args.remote} on {serial}: open the edgediff app and press Verify")
  return 0


class _Parser(argparse.ArgumentParser):
  """argparse, with a bad argument reported in one line (its usage is under -h): the same
  shape as every other refusal of edgediff's."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog="edgediff", description="Mobile text-to-image diffusion models to ONNX and TFLite.")
  sub = parser.add_subparsers(dest="command", required=True)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("-v", "--verbose", action="store_true",
                      help="show the libraries' own output (conversion stages, warnings)")
  common.add_argument("--log", metavar="FILE",
                      help="keep everything in FILE: edgediff's lines and all the libraries' "
                           "output, which the screen leaves out unless -v")

  p = sub.add_parser("models", parents=[common], help="list the model zoo: parameters, MACs, input shapes")
  p.add_argument("--json", action="store_true", help="print a JSON list")
  p.add_argument("--tiny", action="store_true", help="the tiny test configs instead")
  p.set_defaults(func=cmd_models)

  p = sub.add_parser("export", parents=[common], help="export a pipeline to ONNX or TFLite, with a parity gate")
  p.add_argument("pipeline", nargs="?", help="a pipeline spec (md, md-lite, md-tiny, ...); "
                 "default: the shipped default model")
  p.add_argument("--fmt", required=True, choices=["onnx", "tflite"])
  p.add_argument("--out", default="out", help="output folder (default: out)")
  p.add_argument("--component", action="append", choices=COMPONENTS,
                 help="export only this component (repeatable)")
  p.add_argument("--from-diffusers", metavar="FOLDER", help="a local diffusers-format folder")
  p.add_argument("--weights", metavar="FILE", help="a local .safetensors file for the spec")
  p.add_argument("--cfg", action="store_true",
                 help="batch 2 for classifier-free guidance (unconditional + conditional)")
  p.add_argument("--resolution", type=_resolution, help="image size in pixels (multiple of 8)")
  p.add_argument("--ort", action="store_true", help="also write the .ort mobile format")
  p.add_argument("--nhwc", action="store_true",
                 help="TFLite: channel-last image and latent tensors (default NCHW, as PyTorch)")
  quant = p.add_mutually_exclusive_group()
  quant.add_argument("--quant", default="fp32", metavar="RECIPE", choices=recipes_lib.RECIPES,
                     help="; ".join(f"{r.name}: {r.summary}" for r in recipes_lib.TABLE.values())
                     + " (default fp32)")
  quant.add_argument("--fp16", action="store_true", help="same as --quant fp16")
  quant.add_argument("--int8", action="store_true",
                     help="the int8 recipe that passes the gate fastest in this runtime")
  p.add_argument("--calib-prompts", metavar="FILE",
                 help="calibration prompts, one per line (default: the shipped set)")
  p.add_argument("--max-memory", type=_positive_float, metavar="GB",
                 help="refuse a component whose estimated peak memory exceeds this "
                      "(default: the RAM available when it starts)")
  p.add_argument("--target", choices=recipes_lib.TARGETS,
                 help="--int8: the phone processor to choose for (default cpu: the fastest "
                      "int8 recipe here; gpu: fp16 or int8 with the fewest ops a GPU "
                      "delegate leaves to the CPU; npu: full-integer recipes only)")
  p.add_argument("--candidate-timeout", type=_positive_float, metavar="SECONDS",
                 help="--int8: give up on a candidate recipe after this long")
  p.add_argument("--guidance", type=_finite_float, metavar="SCALE",
                 help="the guidance scale the app samples with: calibration records both "
                      "branches at it (default 7.5 with --cfg, else 1)")
  p.add_argument("--skip-runtime", action="append", metavar="NAME",
                 choices=compat.NAMES,
                 help="leave an old runtime out of the gate (repeatable; by default every "
                      "artifact is also checked in tflite-runtime-2.14 or onnxruntime-1.17)")
  p.add_argument("--no-clamp", action="store_true",
                 help="leave the decoder's final clamp to [0, 1] to the app, which clips its "
                      "pixels anyway: one op fewer (TFLite's RELU_0_TO_1, which some GPU "
                      "delegates refuse)")
  p.add_argument("--force", action="store_true", help="redo components already exported")
  p.add_argument("--json", action="store_true", help="print the manifest as JSON")
  p.set_defaults(func=cmd_export)

  p = sub.add_parser("generate", parents=[common], help="text to image, in PyTorch or through exported artifacts")
  p.add_argument("pipeline", nargs="?", help="a pipeline spec (default: the shipped default)")
  p.add_argument("--prompt", required=True)
  # --image, not --out: --out is a folder in export and train-demo (--out still works).
  p.add_argument("--image", "--out", required=True, metavar="FILE.png", help="the PNG to write")
  p.add_argument("--artifacts", metavar="DIR",
                 help="an export folder (out/<pipeline>/<fmt>/<recipe>); default: PyTorch")
  # Without --artifacts, images come from PyTorch: --backend torch says only that, and is
  # still accepted for the scripts that pass it.
  p.add_argument("--backend", choices=["torch"], default="torch", help=argparse.SUPPRESS)
  p.add_argument("--from-diffusers", metavar="FOLDER", help="a local diffusers-format folder")
  p.add_argument("--weights", metavar="FILE", help="a local .safetensors file for the spec")
  p.add_argument("--steps", type=_positive_int, default=8, help="DDIM steps (default 8)")
  p.add_argument("--guidance", type=_finite_float, default=1.0,
                 help="classifier-free guidance scale (1: off)")
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(func=cmd_generate)

  p = sub.add_parser("bench", parents=[common], help="host latency and memory of an export, per backend")
  p.add_argument("dir", help="an export folder (searched for manifest.json files)")
  p.add_argument("--threads", type=_positive_int, default=os.cpu_count() or 1)
  p.add_argument("--runs", type=_positive_int, default=20, help="timed runs after one warm-up")
  p.add_argument("--steps", type=_positive_int, default=8, help="denoising steps for time per image")
  # A scale, as in export and generate; bare --guidance means 7.5.
  p.add_argument("--guidance", type=_finite_float, nargs="?", const=7.5, default=1.0,
                 metavar="SCALE", help="time per image at this guidance scale: 1 (the "
                 "default) is one UNet call per step, any other scale two (bare: 7.5)")
  p.add_argument("--ops", action="store_true",
                 help="op-level profiles: ORT's per-op times (ONNX) or the op mix and what "
                      "runs outside the XNNPACK delegate (TFLite)")
  p.add_argument("--top-ops", type=_positive_int, default=8, help="ONNX ops to list with --ops")
  p.add_argument("--results", default="bench_results.jsonl",
                 help="append results with the machine description (default: "
                      "bench_results.jsonl; '' to skip)")
  p.add_argument("--json", action="store_true")
  p.set_defaults(func=cmd_bench)

  p = sub.add_parser("adb-bench", parents=[common], help="TFLite benchmark_model on an Android phone over ADB")
  p.add_argument("dir", help="a TFLite export folder (out/<pipeline>/tflite/<recipe>)")
  p.add_argument("--benchmark-binary", required=True, metavar="PATH",
                 help="a TFLite benchmark_model binary for the phone's ABI")
  p.add_argument("--serial", help="the device (default: the only one connected)")
  p.add_argument("--component", action="append", choices=COMPONENTS)
  p.add_argument("--threads", type=_positive_int, default=4)
  p.add_argument("--runs", type=_positive_int, default=50)
  p.add_argument("--warmup-runs", type=int, default=5)
  p.add_argument("--no-xnnpack", dest="xnnpack", action="store_false")
  p.add_argument("--gpu", action="store_true", help="the GPU delegate")
  p.add_argument("--nnapi", action="store_true", help="the NNAPI delegate")
  p.add_argument("--allow-fp16", action="store_true", help="allow fp16 compute")
  p.add_argument("--cooldown", type=float, default=30.0, help="seconds between components")
  # --results, as bench's: a file of results (--out is a folder in export and train-demo).
  p.add_argument("--results", "--out", default="adb_bench.json", metavar="FILE",
                 help="the JSON file to write the results to (default adb_bench.json)")
  p.add_argument("--log-dir", help="keep benchmark_model's raw output per component here")
  p.set_defaults(func=cmd_adb_bench)

  p = sub.add_parser("adb-push", parents=[common], help="push a TFLite export to a phone for the demo app")
  p.add_argument("dir", help="a TFLite export folder (out/<pipeline>/tflite/<recipe>)")
  p.add_argument("--serial", help="the device (default: the only one connected)")
  p.add_argument("--remote", default=adb.APP_DIR,
                 help=f"where on the device (default {adb.APP_DIR})")
  p.set_defaults(func=cmd_adb_push)

  p = sub.add_parser("adherence",
                     help="shapes models: prompt adherence on held-out captions, by a checker")
  p.add_argument("pipeline", nargs="?", help="a shapes pipeline (default: shapes)")
  p.add_argument("--artifacts", metavar="DIR", help="an export folder instead of PyTorch")
  p.add_argument("--weights", metavar="FILE", help="a local .safetensors file for the spec")
  p.add_argument("-n", "--n", type=_positive_int, default=200, help="images, one per caption (default 200)")
  p.add_argument("--steps", type=_positive_int, default=8)
  p.add_argument("--guidance", type=_finite_float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--grid", metavar="FILE.png", help="also write the images as one sheet")
  p.add_argument("--json", action="store_true")
  p.set_defaults(func=cmd_adherence)

  p = sub.add_parser("lint", parents=[common], help="per-layer fp16 and int8 hazards, measured on sampling data")
  p.add_argument("pipeline", nargs="?", help="a pipeline (default: the shipped default)")
  p.add_argument("--compare", nargs="*", metavar="PIPELINE",
                 help="variants to measure beside it on the same prompts and seeds "
                      "(default for shapes: shapes-gelu shapes-softmax)")
  p.add_argument("--top", type=_positive_int, default=8, help="worst layers to list (default 8)")
  p.add_argument("--json", action="store_true")
  p.set_defaults(func=cmd_lint)

  p = sub.add_parser("train-demo", parents=[common], help="train the shapes model (the default pipeline) on CPU")
  p.add_argument("--out", default="runs/shapes",
                 help="working folder: checkpoints, cached latents, logs and the weights")
  p.add_argument("--variant", default="swish-relu", choices=["swish-relu", "gelu_tanh", "softmax"],
                 help="the UNet variant (default: MobileDiffusion's swish FF + relu attention)")
  p.add_argument("--steps", type=_positive_int, help="diffusion training steps (default 3600)")
  p.add_argument("--ae-steps", type=int,
                 help="autoencoder steps (default 2000; a quarter of --steps when that is given)")
  p.add_argument("--batch", type=_positive_int, help="diffusion batch size (default 64)")
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(func=cmd_train_demo)

  p = sub.add_parser("gpu-check", parents=[common],
                     help="which ops of a TFLite export a phone's GPU delegate leaves to the CPU")
  p.add_argument("dir", help="an export folder (searched for manifest.json files)")
  p.add_argument("--json", action="store_true")
  p.set_defaults(func=cmd_gpu_check)

  p = sub.add_parser("parity", parents=[common], help="re-run the parity gate on an exported folder")
  p.add_argument("dir", help="an export folder (searched for manifest.json files)")
  p.add_argument("--json", action="store_true")
  p.add_argument("--e2e", action="store_true",
                 help="end to end: images from the same prompts and seeds against PyTorch fp32")
  p.add_argument("--prompts", metavar="FILE", help="--e2e: one prompt per line")
  p.add_argument("--seeds", type=_positive_int, default=1, help="--e2e: seeds per prompt")
  p.add_argument("--steps", type=_positive_int, default=8, help="--e2e: DDIM steps")
  p.add_argument("--report", metavar="FILE",
                 help="--e2e: write report.html (self-contained) and report.png beside it")
  p.set_defaults(func=cmd_parity)
  return parser


def main(argv: list[str] | None = None) -> int:
  try:
    args = build_parser().parse_args(argv)
  except SystemExit as e:  # a bad argument (said in one line), or --help
    return e.code
  console.setup(args.verbose, args.log)
  try:
    return args.func(args)
  except EdgediffError as e:
    print(f"edgediff: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # a file system's refusal (full, read-only) that no check foresaw
    if e.strerror is None:
      raise
    print(f"edgediff: error: {e.filename or ''}: {e.strerror}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
