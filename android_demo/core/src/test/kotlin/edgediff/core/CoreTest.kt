@file:Suppress("UNCHECKED_CAST")

package edgediff.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File

/**
 * The Kotlin core against golden vectors written by edgediff's Python code
 * (android_demo/scripts/write_golden.py): token ids, schedules and sampler latents must agree
 * exactly, metrics to rounding. The folder comes from -Dedgediff.golden=DIR.
 */
class CoreTest {
  private val dir = File(System.getProperty("edgediff.golden") ?: error("set -Dedgediff.golden=DIR"))
  private val golden = Json.parse(File(dir, "golden.json").readText()) as Map<String, Any?>
  private val tokenizer = ClipTokenizer.load(File(dir, "vocab.json").readText(),
                                             File(dir, "merges.txt").readText())

  @Test fun tokenIdsMatchPython() {
    for (case in golden.list("tokens")) {
      val c = case as Map<String, Any?>
      assertArrayEquals("prompt '${c.str("prompt")}'", c.list("ids").ints(), tokenizer.encode(c.str("prompt")))
    }
  }

  @Test fun oneChangedExpectedIdIsSeen() {
    val c = golden.list("tokens")[2] as Map<String, Any?>
    val expected = c.list("ids").ints()
    expected[3] += 1
    assertFalse(expected.contentEquals(tokenizer.encode(c.str("prompt"))))
  }

  @Test fun schedulesMatchPythonBitForBit() {
    val schedules = mapOf("sd" to Schedule.SD, "zero_snr" to Schedule.ZERO_SNR)
    for ((name, schedule) in schedules) {
      val g = golden.obj("schedules").obj(name)
      assertBits("$name alphas_cumprod", g.list("alphas_cumprod").floats(), schedule.alphasCumprod())
      for ((steps, expected) in g.obj("timesteps")) {
        assertArrayEquals("$name timesteps($steps)", (expected as List<Any?>).ints(),
                          schedule.timesteps(steps.toInt()))
      }
    }
  }

  @Test fun samplerMatchesPythonBitForBit() {
    val cases = golden.list("sampler")
    assertTrue(cases.size >= 6)
    for (case in cases) {
      val c = case as Map<String, Any?>
      val what = "${c.str("schedule")} ${c.str("prediction_type")} steps ${c.num("steps")} " +
                 "guidance ${c.num("guidance")} batch ${c.num("unet_batch")}"
      val config = SamplerConfig(
          c.list("latent_shape").ints(), c.num("unet_batch").toInt(), c.str("prediction_type"),
          if (c.str("schedule") == "sd") Schedule.SD else Schedule.ZERO_SNR)
      val result = Sampler.generate(FAKES, tokenizer, config, c.str("prompt"), c.num("steps").toInt(),
                                    c.num("guidance").toFloat(), c.list("noise").floats())
      val latents = c.list("latents")
      assertEquals(what, latents.size, result.latents.size)
      for ((i, expected) in latents.withIndex()) {
        assertBits("$what, step ${i + 1}", (expected as List<Any?>).floats(), result.latents[i])
      }
      assertBits("$what, image", c.list("image").floats(), result.image.toFloats())
    }
  }

  @Test fun imageBytesMatchSavePng() {
    val g = golden.obj("image")
    val (_, h, w) = g.list("shape").ints().toList()
    val rgb = g.list("rgb").ints()
    val expected = ByteArray(rgb.size) { rgb[it].toByte() }
    assertArrayEquals(expected, Images.toRgb(g.list("chw").floats(), h, w, nhwc = false))
    assertArrayEquals(expected, Images.toRgb(g.list("hwc").floats(), h, w, nhwc = true))
    val argb = Images.toArgb(g.list("chw").floats(), h, w, nhwc = false)
    assertEquals(((rgb[0] and 0xFF) shl 16) or ((rgb[1] and 0xFF) shl 8) or (rgb[2] and 0xFF),
                 argb[0] and 0xFFFFFF)
  }

  @Test fun metricsMatchTheParityGate() {
    for (case in golden.list("metrics")) {
      val c = case as Map<String, Any?>
      val thresholds = c.obj("thresholds")
      val report = Metrics.compare(listOf(c.list("reference").floats()), listOf(c.list("actual").floats()),
                                   thresholds.num("snr_db"), thresholds.num("pearson"))
      val psnr = c["psnr_db"] as Double?
      if (psnr == null) assertEquals(Double.POSITIVE_INFINITY, report.psnrDb, 0.0)
      else assertEquals(psnr, report.psnrDb, 1e-9 * Math.abs(psnr))
      val snr = c["snr_db"] as Double?
      if (snr == null) assertEquals(Double.POSITIVE_INFINITY, report.snrDb, 0.0)
      else assertEquals(snr, report.snrDb, 1e-9 * Math.abs(snr))
      assertEquals(c.num("pearson"), report.pearson, 1e-12)
      assertEquals(c.num("max_abs"), report.maxAbs, 0.0)
      assertEquals(c.bool("passed"), report.passed)
    }
  }

  @Test fun manifestAndGoldenOfARealExport() {
    val folder = File(dir, golden.str("export"))
    val manifest = Manifest.read(folder)
    assertEquals("tflite", manifest.format)
    val entry = manifest.components.getValue("text_encoder")
    assertEquals(listOf<String>(), Verify.checkFiles(folder, entry))
    val npz = Npy.readNpz(File(folder, entry.golden))
    val ids = npz.getValue(entry.inputs[0].name)
    assertArrayEquals(entry.inputs[0].shape, ids.shape)
    assertFalse(ids.isFloat)
    val expected = npz.getValue("expected_" + entry.outputs[0].name)
    assertArrayEquals(entry.outputs[0].shape, expected.shape)
    // The golden output itself passes; the same output with noise fails, and says why.
    val echo = object : Runner { override fun run(feeds: Map<String, Tensor>) = expected }
    assertTrue(Verify.component(folder, entry, echo).passed)
    val noisy = object : Runner {
      override fun run(feeds: Map<String, Tensor>): Tensor {
        val v = expected.toFloats()
        return Tensor.of(expected.shape, FloatArray(v.size) { v[it] + (if (it % 2 == 0) 0.5f else -0.5f) })
      }
    }
    val verdict = Verify.component(folder, entry, noisy)
    assertFalse(verdict.passed)
    assertTrue(verdict.toString(), verdict.toString().contains("FAILED"))
  }

  @Test fun aChangedArtifactIsCaughtBeforeItRuns() {
    val src = File(dir, golden.str("export"))
    val folder = java.nio.file.Files.createTempDirectory("edgediff").toFile()
    try {
      src.listFiles()!!.forEach { it.copyTo(File(folder, it.name)) }
      val entry = Manifest.read(folder).components.getValue("text_encoder")
      val artifact = File(folder, entry.file)
      val bytes = artifact.readBytes()
      bytes[bytes.size / 2] = (bytes[bytes.size / 2] + 1).toByte()
      artifact.writeBytes(bytes)
      val problems = Verify.checkFiles(folder, entry)
      assertEquals(listOf("${entry.file}: sha256 differs from the manifest's"), problems)
    } finally {
      folder.deleteRecursively()
    }
  }

  @Test fun channelLastRunnerRoundTrips() {
    val t = Tensor.of(intArrayOf(1, 2, 3, 4), FloatArray(24) { it.toFloat() })
    assertArrayEquals(t.toFloats(), toNchw(toNhwc(t)).toFloats(), 0f)
    assertEquals(12f, toNhwc(t).toFloats()[1], 0f)  // NHWC (0,0,0,1) is NCHW (0,1,0,0): 1 * 3 * 4
  }

  private fun assertBits(what: String, expected: FloatArray, actual: FloatArray) {
    assertEquals("$what: length", expected.size, actual.size)
    for (i in expected.indices) {
      if (java.lang.Float.floatToIntBits(expected[i]) != java.lang.Float.floatToIntBits(actual[i])) {
        throw AssertionError("$what: value $i is ${actual[i]}, Python's ${expected[i]}")
      }
    }
  }

  companion object {
    // The same small runners as write_golden.py's, in the same float32 order.
    const val HIDDEN = 4
    val FAKES = Runners(
        textEncoder = object : Runner {
          override fun run(feeds: Map<String, Tensor>): Tensor {
            val ids = feeds.getValue("input_ids")
            val (b, n) = ids.shape.toList()
            val values = ids.toFloats()
            return Tensor.of(intArrayOf(b, n, HIDDEN), FloatArray(b * n * HIDDEN) { values[it / HIDDEN] * 1e-4f })
          }
        },
        unet = object : Runner {
          override fun run(feeds: Map<String, Tensor>): Tensor {
            val x = feeds.getValue("sample")
            val t = feeds.getValue("timestep").toFloats()
            val text = feeds.getValue("encoder_hidden_states")
            val xs = x.toFloats()
            val per = xs.size / x.shape[0]
            val textValues = text.toFloats()
            val textPer = textValues.size / text.shape[0]
            return Tensor.of(x.shape, FloatArray(xs.size) {
              val b = it / per
              xs[it] * 0.9f + t[b] * 0.001f + textValues[b * textPer + HIDDEN] * 0.5f
            })
          }
        },
        vaeDecoder = object : Runner {
          override fun run(feeds: Map<String, Tensor>): Tensor {
            val latent = feeds.getValue("latent")
            val (b, c, h, w) = latent.shape.toList()
            val v = latent.toFloats()
            return Tensor.of(intArrayOf(b, 3, h, w), FloatArray(b * 3 * h * w) {
              val batch = it / (3 * h * w)
              v[batch * c * h * w + it % (3 * h * w)] * 0.5f + 0.5f
            })
          }
        })
  }
}
