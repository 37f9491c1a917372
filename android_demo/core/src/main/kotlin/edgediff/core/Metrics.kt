package edgediff.core

/** A parity check's numbers and verdict, as edgediff/export/parity.py computes them: the
 * worst sample's SNR (over the reference's variance) and Pearson correlation, held to the
 * manifest's thresholds, with its PSNR (over the reference's value range) and largest
 * absolute error for the record. The host's gate also holds decoded images to an SSIM
 * threshold; the device checks the two figures that every component has. */
class ParityReport(
    val maxAbs: Double,
    val psnrDb: Double,
    val snrDb: Double,
    val pearson: Double,
    val snrThreshold: Double,
    val pearsonThreshold: Double
) {
  val failures: List<String> get() {
    val out = ArrayList<String>()
    if (!(snrDb >= snrThreshold)) out.add("snr %.2f dB < %s".format(snrDb, snrThreshold))
    if (!(pearson >= pearsonThreshold)) out.add("pearson %.6f < %s".format(pearson, pearsonThreshold))
    return out
  }
  val passed: Boolean get() = failures.isEmpty()
}

object Metrics {
  fun psnrDb(reference: FloatArray, actual: FloatArray): Double {
    requireSameSize(reference, actual)
    var sum = 0.0
    var lo = Double.POSITIVE_INFINITY
    var hi = Double.NEGATIVE_INFINITY
    for (i in reference.indices) {
      val r = reference[i].toDouble()
      val d = r - actual[i].toDouble()
      sum += d * d
      lo = Math.min(lo, r)
      hi = Math.max(hi, r)
    }
    val mse = sum / reference.size
    val peak = if (hi - lo != 0.0) hi - lo else 1.0
    return if (mse == 0.0) Double.POSITIVE_INFINITY else 10 * Math.log10(peak * peak / mse)
  }

  /** 10 log10(variance of the reference / mean squared error). */
  fun snrDb(reference: FloatArray, actual: FloatArray): Double {
    requireSameSize(reference, actual)
    val mean = reference.fold(0.0) { acc, v -> acc + v } / reference.size
    var variance = 0.0
    var sum = 0.0
    for (i in reference.indices) {
      val r = reference[i].toDouble()
      val d = r - actual[i].toDouble()
      variance += (r - mean) * (r - mean)
      sum += d * d
    }
    return when {
      sum == 0.0 -> Double.POSITIVE_INFINITY
      variance == 0.0 -> Double.NEGATIVE_INFINITY
      else -> 10 * Math.log10(variance / sum)
    }
  }

  /** The centred cosine (Pearson's r): a constant output scores 0. */
  fun pearson(reference: FloatArray, actual: FloatArray): Double {
    requireSameSize(reference, actual)
    val ma = reference.fold(0.0) { acc, v -> acc + v } / reference.size
    val mb = actual.fold(0.0) { acc, v -> acc + v } / actual.size
    var dot = 0.0
    var na = 0.0
    var nb = 0.0
    for (i in reference.indices) {
      val a = reference[i] - ma
      val b = actual[i] - mb
      dot += a * b
      na += a * a
      nb += b * b
    }
    val denom = Math.sqrt(na) * Math.sqrt(nb)
    return if (denom != 0.0) dot / denom else if (reference.contentEquals(actual)) 1.0 else 0.0
  }

  fun maxAbs(reference: FloatArray, actual: FloatArray): Double {
    requireSameSize(reference, actual)
    var worst = 0.0
    for (i in reference.indices) {
      worst = Math.max(worst, Math.abs(reference[i].toDouble() - actual[i].toDouble()))
    }
    return worst
  }

  fun compare(references: List<FloatArray>, actuals: List<FloatArray>, snrThreshold: Double,
              pearsonThreshold: Double): ParityReport {
    require(references.size == actuals.size && references.isNotEmpty()) { "samples do not pair up" }
    val pairs = references.zip(actuals)
    return ParityReport(
        maxAbs = pairs.map { maxAbs(it.first, it.second) }.reduce { a, b -> Math.max(a, b) },
        psnrDb = pairs.map { psnrDb(it.first, it.second) }.reduce { a, b -> Math.min(a, b) },
        snrDb = pairs.map { snrDb(it.first, it.second) }.reduce { a, b -> Math.min(a, b) },
        pearson = pairs.map { pearson(it.first, it.second) }.reduce { a, b -> Math.min(a, b) },
        snrThreshold = snrThreshold, pearsonThreshold = pearsonThreshold)
  }

  private fun requireSameSize(a: FloatArray, b: FloatArray) =
      require(a.size == b.size) { "${a.size} values against ${b.size}" }
}
