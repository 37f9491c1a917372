package edgediff.demo

import edgediff.core.Runner
import edgediff.core.Tensor
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.gpu.GpuDelegate
import org.tensorflow.lite.nnapi.NnApiDelegate
import java.io.Closeable
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

enum class Delegate { CPU, GPU, NNAPI }

/** One .tflite artifact in LiteRT's Interpreter, called through its one signature with the
 * manifest's tensor names, in the artifact's own layout. */
class LiteRtRunner(file: File, val delegate: Delegate, threads: Int) : Runner, Closeable {
  private val gpu = if (delegate == Delegate.GPU) GpuDelegate() else null
  private val nnapi = if (delegate == Delegate.NNAPI) NnApiDelegate() else null
  private val interpreter = Interpreter(file, Interpreter.Options().apply {
    setNumThreads(threads)
    setUseXNNPACK(delegate == Delegate.CPU)
    gpu?.let { addDelegate(it) }
    nnapi?.let { addDelegate(it) }
  })
  private val signature = interpreter.signatureKeys.first()
  private val output = interpreter.getSignatureOutputs(signature).first()

  override fun run(feeds: Map<String, Tensor>): Tensor {
    val inputs = feeds.mapValues { (name, tensor) ->
      buffer(tensor, interpreter.getInputTensorFromSignature(name, signature).dataType())
    }
    val spec = interpreter.getOutputTensorFromSignature(output, signature)
    val out = ByteBuffer.allocateDirect(spec.numBytes()).order(ByteOrder.nativeOrder())
    interpreter.runSignature(inputs, mapOf<String, Any>(output to out), signature)
    out.rewind()
    val values = FloatArray(spec.numElements())
    out.asFloatBuffer().get(values)
    return Tensor.of(spec.shape(), values)
  }

  override fun close() {
    interpreter.close()
    gpu?.close()
    nnapi?.close()
  }

  private fun buffer(tensor: Tensor, type: DataType): ByteBuffer {
    val n = tensor.shape.fold(1) { a, b -> a * b }
    return when (type) {
      DataType.FLOAT32 -> ByteBuffer.allocateDirect(4 * n).order(ByteOrder.nativeOrder()).apply {
        asFloatBuffer().put(tensor.toFloats())
      }
      DataType.INT32 -> ByteBuffer.allocateDirect(4 * n).order(ByteOrder.nativeOrder()).apply {
        val ints = asIntBuffer()
        tensor.longs!!.forEach { ints.put(it.toInt()) }
      }
      DataType.INT64 -> ByteBuffer.allocateDirect(8 * n).order(ByteOrder.nativeOrder()).apply {
        asLongBuffer().put(tensor.longs!!)
      }
      else -> throw IllegalArgumentException("input type $type is not fed by this app")
    }
  }
}
