package edgediff.core

/** One exported component in some runtime: named input tensors in, its one output out
 * (NCHW, whatever the artifact's layout: the runtime wrapper converts). */
interface Runner {
  fun run(feeds: Map<String, Tensor>): Tensor
}

class Runners(val textEncoder: Runner, val unet: Runner, val vaeDecoder: Runner)

/** What the sampler needs from a manifest. */
class SamplerConfig(
    val latentShape: IntArray,  // (C, h, w)
    val unetBatch: Int,  // 2: both guidance branches in one call
    val predictionType: String,  // epsilon, v_prediction or sample
    val schedule: Schedule
)

class Generation(
    val image: Tensor,  // (1, 3, H, W) in [0, 1]
    val latents: List<FloatArray>,  // after each step
    val millis: Map<String, Double>  // per component, summed over its calls
)

/**
 * Text to image: tokenizer -> text encoder -> DDIM over `steps` (eta 0; the one-step x0 path
 * with steps = 1; classifier-free guidance when `guidance` != 1, in one batch-2 UNet call
 * when the export has batch 2) -> decoder. The same arithmetic as edgediff/generate.py, in
 * the same order and precision (guidance in float32, the DDIM update in float64), so that
 * given the same runners and initial noise the latents agree bit for bit.
 */
object Sampler {
  fun generate(
      runners: Runners,
      tokenizer: ClipTokenizer,
      config: SamplerConfig,
      prompt: String,
      steps: Int,
      guidance: Float,
      noise: FloatArray,
      onStep: (Int, Int) -> Unit = { _, _ -> }
  ): Generation {
    require(steps >= 1) { "steps must be 1 or more, got $steps" }
    require(!guidance.isNaN() && !guidance.isInfinite()) { "guidance must be finite" }
    val millis = LinkedHashMap<String, Double>()
    fun timed(component: String, runner: Runner, feeds: Map<String, Tensor>): Tensor {
      val start = System.nanoTime()
      val out = runner.run(feeds)
      millis[component] = (millis[component] ?: 0.0) + (System.nanoTime() - start) / 1e6
      return out
    }

    val useCfg = guidance != 1.0f
    val prompts = if (useCfg) listOf("", prompt) else listOf(prompt)
    val embeddings = prompts.map {
      timed("text_encoder", runners.textEncoder,
            mapOf("input_ids" to Tensor.ofInts(intArrayOf(1, ClipTokenizer.MAX_TOKENS),
                                               tokenizer.encode(it))))
    }
    val shape = intArrayOf(1) + config.latentShape
    val n = Tensor.size(shape)
    require(noise.size == n) { "noise holds ${noise.size} values, the latent ${shape.contentToString()} $n" }
    var x = noise.copyOf()
    val abarAll = config.schedule.alphasCumprod()
    val timesteps = config.schedule.timesteps(steps)
    val latents = ArrayList<FloatArray>()
    for ((i, t) in timesteps.withIndex()) {
      val outs: List<FloatArray> = if (useCfg && config.unetBatch == 2) {
        val both = timed("unet", runners.unet, mapOf(
            "sample" to Tensor.of(intArrayOf(2) + config.latentShape, x + x),
            "timestep" to Tensor.of(intArrayOf(2), floatArrayOf(t.toFloat(), t.toFloat())),
            "encoder_hidden_states" to concat(embeddings))).toFloats()
        listOf(both.copyOfRange(0, n), both.copyOfRange(n, 2 * n))
      } else {
        embeddings.map {
          timed("unet", runners.unet, mapOf(
              "sample" to Tensor.of(shape, x),
              "timestep" to Tensor.of(intArrayOf(1), floatArrayOf(t.toFloat())),
              "encoder_hidden_states" to it)).toFloats()
        }
      }
      val modelOut = if (useCfg) FloatArray(n) { outs[0][it] + guidance * (outs[1][it] - outs[0][it]) }
                     else outs[0]
      val abar = abarAll[t].toDouble()
      val abarPrev = if (i + 1 < timesteps.size) abarAll[timesteps[i + 1]].toDouble()
                     else abarAll[0].toDouble()  // SD's final alpha is abar[0], not 1
      val a = Math.sqrt(abar)
      val s = Math.sqrt(1 - abar)
      val next = FloatArray(n)
      for (k in 0 until n) {
        val xk = x[k].toDouble()
        val out = modelOut[k].toDouble()
        val x0: Double
        val eps: Double
        when (config.predictionType) {
          "epsilon" -> { x0 = (xk - s * out) / a; eps = out }
          "v_prediction" -> { x0 = a * xk - s * out; eps = a * out + s * xk }
          "sample" -> { x0 = out; eps = (xk - a * out) / s }  // one-step models predict x0
          else -> throw IllegalArgumentException("prediction type '${config.predictionType}'")
        }
        next[k] = (if (steps == 1) x0 else Math.sqrt(abarPrev) * x0 + Math.sqrt(1 - abarPrev) * eps)
            .toFloat()
      }
      x = next
      latents.add(x)
      onStep(i + 1, timesteps.size)
    }
    // Clipped to [0, 1] as generate.py does: a decoder exported with --no-clamp leaves it.
    val decoded = timed("vae_decoder", runners.vaeDecoder, mapOf("latent" to Tensor.of(shape, x)))
    val pixels = decoded.toFloats()
    val image = Tensor.of(decoded.shape,
        FloatArray(pixels.size) { Math.min(Math.max(pixels[it], 0f), 1f) })
    return Generation(image, latents, millis)
  }

  private fun concat(tensors: List<Tensor>): Tensor {
    val parts = tensors.map { it.toFloats() }
    val shape = tensors[0].shape.copyOf()
    shape[0] = tensors.fold(0) { sum, t -> sum + t.shape[0] }
    return Tensor.of(shape, parts.reduce { a, b -> a + b })
  }
}
