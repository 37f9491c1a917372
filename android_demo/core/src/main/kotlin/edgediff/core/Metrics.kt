package edgediff.core

/** A parity check's numbers and verdict, as edgediff/export/parity.py computes them: the
 * worst sample's PSNR (over the reference's value range) and cosine, the largest absolute
 * error, held to the manifest's thresholds. */
class ParityReport(
    val maxAbs: Double,
    val psnrDb: Double,
    val cosine: Double,
    val psnrThreshold: Double,
    val cosineThreshold: Double
) {
  val failures: List<String> get() {
    val out = ArrayList<String>()
    if (!(psnrDb >= psnrThreshold)) out.add("psnr %.2f dB < %s".format(psnrDb, psnrThreshold))
    if (!(cosine >= cosineThreshold)) out.add("cosine %.6f < %s".format(cosine, cosineThreshold))
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

  fun cosine(reference: FloatArray, actual: FloatArray): Double {
    requireSameSize(reference, actual)
    var dot = 0.0
    var na = 0.0
    var nb = 0.0
    for (i in reference.indices) {
      val a = reference[i].toDouble()
      val b = actual[i].toDouble()
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

  fun compare(references: List<FloatArray>, actuals: List<FloatArray>, psnrThreshold: Double,
              cosineThreshold: Double): ParityReport {
    require(references.size == actuals.size && references.isNotEmpty()) { "samples do not pair up" }
    val pairs = references.zip(actuals)
    return ParityReport(
        maxAbs = pairs.map { maxAbs(it.first, it.second) }.reduce { a, b -> Math.max(a, b) },
        psnrDb = pairs.map { psnrDb(it.first, it.second) }.reduce { a, b -> Math.min(a, b) },
        cosine = pairs.map { cosine(it.first, it.second) }.reduce { a, b -> Math.min(a, b) },
        psnrThreshold = psnrThreshold, cosineThreshold = cosineThreshold)
  }

  private fun requireSameSize(a: FloatArray, b: FloatArray) =
      require(a.size == b.size) { "${a.size} values against ${b.size}" }
}
