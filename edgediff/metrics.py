"""Every figure edgediff measures, in one place: the parity gate (an artifact's outputs
against PyTorch fp32, with numbers and a verdict), lint's per-layer SQNR and the end-to-end
image PSNR.

It holds SNR over the reference's variance and the Pearson correlation, and SSIM for images,
to per-recipe thresholds: figures that an output filled with the reference's mean, or the
reference plus noise, cannot reach (PSNR over the range and the uncentred cosine could be
fooled by both, and are kept for the record).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Thresholds:
  snr_db: float  # minimum SNR over the reference's variance, worst sample
  pearson: float  # minimum Pearson correlation (centred cosine), worst sample
  ssim: float  # minimum mean SSIM, worst sample, for image outputs (the decoder's)


@dataclasses.dataclass
class ParityReport:
  component: str
  max_abs: float
  mean_abs: float
  snr_db: float
  pearson: float
  ssim: float | None  # image outputs only
  psnr_db: float  # over the reference's range: reported, not gated
  cosine: float  # uncentred: reported, not gated
  samples: int
  thresholds: Thresholds
  passed: bool = dataclasses.field(init=False)
  failures: list[str] = dataclasses.field(init=False)

  def __post_init__(self):
    self.failures = []
    if not self.snr_db >= self.thresholds.snr_db:
      self.failures.append(
          f"{self.component}: snr_db {self.snr_db:.2f} < {self.thresholds.snr_db} "
          f"(short by {self.thresholds.snr_db - self.snr_db:.2f} dB)")
    if not self.pearson >= self.thresholds.pearson:
      self.failures.append(
          f"{self.component}: pearson {self.pearson:.6f} < {self.thresholds.pearson} "
          f"(short by {self.thresholds.pearson - self.pearson:.2e})")
    if self.ssim is not None and not self.ssim >= self.thresholds.ssim:
      self.failures.append(
          f"{self.component}: ssim {self.ssim:.4f} < {self.thresholds.ssim} "
          f"(short by {self.thresholds.ssim - self.ssim:.4f})")
    self.passed = not self.failures

  def summary(self) -> str:
    ssim = "" if self.ssim is None else f", ssim {self.ssim:.4f}"
    return (f"snr {self.snr_db:.1f} dB, pearson {self.pearson:.6f}{ssim} (psnr "
            f"{self.psnr_db:.1f} dB)")

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out["thresholds"] = dataclasses.asdict(self.thresholds)
    return out


def psnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
  """PSNR over the reference's value range (its max minus min)."""
  reference = reference.astype(np.float64)
  mse = float(np.mean((reference - actual.astype(np.float64)) ** 2))
  peak = float(reference.max() - reference.min()) or 1.0
  return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def snr_db(reference: np.ndarray, actual: np.ndarray) -> float:
  """SNR over the reference's variance (its power about its own mean): 10 log10(var / mse).
  Unlike PSNR over the range, it does not credit an output for the reference's spread: the
  reference's mean everywhere scores 0 dB, and noise at k times the reference's standard
  deviation -20 log10(k) dB (0.5x: 6.0 dB, 0.1x: 20.0 dB)."""
  reference = reference.astype(np.float64)
  mse = float(np.mean((reference - actual.astype(np.float64)) ** 2))
  variance = float(reference.var())
  if mse == 0:
    return float("inf")
  return 10 * float(np.log10(variance / mse)) if variance else float("-inf")


def pearson(reference: np.ndarray, actual: np.ndarray) -> float:
  """The centred cosine (Pearson's r) of the two outputs: a constant output scores 0, where
  the uncentred cosine gives an image filled with its own mean 0.97."""
  a = reference.astype(np.float64).ravel()
  b = actual.astype(np.float64).ravel()
  a, b = a - a.mean(), b - b.mean()
  denom = np.linalg.norm(a) * np.linalg.norm(b)
  return float(a @ b / denom) if denom else float(np.array_equal(a, b))


def ssim(reference: np.ndarray, actual: np.ndarray) -> float:
  """Mean SSIM (scikit-image) over a batch of RGB images in [0, 1], NCHW or NHWC."""
  from skimage.metrics import structural_similarity

  channels = 0 if reference.shape[1] == 3 else -1  # of one image, (3, H, W) or (H, W, 3)
  return float(np.mean([structural_similarity(r, a, channel_axis=channels, data_range=1.0)
                        for r, a in zip(reference, actual)]))


def cosine(reference: np.ndarray, actual: np.ndarray) -> float:
  a = reference.astype(np.float64).ravel()
  b = actual.astype(np.float64).ravel()
  denom = np.linalg.norm(a) * np.linalg.norm(b)
  return float(a @ b / denom) if denom else float(np.array_equal(a, b))


def is_image(output: np.ndarray) -> bool:
  """A batch of RGB images (the decoder's output), NCHW or NHWC."""
  return output.ndim == 4 and 3 in (output.shape[1], output.shape[-1])


def compare(component: str, references: list[np.ndarray], actuals: list[np.ndarray],
            thresholds: Thresholds) -> ParityReport:
  """Worst case over samples for every figure; max and mean over all elements for errors."""
  errors = [np.abs(r.astype(np.float64) - a) for r, a in zip(references, actuals)]
  pairs = list(zip(references, actuals))
  return ParityReport(
      component=component,
      max_abs=float(max(e.max() for e in errors)),
      mean_abs=float(np.mean([e.mean() for e in errors])),
      snr_db=min(snr_db(r, a) for r, a in pairs),
      pearson=min(pearson(r, a) for r, a in pairs),
      # On the pixels an app shows, clipped to [0, 1] (a decoder exported with --no-clamp
      # leaves that to the app).
      ssim=(min(ssim(np.clip(r, 0, 1), np.clip(a, 0, 1)) for r, a in pairs)
            if is_image(references[0]) else None),
      psnr_db=min(psnr_db(r, a) for r, a in pairs),
      cosine=min(cosine(r, a) for r, a in pairs),
      samples=len(references), thresholds=thresholds)


def _float64(x) -> np.ndarray:
  """An array of float64 from a numpy array or a torch tensor (which may need its grad cut)."""
  return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)


def sqnr_db(reference, actual) -> float:
  """Signal to quantization noise: the reference's mean square over the error's, in dB
  (inf when equal). Lint's figure, per layer and for a whole model."""
  ref, act = _float64(reference), _float64(actual)
  noise = float(((act - ref) ** 2).mean())
  if noise == 0:
    return float("inf")
  return 10 * float(np.log10(max(float((ref ** 2).mean()), 1e-30) / noise))


def image_psnr_db(reference: np.ndarray, actual: np.ndarray) -> float:
  """PSNR of two [0, 1] images (peak 1): the end-to-end gate's figure."""
  mse = float(np.mean((reference.astype(np.float64) - actual.astype(np.float64)) ** 2))
  return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)
