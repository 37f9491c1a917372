"""Sensitivity-driven fallback, shared by the ONNX and TFLite calibrated recipes.

Quantize; if the artifact misses the parity gate's thresholds on samples of its own (the
caller keeps the gate's samples out of them), rank what is still quantized by its own
output's signal-to-noise ratio against float (lowest first), keep the worst quarter in float,
and quantize again, until the component passes or the budget of rounds runs out. A round can
come out worse than an earlier one (on the shapes UNet, ranked on calibration samples, round
4 fell from 24 to 7 dB): the artifact left is the best round's, written again.
"""

import math
from typing import Callable

from edgediff import memory, metrics

MAX_ROUNDS = 4
PER_ROUND = 0.25  # fraction of the still-quantized ops kept in float per round


class Stop(Exception):
  """Raised by a sensitivity function that cannot rank (say, for memory): fallback ends
  there and keeps its best round, with the reason in its result ("stopped")."""


def chunks(items: list, sizes: list[int]) -> list[list]:
  """`items` in consecutive groups of at most memory.RANKING_CHUNK_BYTES by their `sizes`
  (one larger than that alone in its group): what a ranking reads per call of a model.

  Raises Stop when the RAM still free would not hold the largest group twice over (the
  tensors, and the runtime's working memory beside them). The RAM compared is
  memory.free_bytes(), not available_bytes(): the runtime comes on top of everything this
  process already holds."""
  groups, totals = [[]], [0]
  for item, nbytes in zip(items, sizes):
    if groups[-1] and totals[-1] + nbytes > memory.RANKING_CHUNK_BYTES:
      groups.append([])
      totals.append(0)
    groups[-1].append(item)
    totals[-1] += nbytes
  room = memory.free_bytes()
  if 2 * max(totals) > room:
    raise Stop(
        f"ranking ops reads {max(totals) / memory.GB:.1f} GB of tensors per call, with as "
        f"much again for the runtime: more than the {room / memory.GB:.1f} GB of RAM free")
  return groups


def quantize_with_fallback(quantize: Callable[[list[str]], Callable],
                           sensitivity: Callable[[], dict[str, float]], samples, references,
                           output: str, thresholds) -> dict:
  """quantize(excluded names) writes the artifact and returns its runner; sensitivity() gives
  {op name: SQNR dB} of the artifact just written (an ONNX node's or a TFLite tensor's name:
  one vocabulary for both formats). Returns {"fallback": [{"op", "sqnr_db"}] of the
  artifact left, "rounds": n, "kept_round": its round, "history": each round's gate figures,
  and "stopped": why, when sensitivity raised Stop}.
  """
  excluded: list[dict] = []
  history: list[dict] = []
  best: tuple = ()
  stopped = None
  for round_ in range(1, MAX_ROUNDS + 1):
    run = quantize([e["op"] for e in excluded])
    report = metrics.compare("", references, [run(f)[output] for f in samples], thresholds)
    history.append({"float": len(excluded), "snr_db": round(report.snr_db, 2),
                    "pearson": round(report.pearson, 6), "psnr_db": round(report.psnr_db, 2),
                    "passed": report.passed})
    score = (report.passed, report.snr_db if math.isfinite(report.snr_db) else -math.inf)
    if not best or score > best[0]:
      best = (score, list(excluded), round_)
    if report.passed or round_ == MAX_ROUNDS:
      break
    done = {e["op"] for e in excluded}
    try:
      snr = sensitivity()
    except Stop as e:
      stopped = str(e)
      break
    ranked = sorted((v, n) for n, v in snr.items() if n not in done)
    if not ranked:
      break
    take = max(1, int(len(ranked) * PER_ROUND))
    excluded += [{"op": n, "sqnr_db": round(v, 2) if math.isfinite(v) else None}
                 for v, n in ranked[:take]]
  _, excluded, kept = best
  if kept != round_:
    quantize([e["op"] for e in excluded])  # deterministic: the same ranges, the same bytes
  info = {"fallback": excluded, "rounds": round_, "kept_round": kept, "history": history}
  if stopped:
    info["stopped"] = stopped
  return info
