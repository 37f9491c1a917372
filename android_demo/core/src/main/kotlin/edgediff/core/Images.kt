package edgediff.core

/** The decoder's image, values in [0, 1], to 8-bit pixels: clipped, times 255, rounded half
 * to even in float32, as edgediff's save_png does. */
object Images {
  /** (3, H, W) planes, or (H, W, 3) with `nhwc`, to (H, W, 3) RGB bytes. */
  fun toRgb(image: FloatArray, height: Int, width: Int, nhwc: Boolean): ByteArray {
    require(image.size == 3 * height * width) { "an RGB image of ${height}x$width holds ${3 * height * width} values, not ${image.size}" }
    val out = ByteArray(3 * height * width)
    for (y in 0 until height) {
      for (x in 0 until width) {
        for (c in 0 until 3) {
          val v = if (nhwc) image[(y * width + x) * 3 + c] else image[(c * height + y) * width + x]
          out[(y * width + x) * 3 + c] = pixel(v).toByte()
        }
      }
    }
    return out
  }

  /** The same as ARGB ints, what android.graphics.Bitmap.setPixels takes. */
  fun toArgb(image: FloatArray, height: Int, width: Int, nhwc: Boolean): IntArray {
    val rgb = toRgb(image, height, width, nhwc)
    return IntArray(height * width) {
      (0xFF shl 24) or ((rgb[3 * it].toInt() and 0xFF) shl 16) or
          ((rgb[3 * it + 1].toInt() and 0xFF) shl 8) or (rgb[3 * it + 2].toInt() and 0xFF)
    }
  }

  fun pixel(v: Float): Int {
    if (v.isNaN()) return 0
    val clipped = Math.min(Math.max(v, 0f), 1f)
    return Math.rint((clipped * 255f).toDouble()).toInt()
  }
}
