@file:Suppress("UNCHECKED_CAST")

package edgediff.core

import java.io.File
import java.security.MessageDigest

class TensorSpec(val name: String, val shape: IntArray, val dtype: String)

/** One component's entry of manifest.json. */
class ComponentEntry(
    val name: String,
    val file: String,
    val sha256: String,
    val bytes: Long,
    val externalData: Map<String, Long>,  // file -> bytes (large ONNX models)
    val layout: String,  // NCHW, or NHWC for a channel-last TFLite interface
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
    val golden: String,
    val snrThreshold: Double,
    val pearsonThreshold: Double,
    val passed: Boolean
)

/** An export folder's manifest.json: what the app needs to verify and run it. */
class Manifest(
    val pipeline: String,
    val format: String,  // tflite or onnx
    val recipe: String,
    val batch: Int,
    val latentSize: Int,
    val predictionType: String,
    val schedule: Schedule,
    val components: Map<String, ComponentEntry>
) {
  /** The sampler's settings: the UNet's latent shape (C, h, w), in NCHW. */
  fun samplerConfig(): SamplerConfig {
    val unet = components["unet"] ?: throw IllegalArgumentException("the export has no unet")
    val s = unet.inputs[0].shape
    val latent = if (unet.layout == "NHWC") intArrayOf(s[3], s[1], s[2]) else intArrayOf(s[1], s[2], s[3])
    return SamplerConfig(latent, batch, predictionType, schedule)
  }

  companion object {
    const val FILE = "manifest.json"

    fun read(folder: File): Manifest = parse(File(folder, FILE).readText())

    fun parse(text: String): Manifest {
      val m = Json.parse(text) as? Map<String, Any?> ?: throw IllegalArgumentException("manifest: not an object")
      val schedule = m["schedule"] as? Map<String, Any?>
      return Manifest(
          pipeline = m.str("pipeline"), format = m.str("format"), recipe = m.str("recipe"),
          batch = m.num("batch").toInt(), latentSize = m.num("latent_size").toInt(),
          predictionType = m["prediction_type"] as? String ?: "epsilon",
          schedule = if (schedule == null) Schedule.SD else Schedule(
              schedule.num("beta_start"), schedule.num("beta_end"),
              schedule.bool("zero_terminal_snr"), schedule.str("spacing")),
          components = m.obj("components").mapValues { component(it.key, it.value as Map<String, Any?>) })
    }

    private fun component(name: String, e: Map<String, Any?>): ComponentEntry {
      val thresholds = e.obj("parity").obj("thresholds")
      return ComponentEntry(
          name = name, file = e.str("file"), sha256 = e.str("sha256"), bytes = e.num("bytes").toLong(),
          externalData = (e["external_data"] as? List<Any?> ?: emptyList()).associate {
            val d = it as Map<String, Any?>
            d.str("file") to d.num("bytes").toLong()
          },
          layout = e["layout"] as? String ?: "NCHW",
          inputs = e.list("inputs").map { spec(it) }, outputs = e.list("outputs").map { spec(it) },
          golden = e.str("golden"), snrThreshold = thresholds.num("snr_db"),
          pearsonThreshold = thresholds.num("pearson"), passed = e.bool("passed"))
    }

    private fun spec(value: Any?): TensorSpec {
      val s = value as Map<String, Any?>
      return TensorSpec(s.str("name"), s.list("shape").ints(), s.str("dtype"))
    }
  }
}

/** One component's self-check on the device: its file is the one exported, and its golden
 * inputs give the expected output within the manifest's own thresholds. */
class ComponentVerdict(val component: String, val problems: List<String>, val report: ParityReport?) {
  val passed: Boolean get() = problems.isEmpty() && report != null && report.passed
  override fun toString(): String = when {
    problems.isNotEmpty() -> "$component: FAILED: ${problems.joinToString("; ")}"
    report == null -> "$component: not run"
    else -> "$component: ${if (report.passed) "passed" else "FAILED"}: snr %.1f dB, pearson %.6f%s".format(
        report.snrDb, report.pearson, if (report.passed) "" else " (" + report.failures.joinToString("; ") + ")")
  }
}

object Verify {
  fun sha256(file: File): String {
    val digest = MessageDigest.getInstance("SHA-256")
    file.inputStream().use { input ->
      val buffer = ByteArray(1 shl 20)
      while (true) {
        val n = input.read(buffer)
        if (n < 0) break
        digest.update(buffer, 0, n)
      }
    }
    return digest.digest().joinToString("") { String.format("%02x", it) }
  }

  /** The files of an entry: present, of the size and sha256 the manifest records. */
  fun checkFiles(folder: File, entry: ComponentEntry): List<String> {
    val problems = ArrayList<String>()
    val file = File(folder, entry.file)
    if (!file.isFile) return listOf("${entry.file} is missing")
    if (sha256(file) != entry.sha256) problems.add("${entry.file}: sha256 differs from the manifest's")
    for ((name, bytes) in entry.externalData) {
      val data = File(folder, name)
      if (!data.isFile || data.length() != bytes) problems.add("$name: missing or not $bytes bytes")
    }
    if (!File(folder, entry.golden).isFile) problems.add("${entry.golden} is missing")
    return problems
  }

  /** Files first; then the golden inputs through `runner`, against `expected_<output>`. */
  fun component(folder: File, entry: ComponentEntry, runner: Runner?): ComponentVerdict {
    val problems = checkFiles(folder, entry)
    if (problems.isNotEmpty() || runner == null) return ComponentVerdict(entry.name, problems, null)
    val golden = Npy.readNpz(File(folder, entry.golden))
    val feeds = LinkedHashMap<String, Tensor>()
    for (spec in entry.inputs) {
      feeds[spec.name] = golden[spec.name]
          ?: return ComponentVerdict(entry.name, listOf("${entry.golden} lacks input ${spec.name}"), null)
    }
    val output = entry.outputs[0].name
    val expected = golden["expected_$output"]
        ?: return ComponentVerdict(entry.name, listOf("${entry.golden} lacks expected_$output"), null)
    val actual = runner.run(feeds)
    if (!actual.shape.contentEquals(expected.shape)) {
      return ComponentVerdict(entry.name, listOf("output shape ${actual.shape.contentToString()}, " +
          "expected ${expected.shape.contentToString()}"), null)
    }
    val report = Metrics.compare(listOf(expected.toFloats()), listOf(actual.toFloats()),
                                 entry.snrThreshold, entry.pearsonThreshold)
    return ComponentVerdict(entry.name, emptyList(), report)
  }
}

/** The artifact's runner as the sampler wants it (NCHW) when the artifact is channel-last:
 * 4-D inputs go in NHWC, a 4-D output comes back NCHW. The golden files are in the
 * artifact's own layout, so verification uses the raw runner. */
fun nchwRunner(entry: ComponentEntry, raw: Runner): Runner {
  if (entry.layout != "NHWC") return raw
  return object : Runner {
    override fun run(feeds: Map<String, Tensor>): Tensor {
      val out = raw.run(feeds.mapValues { if (it.value.shape.size == 4) toNhwc(it.value) else it.value })
      return if (out.shape.size == 4) toNchw(out) else out
    }
  }
}

internal fun toNhwc(t: Tensor): Tensor = swapChannels(t, toLast = true)

internal fun toNchw(t: Tensor): Tensor = swapChannels(t, toLast = false)

/** (n, c, h, w) -> (n, h, w, c) with `toLast`, else back: one loop over the NCHW index. */
private fun swapChannels(t: Tensor, toLast: Boolean): Tensor {
  val s = t.shape
  val (n, c, h, w) = if (toLast) s.toList() else listOf(s[0], s[3], s[1], s[2])
  val src = t.toFloats()
  val out = FloatArray(src.size)
  for (b in 0 until n) for (k in 0 until c) for (y in 0 until h) for (x in 0 until w) {
    val nchw = ((b * c + k) * h + y) * w + x
    val nhwc = ((b * h + y) * w + x) * c + k
    if (toLast) out[nhwc] = src[nchw] else out[nchw] = src[nhwc]
  }
  return Tensor.of(if (toLast) intArrayOf(n, h, w, c) else intArrayOf(n, c, h, w), out)
}
