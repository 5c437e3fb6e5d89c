package org.edgecrossformer.demo

import android.graphics.Bitmap
import android.graphics.BitmapFactory
import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import org.json.JSONObject
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import kotlin.math.abs

/**
 * On a device: the bundled .pte (app assets) classifies the golden sample images (test assets: apps/golden and
 * export/samples, wired in app/build.gradle.kts) as golden.json says: same top-1 at any precision, logits within
 * tolerances.logits_abs for fp32, and Android's PNG decoding + our preprocessing give the golden pixels.
 */
@RunWith(AndroidJUnit4::class)
class ClassifierGoldenTest {
    private val instrumentation = InstrumentationRegistry.getInstrumentation()
    private val testAssets = instrumentation.context.assets
    private val golden = JSONObject(testAssets.open("golden.json").bufferedReader().use { it.readText() })

    @Test
    fun top1AndLogitsMatchGolden() {
        Classifier.fromAssets(instrumentation.targetContext).use { classifier ->
            assertEquals(
                "the app bundles another model than golden.json describes",
                golden.getString("model"),
                classifier.manifest.model,
            )
            val tolerances = golden.getJSONObject("tolerances")
            val precision = classifier.manifest.precision
            val logitsTol = tolerances.getJSONObject("logits_abs").optDouble(precision, Double.NaN)
            val probes = golden.getJSONArray("probes")
            val images = golden.getJSONArray("images")
            for (i in 0 until images.length()) {
                val image = images.getJSONObject(i)
                val file = image.getString("file")
                val options = BitmapFactory.Options().apply { inPreferredConfig = Bitmap.Config.ARGB_8888 }
                val bitmap = testAssets.open(file).use { BitmapFactory.decodeStream(it, null, options) }!!
                val input = Preprocessing.toTensor(bitmap.toRgbImage(), classifier.manifest.resize)
                val pixels = image.getJSONObject("input").getJSONArray("pixels")
                val crop = classifier.manifest.resize.crop
                for (p in 0 until probes.length()) {
                    val (py, px) = probes.getJSONArray(p).let { it.getInt(0) to it.getInt(1) }
                    val want = pixels.getJSONArray(p).getDouble(0)
                    assertEquals(
                        "$file pixel ($py, $px)",
                        want,
                        input[py * crop + px].toDouble(),
                        tolerances.getDouble("input_abs"),
                    )
                }
                val logits = classifier.logits(input)
                val top5 = topK(logits, classifier.manifest.labels)
                val expectedTop5 = image.getJSONArray("top5")
                assertEquals("$file top-1", expectedTop5.getJSONObject(0).getInt("index"), top5[0].index)
                if (!logitsTol.isNaN()) {
                    val want = image.getJSONArray("logits")
                    for (c in logits.indices) {
                        assertTrue(
                            "$file logit $c: ${logits[c]} vs ${want.getDouble(c)}",
                            abs(logits[c] - want.getDouble(c)) <= logitsTol,
                        )
                    }
                    for (k in 0 until 5) {
                        assertEquals(
                            "$file top-5 rank $k",
                            expectedTop5.getJSONObject(k).getInt("index"),
                            top5[k].index,
                        )
                    }
                }
            }
        }
    }
}
