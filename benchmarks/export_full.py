"""Export full-size pipelines, every recipe of both formats, and record time, memory and size.

Each export runs in its own process (`edgediff export PIPELINE --fmt F --quant R --component
C`), so that the peak RSS, read from the kernel's rusage of that child, is that export's
alone. Sizes are read from the manifest, external data included. The SD-1.5 folder is
written by this script with diffusers' and transformers' own `save_pretrained` (SD-1.5's
configs, seeded random weights; nothing is downloaded), as a user's diffusers folder would
be. Prints a Markdown table (and appends JSON lines with --jsonl).

Usage: python benchmarks/export_full.py [--pipelines md md-lite sd15] [--formats onnx tflite]
  [--recipes fp32 fp16 ...] [--components unet ...] [--out DIR] [--jsonl FILE]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from edgediff.quant.recipes import SUPPORTED as RECIPES  # every recipe of each format
COMPONENTS = ("text_encoder", "unet", "vae_decoder")
# md-lite's text encoder and decoder are md's: only its UNet is exported.
PIPELINE_COMPONENTS = {"md-lite": ("unet",)}


def write_sd15_folder(root: str) -> str:
  """A diffusers-format SD-1.5 folder: real configs, seeded random weights."""
  import torch
  from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
  from transformers import CLIPTextConfig, CLIPTextModel

  from edgediff.models import sd_unets

  if os.path.isfile(os.path.join(root, "unet", "config.json")):
    return root
  torch.manual_seed(0)
  UNet2DConditionModel(**sd_unets.SD15_UNET).save_pretrained(os.path.join(root, "unet"))
  AutoencoderKL(
      in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
      block_out_channels=(128, 256, 512, 512),
      down_block_types=("DownEncoderBlock2D",) * 4,
      up_block_types=("UpDecoderBlock2D",) * 4).save_pretrained(os.path.join(root, "vae"))
  CLIPTextModel(CLIPTextConfig(
      vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
      num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
      projection_dim=768)).save_pretrained(os.path.join(root, "text_encoder"))
  PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1).save_pretrained(
                    os.path.join(root, "scheduler"))
  return root


def run(source: list[str], name: str, fmt: str, recipe: str, component: str, out: str) -> dict:
  cmd = [sys.executable, "-m", "edgediff.cli", "export", *source, "--fmt", fmt, "--quant",
         recipe, "--component", component, "--out", out, "--force"]
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  err = proc.stderr.read()
  _, status, usage = os.wait4(proc.pid, 0)
  seconds = time.perf_counter() - start
  code = os.waitstatus_to_exitcode(status)
  row = {"pipeline": name, "format": fmt, "recipe": recipe, "component": component,
         "seconds": round(seconds, 1), "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2),
         "exit": code, "bytes": None, "snr_db": None, "pearson": None, "ssim": None,
         "passed": None, "old_runtimes": None, "estimate_gb": None, "note": ""}
  manifest = os.path.join(out, name, fmt, recipe, "manifest.json")
  if code in (0, 1) and os.path.isfile(manifest):
    with open(manifest) as f:
      entry = json.load(f)["components"].get(component)
    if entry:
      par = entry["parity"]
      row.update(bytes=entry["bytes"], snr_db=round(par["snr_db"], 1),
                 pearson=round(par["pearson"], 6),
                 ssim=None if par.get("ssim") is None else round(par["ssim"], 4),
                 passed=entry["passed"], estimate_gb=entry.get("memory_estimate_gb"),
                 old_runtimes={name: (f"{r['status']}, {r['snr_db']:.1f} dB"
                                      if r.get("snr_db") is not None else r["status"])
                               for name, r in (entry.get("old_runtimes") or {}).items()})
  lines = [line for line in err.splitlines()
           if line.startswith(("edgediff", "calibration:")) or "parity" in line]
  if code not in (0, 1) or not row["passed"]:
    last = lines or err.strip().splitlines() or [""]
    row["note"] = last[-1][:240]
  return row


def machine() -> str:
  cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
      ["lscpu"], capture_output=True, text=True).stdout.splitlines()
      if line.startswith("Model name")), platform.processor())
  return f"{cpu}, {os.cpu_count()} cores"


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--pipelines", nargs="+", default=["md", "md-lite", "sd15"])
  parser.add_argument("--formats", nargs="+", default=["onnx", "tflite"])
  parser.add_argument("--recipes", nargs="+", help="default: every recipe of each format")
  parser.add_argument("--components", nargs="+", default=list(COMPONENTS))
  parser.add_argument("--out", help="keep the exports here (default: a temporary folder)")
  parser.add_argument("--sd15-folder", help="where the SD-1.5 diffusers folder is written "
                      "(default: inside --out)")
  parser.add_argument("--jsonl", help="append one JSON line per export to this file")
  args = parser.parse_args()
  print(f"machine: {machine()}", flush=True)
  print("| pipeline | format | recipe | component | wall s | peak RSS GB | estimate GB | MB "
        "| parity (SNR, Pearson, SSIM) | old runtime | exit | note |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    out = args.out or tmp
    for pipeline in args.pipelines:
      if pipeline == "sd15":
        folder = write_sd15_folder(args.sd15_folder or os.path.join(out, "sd15-diffusers"))
        source, name = ["--from-diffusers", folder], os.path.basename(folder.rstrip("/"))
      else:
        source, name = [pipeline], pipeline
      for fmt in args.formats:
        for recipe in args.recipes or RECIPES[fmt]:
          if recipe not in RECIPES[fmt]:
            continue
          for component in args.components:
            if component not in PIPELINE_COMPONENTS.get(pipeline, COMPONENTS):
              continue
            r = run(source, name, fmt, recipe, component, out)
            r["machine"] = machine()
            if args.jsonl:
              with open(args.jsonl, "a") as f:
                f.write(json.dumps(r) + "\n")
            size = f"{r['bytes'] / 1e6:.0f}" if r["bytes"] else "-"
            par = "-" if r["snr_db"] is None else ", ".join(
                [f"{r['snr_db']} dB", str(r["pearson"])]
                + ([str(r["ssim"])] if r["ssim"] is not None else []))
            old = "; ".join(f"{k}: {v}" for k, v in (r["old_runtimes"] or {}).items()) or "-"
            print(f"| {pipeline} | {fmt} | {recipe} | {component} | {r['seconds']:.0f} | "
                  f"{r['peak_rss_gb']:.1f} | {r['estimate_gb'] or '-'} | {size} | {par} | "
                  f"{old} | {r['exit']} | {r['note']} |", flush=True)


if __name__ == "__main__":
  main()
