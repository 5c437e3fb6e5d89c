package org.edgecrossformer.demo

import java.io.File
import javax.imageio.ImageIO
import org.json.JSONArray
import org.json.JSONObject

/** apps/golden/golden.json and the sample images, located by app/build.gradle.kts (system properties). */
object Golden {
    private fun dir(property: String): File = File(
        System.getProperty(property) ?: error("system property $property is not set; run the tests through Gradle"))

    val json: JSONObject by lazy { JSONObject(File(dir("golden.dir"), "golden.json").readText()) }

    fun sample(name: String): File = File(dir("samples.dir"), name)

    /** PNG -> 0xAARRGGBB from the raster (BufferedImage.getRGB would gamma-convert gray images). */
    fun readImage(file: File): RgbImage {
        val image = ImageIO.read(file) ?: error("cannot decode $file")
        val raster = image.raster
        val bands = raster.numBands
        val px = IntArray(bands)
        val argb = IntArray(image.width * image.height) { i ->
            raster.getPixel(i % image.width, i / image.width, px)
            val (r, g, b) = if (bands >= 3) Triple(px[0], px[1], px[2]) else Triple(px[0], px[0], px[0])
            val a = if (bands == 4 || bands == 2) px[bands - 1] else 0xFF
            (a shl 24) or (r shl 16) or (g shl 8) or b
        }
        return RgbImage(image.width, image.height, argb)
    }

    /** The synthetic image of golden resize_cases.pattern. */
    fun pattern(width: Int, height: Int): RgbImage = RgbImage(width, height, IntArray(width * height) { i ->
        val x = i % width
        val y = i / width
        val r = (7 * x + 3 * y).mod(256)
        val g = (x * y).mod(256)
        val b = (255 - 5 * x + 2 * y).mod(256)
        (0xFF shl 24) or (r shl 16) or (g shl 8) or b
    })

    fun doubles(a: JSONArray) = DoubleArray(a.length()) { a.getDouble(it) }
}
