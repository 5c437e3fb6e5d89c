package org.edgecrossformer.demo

import org.json.JSONArray
import org.json.JSONObject
import java.io.File

/** apps/golden/golden.json and the decoded sample images beside it (system property golden.dir: Gradle sets it in
 *  core/build.gradle.kts, apps/ci/build_cores.sh on the java command line). */
object Golden {
    val dir: File by lazy {
        File(
            System.getProperty("golden.dir") ?: error(
                "system property golden.dir is not set; run the tests " +
                    "through Gradle or apps/ci/build_cores.sh",
            ),
        )
    }

    val json: JSONObject by lazy { JSONObject(File(dir, "golden.json").readText()) }

    /** The exporter's decoded pixels of golden image [image] (its pixels_file: a binary PPM), no decoder needed. */
    fun decodedSample(image: JSONObject): RgbImage = readPpm(File(dir, image.getString("pixels_file")))

    /** Binary PPM (P6, maxval 255, header without comments, as benchmarks/golden.py writes it) -> 0xAARRGGBB. */
    fun readPpm(file: File): RgbImage {
        val bytes = file.readBytes()
        val fields = mutableListOf<String>()
        var pos = 0
        while (fields.size < 4) {
            while (bytes[pos].toInt().toChar().isWhitespace()) pos++
            val start = pos
            while (!bytes[pos].toInt().toChar().isWhitespace()) pos++
            fields += String(bytes, start, pos - start, Charsets.US_ASCII)
        }
        pos++ // the single whitespace byte before the raster
        require(fields[0] == "P6" && fields[3] == "255") { "$file: not a binary 8-bit PPM (${fields.take(4)})" }
        val (width, height) = fields[1].toInt() to fields[2].toInt()
        require(bytes.size - pos == width * height * 3) {
            "$file: ${bytes.size - pos} raster bytes for ${width}x$height"
        }
        val argb = IntArray(width * height) { i ->
            val o = pos + 3 * i
            val (r, g, b) = Triple(
                bytes[o].toInt() and 0xFF,
                bytes[o + 1].toInt() and 0xFF,
                bytes[o + 2].toInt() and 0xFF,
            )
            (0xFF shl 24) or (r shl 16) or (g shl 8) or b
        }
        return RgbImage(width, height, argb)
    }

    /** The synthetic image of golden resize_cases.pattern. */
    fun pattern(width: Int, height: Int): RgbImage = RgbImage(
        width,
        height,
        IntArray(width * height) { i ->
            val x = i % width
            val y = i / width
            val r = (7 * x + 3 * y).mod(256)
            val g = (x * y).mod(256)
            val b = (255 - 5 * x + 2 * y).mod(256)
            (0xFF shl 24) or (r shl 16) or (g shl 8) or b
        },
    )

    fun doubles(a: JSONArray) = DoubleArray(a.length()) { a.getDouble(it) }
}
