package edgediff.core

/**
 * The noise schedule of a pipeline, from its manifest's "schedule": SD's scaled-linear betas
 * over 1000 training steps, optionally rescaled to zero terminal SNR, and the DDIM timesteps
 * ("leading" as SD, "trailing" from t = 999). The same numbers as edgediff/schedule.py, bit
 * for bit: torch's linspace (filled from both ends), a float64 cumulative product, float32
 * at the end.
 */
class Schedule(
    val betaStart: Double = 0.00085,
    val betaEnd: Double = 0.012,
    val zeroTerminalSnr: Boolean = false,
    val spacing: String = "leading"
) {
  init {
    require(spacing == "leading" || spacing == "trailing") { "timestep spacing '$spacing'" }
  }

  fun alphasCumprod(): FloatArray {
    val n = TRAIN_STEPS
    val start = Math.sqrt(betaStart)
    val end = Math.sqrt(betaEnd)
    val step = (end - start) / (n - 1)
    val abar = DoubleArray(n)
    var product = 1.0
    for (i in 0 until n) {
      val root = if (i < n / 2) start + step * i else end - step * (n - 1 - i)  // torch.linspace
      product *= 1.0 - root * root
      abar[i] = product
    }
    if (zeroTerminalSnr) {  // shift sqrt(abar) to end at 0, scaled to keep its first value
      val first = Math.sqrt(abar[0])
      val last = Math.sqrt(abar[n - 1])
      for (i in 0 until n) {
        val root = (Math.sqrt(abar[i]) - last) * first / (first - last)
        abar[i] = root * root
      }
    }
    return FloatArray(n) { abar[it].toFloat() }
  }

  fun timesteps(steps: Int): IntArray {
    require(steps >= 1) { "steps must be 1 or more, got $steps" }
    if (spacing == "trailing") {  // np.round(np.arange(1000, 0, -1000 / steps)) - 1
      val step = -TRAIN_STEPS.toDouble() / steps
      val delta = (TRAIN_STEPS + step) - TRAIN_STEPS  // numpy fills start + i * (x1 - x0)
      val count = Math.ceil((0.0 - TRAIN_STEPS) / step).toInt()
      return IntArray(count) { Math.rint(TRAIN_STEPS + it * delta).toInt() - 1 }
    }
    val ratio = TRAIN_STEPS / steps
    return IntArray(steps) { (steps - 1 - it) * ratio + 1 }
  }

  companion object {
    const val TRAIN_STEPS = 1000
    val SD = Schedule()
    val ZERO_SNR = Schedule(zeroTerminalSnr = true, spacing = "trailing")
  }
}
