package org.edgecrossformer.demo

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test
import java.time.Instant

/** The benchmark loop, its settings and its report, with a fake model and a fake clock (no phone needed). */
class BenchmarkTest {
    private val manifest = ModelManifestTest.parse()

    /** Each call "takes" the next of [durationsMs] on the fake clock. */
    private class FakeModel(override val manifest: ModelManifest, val durationsMs: List<Double>) : TimedModel {
        var now = 0L
        var calls = 0
        var closed = false
        override val loadMs = 12.5

        override fun logits(input: FloatArray): FloatArray {
            now += (durationsMs[calls++ % durationsMs.size] * 1e6).toLong()
            return FloatArray(10)
        }

        override fun close() {
            closed = true
        }
    }

    @Test
    fun timesEveryRunAfterWarmUpAndCloses() {
        val model = FakeModel(manifest, listOf(9.0, 1.0, 2.0, 3.0))
        val outcome = Benchmark.run({ model }, BenchmarkSettings(runs = 3, warmup = 1), { model.now })
        assertEquals(9.0, outcome.firstInferenceMs!!, 1e-9)
        assertEquals(listOf(2.0, 3.0, 9.0), outcome.samplesMs) // first call, one warm-up, then the timed runs
        assertEquals(3.0, outcome.stats!!.median, 1e-9)
        assertTrue(model.closed)
        assertNull(outcome.error)
    }

    @Test
    fun failuresBecomeOutcomesNotExceptions() {
        val failedLoad = Benchmark.run({ error("no program") }, BenchmarkSettings())
        assertEquals("load failed: no program", failedLoad.error)
        val broken = object : TimedModel {
            override val manifest = this@BenchmarkTest.manifest
            override val loadMs = 1.0

            override fun logits(input: FloatArray): FloatArray = throw IllegalStateException("bad input")

            override fun close() {}
        }
        val failedRun = Benchmark.run({ broken }, BenchmarkSettings())
        assertEquals("inference failed: bad input", failedRun.error)
        assertNull(failedRun.stats)
    }

    @Test
    fun badSettingsAreRejectedWhereTheyAreMade() {
        // The activity reports these as BENCHMARK_FAILED; a trim of 0.5 used to throw later, in LatencyStats.of.
        for (trim in listOf(0.5, 0.9, -0.1, Double.NaN)) {
            val e = runCatching { BenchmarkSettings(trim = trim) }.exceptionOrNull()
            assertTrue("trim $trim accepted", e is IllegalArgumentException)
        }
        assertTrue(runCatching { BenchmarkSettings(runs = 0) }.exceptionOrNull() is IllegalArgumentException)
        assertEquals(0.49, BenchmarkSettings(trim = 0.49).trim, 0.0)
    }

    @Test
    fun reportFollowsResultsSchema() {
        val model = FakeModel(manifest, listOf(2.0, 1.0, 3.0))
        val outcome = Benchmark.run({ model }, BenchmarkSettings(runs = 3, warmup = 0), { model.now })
        val device = DeviceInfo("Pixel Test", "Android 15 (API 35)", "Tensor G4", 8, 7.6)
        val json = BenchmarkReport.toJson(outcome, device, "0.1.0", "1.5.1", Instant.parse("2026-11-25T12:00:00.5Z"))
        for (key in listOf(
            "schema", "schema_version", "created", "source", "machine", "versions", "settings",
            "model", "results",
        )) {
            assertTrue("report lacks $key", json.has(key))
        }
        assertEquals(BenchmarkReport.SCHEMA, json.getString("schema"))
        assertEquals("2026-11-25T12:00:00Z", json.getString("created"))
        assertEquals("1.5.1", json.getJSONObject("versions").getString("executorch-android"))
        val result = json.getJSONArray("results").getJSONObject(0)
        assertEquals("executorch/fp32/project", result.getString("id"))
        assertEquals("ok", result.getString("status"))
        assertEquals(3, result.getJSONObject("latency_ms").getInt("n"))
        assertEquals(BenchmarkReport.NOTE_TIMED, result.getJSONArray("notes").getString(0))
    }
}
