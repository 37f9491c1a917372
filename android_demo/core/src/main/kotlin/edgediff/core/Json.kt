@file:Suppress("UNCHECKED_CAST")

package edgediff.core

/**
 * JSON as plain Kotlin values: Map<String, Any?>, List<Any?>, String, Double, Boolean, null.
 *
 * Written here rather than taken from a library so that the core has no dependency at all:
 * Android ships org.json, a plain JVM does not, and the core only reads edgediff's own
 * manifest.json and golden files. Python's json writes NaN and Infinity for non-finite
 * numbers (a perfect match's PSNR), so those are read too.
 */
object Json {
  fun parse(text: String): Any? {
    val parser = Parser(text)
    val value = parser.value()
    parser.skipSpace()
    if (parser.at < text.length) parser.fail("text after the value")
    return value
  }

  private class Parser(val s: String) {
    var at = 0

    fun fail(what: String): Nothing = throw IllegalArgumentException("JSON: $what at offset $at")

    fun skipSpace() {
      while (at < s.length && (s[at] == ' ' || s[at] == '\n' || s[at] == '\r' || s[at] == '\t')) at++
    }

    fun value(): Any? {
      skipSpace()
      if (at >= s.length) fail("unexpected end")
      return when (s[at]) {
        '{' -> obj()
        '[' -> list()
        '"' -> string()
        't' -> word("true", true)
        'f' -> word("false", false)
        'n' -> word("null", null)
        'N' -> word("NaN", Double.NaN)
        'I' -> word("Infinity", Double.POSITIVE_INFINITY)
        else -> number()
      }
    }

    fun word(w: String, v: Any?): Any? {
      if (!s.startsWith(w, at)) fail("expected $w")
      at += w.length
      return v
    }

    fun obj(): Map<String, Any?> {
      val out = LinkedHashMap<String, Any?>()
      at++  // {
      skipSpace()
      if (at < s.length && s[at] == '}') { at++; return out }
      while (true) {
        skipSpace()
        if (at >= s.length || s[at] != '"') fail("expected a key")
        val key = string()
        skipSpace()
        if (at >= s.length || s[at] != ':') fail("expected ':'")
        at++
        out[key] = value()
        skipSpace()
        if (at >= s.length) fail("unexpected end")
        if (s[at] == ',') { at++; continue }
        if (s[at] == '}') { at++; return out }
        fail("expected ',' or '}'")
      }
    }

    fun list(): List<Any?> {
      val out = ArrayList<Any?>()
      at++  // [
      skipSpace()
      if (at < s.length && s[at] == ']') { at++; return out }
      while (true) {
        out.add(value())
        skipSpace()
        if (at >= s.length) fail("unexpected end")
        if (s[at] == ',') { at++; continue }
        if (s[at] == ']') { at++; return out }
        fail("expected ',' or ']'")
      }
    }

    fun string(): String {
      val out = StringBuilder()
      at++  // opening quote
      while (true) {
        if (at >= s.length) fail("unterminated string")
        val c = s[at++]
        when (c) {
          '"' -> return out.toString()
          '\\' -> {
            if (at >= s.length) fail("unterminated escape")
            when (val e = s[at++]) {
              '"', '\\', '/' -> out.append(e)
              'b' -> out.append('\b')
              'f' -> out.append('\u000C')
              'n' -> out.append('\n')
              'r' -> out.append('\r')
              't' -> out.append('\t')
              'u' -> {  // a UTF-16 unit: surrogate pairs come as two escapes, appended as they are
                if (at + 4 > s.length) fail("short \\u escape")
                out.append(Integer.parseInt(s.substring(at, at + 4), 16).toChar())
                at += 4
              }
              else -> fail("unknown escape \\$e")
            }
          }
          else -> out.append(c)
        }
      }
    }

    fun number(): Double {
      val start = at
      if (s.startsWith("-Infinity", at)) { at += 9; return Double.NEGATIVE_INFINITY }
      while (at < s.length && s[at] in "+-0123456789.eE") at++
      if (start == at) fail("unexpected character '${s[at]}'")
      return s.substring(start, at).toDoubleOrNull() ?: fail("bad number")
    }
  }
}

/** Typed reads from parsed JSON, failing with the key that is missing or of the wrong type. */
internal fun Map<String, Any?>.obj(key: String): Map<String, Any?> =
    get(key) as? Map<String, Any?> ?: throw IllegalArgumentException("'$key': not an object")

internal fun Map<String, Any?>.list(key: String): List<Any?> =
    get(key) as? List<Any?> ?: throw IllegalArgumentException("'$key': not a list")

internal fun Map<String, Any?>.str(key: String): String =
    get(key) as? String ?: throw IllegalArgumentException("'$key': not a string")

internal fun Map<String, Any?>.num(key: String): Double =
    get(key) as? Double ?: throw IllegalArgumentException("'$key': not a number")

internal fun Map<String, Any?>.bool(key: String): Boolean =
    get(key) as? Boolean ?: throw IllegalArgumentException("'$key': not true or false")

internal fun List<Any?>.ints(): IntArray = IntArray(size) { (get(it) as Double).toInt() }

internal fun List<Any?>.floats(): FloatArray = FloatArray(size) { (get(it) as Double).toFloat() }
