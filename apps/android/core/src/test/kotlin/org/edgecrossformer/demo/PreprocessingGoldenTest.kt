package org.edgecrossformer.demo

import org.json.JSONObject
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import kotlin.math.abs
import kotlin.math.sqrt

/** The app's preprocessing reproduces what the exporter feeds the model, per golden.json. */
class PreprocessingGoldenTest {
    private val golden = Golden.json
    private val tolerances = golden.getJSONObject("tolerances")
    private val spec = golden.getJSONObject("input").getJSONObject("resize").let {
        ResizeSpec(it.getInt("size"), it.getInt("crop"), it.getString("interpolation"))
    }

    private fun check(what: String, x: FloatArray, expected: JSONObject) {
        val crop = spec.crop
        assertEquals("$what: tensor size", 3 * crop * crop, x.size)
        val statsTol = tolerances.getDouble("input_stats_abs")
        for (c in 0 until 3) {
            val channel = x.copyOfRange(c * crop * crop, (c + 1) * crop * crop).map { it.toDouble() }
            val mean = channel.average()
            val std = sqrt(channel.sumOf { (it - mean) * (it - mean) } / channel.size)
            val stats = mapOf("mean" to mean, "std" to std, "min" to channel.min(), "max" to channel.max())
            for ((key, value) in stats) {
                val want = expected.getJSONArray(key).getDouble(c)
                assertEquals("$what: $key of channel $c", want, value, statsTol)
            }
        }
        val probes = golden.getJSONArray("probes")
        val pixels = expected.getJSONArray("pixels")
        val tol = tolerances.getDouble("input_abs")
        for (i in 0 until probes.length()) {
            val (py, px) = probes.getJSONArray(i).let { it.getInt(0) to it.getInt(1) }
            val want = Golden.doubles(pixels.getJSONArray(i))
            for (c in 0 until 3) {
                val got = x[(c * crop + py) * crop + px].toDouble()
                assertTrue("$what: pixel ($py, $px) channel $c is $got, golden ${want[c]}", abs(got - want[c]) <= tol)
            }
        }
    }

    @Test
    fun sampleImagesMatchGolden() {
        val images = golden.getJSONArray("images")
        assertTrue("golden.json has no images", images.length() > 0)
        for (i in 0 until images.length()) {
            val image = images.getJSONObject(i)
            val rgb = Golden.decodedSample(image)
            assertEquals(image.getJSONObject("source").getInt("width"), rgb.width)
            assertEquals(image.getJSONObject("source").getInt("height"), rgb.height)
            check(image.getString("file"), Preprocessing.toTensor(rgb, spec), image.getJSONObject("input"))
        }
    }

    @Test
    fun syntheticResizeCasesMatchGolden() {
        val cases = golden.getJSONObject("resize_cases").getJSONArray("cases")
        for (i in 0 until cases.length()) {
            val case = cases.getJSONObject(i)
            val image = Golden.pattern(case.getInt("width"), case.getInt("height"))
            check(case.getString("name"), Preprocessing.toTensor(image, spec), case.getJSONObject("input"))
        }
    }

    @Test
    fun resizedSizeRoundsHalfToEvenLikePython() {
        // 28 x 35 to a shorter side of 32: 35 * 32 / 28 = 40.0; 20 x 25 to 18: 22.5 -> 22 (Python), not 23.
        assertEquals(32 to 40, Preprocessing.resizedSize(28, 35, ResizeSpec(32, 32)))
        assertEquals(18 to 22, Preprocessing.resizedSize(20, 25, ResizeSpec(18, 18)))
    }
}
