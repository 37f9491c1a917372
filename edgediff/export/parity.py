"""The parity gate: an artifact's outputs against PyTorch fp32, with numbers and a verdict."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Thresholds:
  psnr_db: float  # minimum PSNR over the reference output's range, worst sample
  cosine: float  # minimum cosine similarity, worst sample


# Per recipe; fp32 differs from PyTorch by float reassociation only.
THRESHOLDS = {
    "fp32": Thresholds(psnr_db=60.0, cosine=0.99999),
    "fp16": Thresholds(psnr_db=40.0, cosine=0.9999),
    "int8_weight_only": Thresholds(psnr_db=30.0, cosine=0.999),
    "w8a16": Thresholds(psnr_db=30.0, cosine=0.999),
    "int8_dynamic": Thresholds(psnr_db=25.0, cosine=0.995),
    "int8_static": Thresholds(psnr_db=20.0, cosine=0.99),
}


@dataclasses.dataclass
class ParityReport:
  component: str
  max_abs: float
  mean_abs: float
  cosine: float
  psnr_db: float
  samples: int
  thresholds: Thresholds
  passed: bool = dataclasses.field(init=False)
  failures: list[str] = dataclasses.field(init=False)

  def __post_init__(self):
    self.failures = []
    if not self.psnr_db >= self.thresholds.psnr_db:
      self.failures.append(
          f"{self.component}: psnr_db {self.psnr_db:.2f} < {self.thresholds.psnr_db} "
          f"(short by {self.thresholds.psnr_db - self.psnr_db:.2f} dB)")
    if not self.cosine >= self.thresholds.cosine:
      self.failures.append(
          f"{self.component}: cosine {self.cosine:.6f} < {self.thresholds.cosine} "
          f"(short by {self.thresholds.cosine - self.cosine:.2e})")
    self.passed = not self.failures

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


def compare(component: str, references: list[np.ndarray], actuals: list[np.ndarray],
            thresholds: Thresholds) -> ParityReport:
  """Worst case over samples for PSNR and cosine; max and mean over all elements for errors."""
  errors = [np.abs(r.astype(np.float64) - a) for r, a in zip(references, actuals)]
  return ParityReport(
      component=component,
      max_abs=float(max(e.max() for e in errors)),
      mean_abs=float(np.mean([e.mean() for e in errors])),
      cosine=min(cosine(r, a) for r, a in zip(references, actuals)),
      psnr_db=min(psnr_db(r, a) for r, a in zip(references, actuals)),
      samples=len(references), thresholds=thresholds)
