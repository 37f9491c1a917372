@file:Suppress("UNCHECKED_CAST")

package edgediff.core

import java.text.Normalizer
import java.util.regex.Pattern

/**
 * CLIP's byte-level BPE tokenizer, as edgediff's Python tokenizer (Hugging Face's
 * CLIPTokenizer) computes it: NFC, runs of white space to one space, lower case; CLIP's
 * word pattern, then the byte-level pattern; each word's UTF-8 bytes mapped to printable
 * characters, "</w>" on its last one, merged by rank; <|startoftext|> + at most 75 ids +
 * <|endoftext|>, padded with <|endoftext|> to 77. The special tokens' own text is matched
 * before any of that. Checked id for id against the Python tokenizer's golden vectors.
 */
class ClipTokenizer(private val vocab: Map<String, Int>, merges: List<String>) {
  private val ranks = HashMap<String, Int>()
  private val byteChars = byteToUnicode()
  private val bos = id(START)
  private val eos = id(END)

  init {
    merges.forEachIndexed { rank, line -> ranks[line] = rank }
  }

  /** `prompt` as MAX_TOKENS ids. */
  fun encode(prompt: String): IntArray {
    val ids = ArrayList<Int>()
    var rest = prompt
    while (rest.isNotEmpty()) {  // special tokens first, on the raw text
      val match = SPECIAL.matcher(rest)
      val end = if (match.find()) match.start() else rest.length
      ids.addAll(encodeText(rest.substring(0, end)))
      if (end == rest.length) break
      ids.add(id(match.group()))
      rest = rest.substring(match.end())
    }
    val kept = ids.take(MAX_TOKENS - 2)
    val out = IntArray(MAX_TOKENS) { eos }
    out[0] = bos
    kept.forEachIndexed { i, v -> out[i + 1] = v }
    out[kept.size + 1] = eos
    return out
  }

  private fun encodeText(text: String): List<Int> {
    val normal = lowerCase(WHITE_SPACE.matcher(Normalizer.normalize(text, Normalizer.Form.NFC))
                               .replaceAll(" "))
    val ids = ArrayList<Int>()
    val words = CLIP_WORDS.matcher(normal)
    while (words.find()) {
      val pieces = BYTE_LEVEL_WORDS.matcher(words.group())
      while (pieces.find()) {
        val bytes = pieces.group().toByteArray(Charsets.UTF_8)
        val symbols = bytes.map { byteChars[it.toInt() and 0xFF] }.toMutableList()
        symbols[symbols.size - 1] = symbols.last() + "</w>"
        for (token in bpe(symbols)) ids.add(id(token))
      }
    }
    return ids
  }

  /** Merges the adjacent pair of lowest rank, every occurrence left to right, until none is
   * ranked. */
  private fun bpe(start: MutableList<String>): List<String> {
    var symbols = start
    while (symbols.size > 1) {
      var best: String? = null
      var bestRank = Int.MAX_VALUE
      for (i in 0 until symbols.size - 1) {
        val rank = ranks[symbols[i] + " " + symbols[i + 1]] ?: continue
        if (rank < bestRank) { bestRank = rank; best = symbols[i] + " " + symbols[i + 1] }
      }
      if (best == null) break
      val (first, second) = best.split(" ")
      val merged = ArrayList<String>()
      var i = 0
      while (i < symbols.size) {
        if (i < symbols.size - 1 && symbols[i] == first && symbols[i + 1] == second) {
          merged.add(first + second)
          i += 2
        } else {
          merged.add(symbols[i])
          i += 1
        }
      }
      symbols = merged
    }
    return symbols
  }

  private fun id(token: String): Int =
      vocab[token] ?: throw IllegalStateException("token '$token' is not in the vocabulary")

  companion object {
    const val MAX_TOKENS = 77
    const val START = "<|startoftext|>"
    const val END = "<|endoftext|>"
    private val SPECIAL = Pattern.compile(Pattern.quote(START) + "|" + Pattern.quote(END))
    private val WHITE_SPACE = Pattern.compile("\\s+", Pattern.UNICODE_CHARACTER_CLASS)
    private val CLIP_WORDS = Pattern.compile(
        "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|" +
        "[^\\s\\p{L}\\p{N}]+", Pattern.UNICODE_CHARACTER_CLASS)
    private val BYTE_LEVEL_WORDS = Pattern.compile(
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
        Pattern.UNICODE_CHARACTER_CLASS)

    /** From the contents of vocab.json and merges.txt (the tokenizer files edgediff ships). */
    fun load(vocabJson: String, mergesTxt: String): ClipTokenizer {
      val vocab = (Json.parse(vocabJson) as Map<String, Any?>).mapValues { (it.value as Double).toInt() }
      val merges = mergesTxt.lines().filter { it.isNotBlank() && !it.startsWith("#version") }
      return ClipTokenizer(vocab, merges)
    }

    /** Lower case one code point at a time, with the full mapping of each (İ becomes i and a
     * combining dot) and no context (a final Σ stays σ), as the Rust tokenizer does. */
    private fun lowerCase(text: String): String {
      val out = StringBuilder()
      var i = 0
      while (i < text.length) {
        val cp = text.codePointAt(i)
        if (cp == 0x130) out.append("i\u0307") else out.appendCodePoint(Character.toLowerCase(cp))
        i += Character.charCount(cp)
      }
      return out.toString()
    }

    /** GPT-2's map of the 256 byte values to printable characters. */
    private fun byteToUnicode(): Array<String> {
      val printable = (33..126) + (161..172) + (174..255)
      val out = arrayOfNulls<String>(256)
      var extra = 0
      for (b in 0 until 256) {
        val cp = if (b in printable) b else 256 + extra++
        out[b] = String(Character.toChars(cp))
      }
      return out.requireNoNulls()
    }
  }
}
