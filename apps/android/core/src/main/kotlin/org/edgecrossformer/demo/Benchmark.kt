package org.edgecrossformer.demo

import java.io.Closeable

data class BenchmarkSettings(val runs: Int = 50, val warmup: Int = 10, val threads: Int = 0, val trim: Double = 0.1) {
    init {
        require(runs >= 1) { "runs must be >= 1, got $runs" }
        require(warmup >= 0) { "warmup must be >= 0, got $warmup" }
        require(threads >= 0) { "threads must be >= 0 (0: ExecuTorch's default), got $threads" }
        // Checked here, where a bad intent extra can still be reported, not later in LatencyStats.of.
        require(trim >= 0.0 && trim < 0.5) { "trim must be in [0, 0.5), got $trim" }
    }
}

/** What the benchmark times: a loaded model that maps a preprocessed input to logits (the app's Classifier). */
interface TimedModel : Closeable {
    val manifest: ModelManifest
    val loadMs: Double

    fun logits(input: FloatArray): FloatArray
}

data class BenchmarkOutcome(
    val settings: BenchmarkSettings,
    val manifest: ModelManifest?,
    val loadMs: Double?,
    val firstInferenceMs: Double?,
    val samplesMs: List<Double>,
    val error: String? = null,
) {
    val stats: LatencyStats? get() = samplesMs.takeIf { it.isNotEmpty() }?.let { LatencyStats.of(it, settings.trim) }
}

/** Load, one first inference, warm-up, then [BenchmarkSettings.runs] timed forward calls on a fixed input. */
object Benchmark {
    /** [nanoTime] is the clock (the app passes SystemClock.elapsedRealtimeNanos; tests a fake one). */
    fun run(
        load: () -> TimedModel,
        settings: BenchmarkSettings,
        nanoTime: () -> Long = System::nanoTime,
        onProgress: (Int) -> Unit = {},
    ): BenchmarkOutcome {
        val model =
            try {
                load()
            } catch (e: Exception) {
                return BenchmarkOutcome(settings, null, null, null, emptyList(), "load failed: ${e.message}")
            }
        model.use {
            val size = it.manifest.inputShape.fold(1L) { a, b -> a * b }.toInt()
            val input = FloatArray(size) { i -> (i % 251) / 250f } // fixed, image-like range; latency only
            return try {
                var t = nanoTime()
                it.logits(input)
                val firstMs = (nanoTime() - t) / 1e6
                repeat(settings.warmup) { _ -> it.logits(input) }
                val samples =
                    List(settings.runs) { i ->
                        t = nanoTime()
                        it.logits(input)
                        ((nanoTime() - t) / 1e6).also { onProgress(i + 1) }
                    }
                BenchmarkOutcome(settings, it.manifest, it.loadMs, firstMs, samples)
            } catch (e: Exception) {
                BenchmarkOutcome(settings, it.manifest, it.loadMs, null, emptyList(), "inference failed: ${e.message}")
            }
        }
    }
}
