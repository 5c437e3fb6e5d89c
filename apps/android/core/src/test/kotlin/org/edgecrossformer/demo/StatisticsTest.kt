package org.edgecrossformer.demo

import org.junit.Assert.assertEquals
import org.junit.Test

/** Latency statistics and top-5 as golden.json defines them (docs/results_schema.md). */
class StatisticsTest {
    @Test
    fun latencyStatisticsMatchGolden() {
        val cases = Golden.json.getJSONObject("statistics").getJSONArray("cases")
        for (i in 0 until cases.length()) {
            val case = cases.getJSONObject(i)
            val samples = Golden.doubles(case.getJSONArray("samples_ms")).toList()
            val want = case.getJSONObject("expected")
            val got = LatencyStats.of(samples, case.getDouble("trim"))
            assertEquals("case $i median", want.getDouble("median"), got.median, 1e-9)
            assertEquals("case $i p90", want.getDouble("p90"), got.p90, 1e-9)
            assertEquals("case $i trimmed_mean", want.getDouble("trimmed_mean"), got.trimmedMean, 1e-9)
            assertEquals("case $i min", want.getDouble("min"), got.min, 1e-9)
            assertEquals("case $i max", want.getDouble("max"), got.max, 1e-9)
            assertEquals("case $i n", want.getInt("n"), got.n)
        }
    }

    @Test
    fun top5OfGoldenLogitsMatchesGolden() {
        val golden = Golden.json
        val labels = golden.getJSONArray("labels").let { a -> List(a.length()) { a.getString(it) } }
        val images = golden.getJSONArray("images")
        for (i in 0 until images.length()) {
            val image = images.getJSONObject(i)
            val logits = Golden.doubles(image.getJSONArray("logits")).map { it.toFloat() }.toFloatArray()
            val top5 = image.getJSONArray("top5")
            val got = topK(logits, labels, 5)
            for (k in 0 until 5) {
                val want = top5.getJSONObject(k)
                assertEquals("${image.getString("file")} rank $k", want.getInt("index"), got[k].index)
                assertEquals(want.getString("label"), got[k].label)
                assertEquals(want.getDouble("probability"), got[k].probability, 1e-5)
            }
        }
    }

    @Test(expected = IllegalArgumentException::class)
    fun noRunsIsAnError() {
        LatencyStats.of(emptyList(), 0.1)
    }
}
