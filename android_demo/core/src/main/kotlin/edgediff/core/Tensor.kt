package edgediff.core

import java.io.ByteArrayOutputStream
import java.io.File
import java.io.InputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.zip.ZipInputStream

/** A dense row-major tensor: float32 values, or integer ones (token ids) kept exact. */
class Tensor(val shape: IntArray, val floats: FloatArray? = null, val longs: LongArray? = null) {
  init {
    require((floats == null) != (longs == null)) { "a tensor holds floats or integers" }
    require(size(shape) == (floats?.size ?: longs!!.size)) {
      "shape ${shape.contentToString()} does not hold ${floats?.size ?: longs!!.size} values"
    }
  }

  val isFloat: Boolean get() = floats != null

  /** The values as float32 (integers converted). */
  fun toFloats(): FloatArray = floats ?: FloatArray(longs!!.size) { longs[it].toFloat() }

  companion object {
    fun size(shape: IntArray): Int = shape.fold(1) { a, b -> a * b }
    fun of(shape: IntArray, values: FloatArray) = Tensor(shape, floats = values)
    fun ofInts(shape: IntArray, values: IntArray) =
        Tensor(shape, longs = LongArray(values.size) { values[it].toLong() })
  }
}

/**
 * NumPy's .npy and .npz files (what `np.savez` writes: an uncompressed zip of .npy files):
 * little-endian float32/float64/int32/int64/uint8/bool arrays in C order. edgediff's golden
 * files hold each component's inputs and `expected_<output>`.
 */
object Npy {
  fun readNpz(file: File): Map<String, Tensor> = file.inputStream().use { readNpz(it) }

  fun readNpz(stream: InputStream): Map<String, Tensor> {
    val out = LinkedHashMap<String, Tensor>()
    ZipInputStream(stream).use { zip ->
      while (true) {
        val entry = zip.nextEntry ?: break
        val bytes = ByteArrayOutputStream().also { zip.copyTo(it) }.toByteArray()
        out[entry.name.removeSuffix(".npy")] = read(bytes, entry.name)
      }
    }
    return out
  }

  fun read(bytes: ByteArray, what: String = "npy"): Tensor {
    val magic = byteArrayOf(0x93.toByte()) + "NUMPY".toByteArray(Charsets.US_ASCII)
    require(bytes.size > 10 && bytes.copyOfRange(0, 6).contentEquals(magic)) { "$what: not a .npy array" }
    val buffer = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN)
    val major = bytes[6].toInt()
    val headerLength = if (major == 1) buffer.getShort(8).toInt() and 0xFFFF else buffer.getInt(8)
    val headerStart = if (major == 1) 10 else 12
    val header = String(bytes, headerStart, headerLength, Charsets.ISO_8859_1)
    val descr = Regex("'descr':\\s*'([^']+)'").find(header)?.groupValues?.get(1)
        ?: throw IllegalArgumentException("$what: no descr in its header")
    require(!header.contains("'fortran_order': True")) { "$what: Fortran order is not read" }
    val dims = Regex("'shape':\\s*\\(([^)]*)\\)").find(header)?.groupValues?.get(1)
        ?: throw IllegalArgumentException("$what: no shape in its header")
    val shape = dims.split(",").map { it.trim() }.filter { it.isNotEmpty() }.map { it.toInt() }
        .toIntArray()
    val n = Tensor.size(shape)
    buffer.position(headerStart + headerLength)
    return when (descr) {
      "<f4" -> Tensor(shape, floats = FloatArray(n) { buffer.float })
      "<f8" -> Tensor(shape, floats = FloatArray(n) { buffer.double.toFloat() })
      "<i4" -> Tensor(shape, longs = LongArray(n) { buffer.int.toLong() })
      "<i8" -> Tensor(shape, longs = LongArray(n) { buffer.long })
      "|u1", "|b1" -> Tensor(shape, longs = LongArray(n) { (buffer.get().toInt() and 0xFF).toLong() })
      else -> throw IllegalArgumentException("$what: dtype $descr is not read")
    }
  }
}
