package org.edgecrossformer.demo

import kotlin.math.floor
import kotlin.math.max
import kotlin.math.min
import kotlin.math.round

/** Decoded 8-bit RGB pixels, row-major, one 0xAARRGGBB int per pixel (what Bitmap.getPixels returns). */
class RgbImage(val width: Int, val height: Int, val argb: IntArray) {
    init {
        require(width > 0 && height > 0 && argb.size == width * height) {
            "image is ${width}x$height but has ${argb.size} pixels"
        }
    }
}

/** The manifest's input.resize: shorter side to [size], then a center crop of [crop]. */
data class ResizeSpec(val size: Int, val crop: Int, val interpolation: String = "bilinear") {
    /** Only bilinear is implemented exactly; other modes (upstream's bicubic) are approximated with it. */
    val isExact: Boolean get() = interpolation == "bilinear"
}

/**
 * The exporter's preprocessing (edge_crossformer.data.preprocess), pixel for pixel: RGB / 255, bilinear resize
 * with half-pixel centers, antialiased when shrinking (the triangle kernel widened by the scale, as
 * torch.nn.functional.interpolate(antialias = true)), center crop, clamp to [0, 1]. No normalization: the model
 * does it. Output: NCHW float32 [1, 3, crop, crop] flattened. Checked against apps/golden/golden.json.
 */
object Preprocessing {

    /** Taps of one output pixel: input indices [first, first + weights.size). */
    class Taps(val first: Int, val weights: DoubleArray)

    /** Size after scaling the shorter side to spec.size; Python's round (half to even), never below the crop. */
    fun resizedSize(height: Int, width: Int, spec: ResizeSpec): Pair<Int, Int> {
        val scale = spec.size.toDouble() / min(height, width)
        return max(spec.crop, round(height * scale).toInt()) to max(spec.crop, round(width * scale).toInt())
    }

    fun taps(inSize: Int, outSize: Int, outIndex: Int): Taps {
        val scale = inSize.toDouble() / outSize
        val support = max(scale, 1.0)
        val center = (outIndex + 0.5) * scale
        val lo = max(floor(center - support + 0.5).toInt(), 0)
        val hi = min(floor(center + support + 0.5).toInt(), inSize)
        val weights = DoubleArray(hi - lo) { k -> max(0.0, 1.0 - kotlin.math.abs((lo + k + 0.5 - center) / support)) }
        val total = weights.sum()
        for (k in weights.indices) weights[k] /= total
        return Taps(lo, weights)
    }

    fun toTensor(image: RgbImage, spec: ResizeSpec): FloatArray {
        val (h, w) = image.height to image.width
        val (nh, nw) = resizedSize(h, w, spec)
        val crop = spec.crop
        val top = (nh - crop) / 2
        val left = (nw - crop) / 2
        val identity = nh == h && nw == w
        val cols = Array(crop) { if (identity) Taps(left + it, doubleArrayOf(1.0)) else taps(w, nw, left + it) }
        val rows = Array(crop) { if (identity) Taps(top + it, doubleArrayOf(1.0)) else taps(h, nh, top + it) }

        // Horizontal pass over the input rows the vertical pass needs, only for the cropped columns.
        val rowFirst = rows.minOf { it.first }
        val rowLast = rows.maxOf { it.first + it.weights.size }
        val horizontal = Array(3) { Array(rowLast - rowFirst) { DoubleArray(crop) } }
        for (y in rowFirst until rowLast) {
            val base = y * w
            for (x in 0 until crop) {
                val t = cols[x]
                var r = 0.0
                var g = 0.0
                var b = 0.0
                for (k in t.weights.indices) {
                    val p = onWhite(image.argb[base + t.first + k])
                    val wk = t.weights[k]
                    r += wk * ((p shr 16) and 0xFF)
                    g += wk * ((p shr 8) and 0xFF)
                    b += wk * (p and 0xFF)
                }
                horizontal[0][y - rowFirst][x] = r
                horizontal[1][y - rowFirst][x] = g
                horizontal[2][y - rowFirst][x] = b
            }
        }
        val out = FloatArray(3 * crop * crop)
        for (c in 0 until 3) {
            for (y in 0 until crop) {
                val t = rows[y]
                for (x in 0 until crop) {
                    var v = 0.0
                    for (k in t.weights.indices) v += t.weights[k] * horizontal[c][t.first + k - rowFirst][x]
                    out[(c * crop + y) * crop + x] = (v / 255.0).coerceIn(0.0, 1.0).toFloat()
                }
            }
        }
        return out
    }

    /** A translucent pixel composited on white (what a viewer shows, and what the exporter's load_image does). */
    private fun onWhite(argb: Int): Int {
        val a = (argb ushr 24) and 0xFF
        if (a == 0xFF) return argb
        fun mix(c: Int) = (c * a + 255 * (255 - a) + 127) / 255
        return (mix((argb shr 16) and 0xFF) shl 16) or (mix((argb shr 8) and 0xFF) shl 8) or mix(argb and 0xFF)
    }
}
