"""The `edgediff` command line."""

import argparse
import json
import sys

from edgediff.errors import EdgediffError


def _print_table(rows: list[dict], columns: list[str]) -> None:
  widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
  print("  ".join(c.ljust(widths[c]) for c in columns))
  for r in rows:
    print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


def cmd_models(args) -> int:
  from edgediff import counting, specs

  rows = []
  for spec in specs.COMPONENT_SPECS.values():
    module = spec.build(tiny=args.tiny, device="meta")
    inputs = module.input_specs(1, 64 if spec.component == "vae_decoder" else None)
    rows.append({
        "name": spec.name, "component": spec.component,
        "params": counting.count_params(module), "macs": counting.count_macs(module, inputs),
        "inputs": [i.to_json() for i in inputs], "summary": spec.summary})
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


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="edgediff", description="Mobile text-to-image diffusion models to ONNX and TFLite.")
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("models", help="list the model zoo: parameters, MACs, input shapes")
  p.add_argument("--json", action="store_true", help="print a JSON list")
  p.add_argument("--tiny", action="store_true", help="the tiny test configs instead")
  p.set_defaults(func=cmd_models)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.func(args)
  except EdgediffError as e:
    print(f"edgediff: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
