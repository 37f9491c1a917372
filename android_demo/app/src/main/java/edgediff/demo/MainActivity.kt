package edgediff.demo

import android.app.Activity
import android.graphics.Bitmap
import android.os.Bundle
import android.os.Handler
import android.os.Looper
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.EditText
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import edgediff.core.ClipTokenizer
import edgediff.core.Images
import edgediff.core.Manifest
import edgediff.core.Runners
import edgediff.core.Sampler
import edgediff.core.Verify
import edgediff.core.nchwRunner
import java.io.File
import java.util.Random
import java.util.concurrent.Executors

/**
 * One screen: an export folder pushed by `edgediff adb-push` (manifest.json, the three
 * .tflite artifacts, their golden files, vocab.json and merges.txt), a delegate, and a
 * prompt. "Verify" checks every file's sha256 and runs every component's golden inputs
 * against the manifest's thresholds; "Generate" does that first, then runs the pipeline.
 */
class MainActivity : Activity() {
  private val worker = Executors.newSingleThreadExecutor()
  private val main = Handler(Looper.getMainLooper())
  private lateinit var folder: EditText
  private lateinit var prompt: EditText
  private lateinit var steps: EditText
  private lateinit var guidance: EditText
  private lateinit var threads: EditText
  private lateinit var delegate: Spinner
  private lateinit var image: ImageView
  private lateinit var log: TextView

  override fun onCreate(state: Bundle?) {
    super.onCreate(state)
    val column = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL; setPadding(24, 24, 24, 24) }
    fun field(hint: String, value: String) = EditText(this).apply { this.hint = hint; setText(value); column.addView(this) }
    folder = field("export folder", File(getExternalFilesDir(null), "export").path)
    prompt = field("prompt", "a small red triangle in the top left on a gray background")
    steps = field("steps", "8")
    guidance = field("guidance (1: off)", "1.0")
    threads = field("CPU threads", "4")
    delegate = Spinner(this).apply {
      adapter = ArrayAdapter(this@MainActivity, android.R.layout.simple_spinner_dropdown_item, Delegate.values())
      column.addView(this)
    }
    Button(this).apply { text = "Verify"; setOnClickListener { start(generate = false) }; column.addView(this) }
    Button(this).apply { text = "Verify and generate"; setOnClickListener { start(generate = true) }; column.addView(this) }
    image = ImageView(this).apply { adjustViewBounds = true; column.addView(this) }
    log = TextView(this).apply { setTextIsSelectable(true); column.addView(this) }
    setContentView(ScrollView(this).apply { addView(column) })
  }

  private fun say(line: String) = main.post { log.append(line + "\n") }

  private fun start(generate: Boolean) {
    log.text = ""
    val dir = File(folder.text.toString())
    val chosen = delegate.selectedItem as Delegate
    val n = steps.text.toString().toIntOrNull() ?: 8
    val g = guidance.text.toString().toFloatOrNull() ?: 1f
    val t = threads.text.toString().toIntOrNull() ?: 4
    val text = prompt.text.toString()
    worker.execute {
      try {
        run(dir, chosen, t, generate, text, n, g)
      } catch (e: Exception) {
        say("error: ${e.message ?: e.javaClass.simpleName}")
      }
    }
  }

  private fun run(dir: File, chosen: Delegate, threads: Int, generate: Boolean, text: String,
                  steps: Int, guidance: Float) {
    val manifest = Manifest.read(dir)
    if (manifest.format != "tflite") throw IllegalArgumentException("${manifest.format} export: this app runs TFLite")
    say("${manifest.pipeline} ${manifest.recipe}, delegate $chosen, $threads threads")
    val runners = manifest.components.mapValues { LiteRtRunner(File(dir, it.value.file), chosen, threads) }
    try {
      val verdicts = manifest.components.map { Verify.component(dir, it.value, runners[it.key]) }
      verdicts.forEach { say(it.toString()) }
      if (!generate) return
      if (verdicts.any { !it.passed }) {
        say("not generating: a component failed its check on this device")
        return
      }
      val tokenizer = ClipTokenizer.load(File(dir, "vocab.json").readText(), File(dir, "merges.txt").readText())
      val config = manifest.samplerConfig()
      val noise = Random(0).let { r -> FloatArray(config.latentShape.fold(1) { a, b -> a * b }) { r.nextGaussian().toFloat() } }
      val wrapped = Runners(
          nchwRunner(manifest.components.getValue("text_encoder"), runners.getValue("text_encoder")),
          nchwRunner(manifest.components.getValue("unet"), runners.getValue("unet")),
          nchwRunner(manifest.components.getValue("vae_decoder"), runners.getValue("vae_decoder")))
      val started = System.nanoTime()
      val result = Sampler.generate(wrapped, tokenizer, config, text, steps, guidance, noise) { step, of ->
        say("step $step/$of")
      }
      val (_, _, h, w) = result.image.shape.toList()
      val bitmap = Bitmap.createBitmap(Images.toArgb(result.image.toFloats(), h, w, nhwc = false), w, h,
                                       Bitmap.Config.ARGB_8888)
      main.post { image.setImageBitmap(Bitmap.createScaledBitmap(bitmap, w * 4, h * 4, false)) }
      result.millis.forEach { (component, ms) -> say("$component: %.0f ms".format(ms)) }
      say("total %.0f ms, peak memory %s".format((System.nanoTime() - started) / 1e6, peakMemory()))
    } finally {
      runners.values.forEach { it.close() }
    }
  }

  /** The process's peak resident set (VmHWM), what the kernel would kill it for. */
  private fun peakMemory(): String =
      File("/proc/self/status").readLines().firstOrNull { it.startsWith("VmHWM:") }
          ?.substringAfter(":")?.trim() ?: "unknown"
}
