package org.edgecrossformer.demo

import android.os.SystemClock

data class BenchmarkSettings(val runs: Int = 50, val warmup: Int = 10, val threads: Int = 0, val trim: Double = 0.1) {
    init {
        require(runs >= 1) { "runs must be >= 1, got $runs" }
        require(warmup >= 0) { "warmup must be >= 0, got $warmup" }
        require(threads >= 0) { "threads must be >= 0 (0: ExecuTorch's default), got $threads" }
    }
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
    fun run(load: () -> Classifier, settings: BenchmarkSettings, onProgress: (Int) -> Unit = {}): BenchmarkOutcome {
        val classifier = try {
            load()
        } catch (e: Exception) {
            return BenchmarkOutcome(settings, null, null, null, emptyList(), "load failed: ${e.message}")
        }
        classifier.use {
            val size = it.manifest.inputShape.fold(1L) { a, b -> a * b }.toInt()
            val input = FloatArray(size) { i -> (i % 251) / 250f } // fixed, image-like range; latency only
            return try {
                var t = SystemClock.elapsedRealtimeNanos()
                it.logits(input)
                val firstMs = (SystemClock.elapsedRealtimeNanos() - t) / 1e6
                repeat(settings.warmup) { _ -> it.logits(input) }
                val samples = List(settings.runs) { i ->
                    t = SystemClock.elapsedRealtimeNanos()
                    it.logits(input)
                    ((SystemClock.elapsedRealtimeNanos() - t) / 1e6).also { onProgress(i + 1) }
                }
                BenchmarkOutcome(settings, it.manifest, it.loadMs, firstMs, samples)
            } catch (e: Exception) {
                BenchmarkOutcome(settings, it.manifest, it.loadMs, null, emptyList(), "inference failed: ${e.message}")
            }
        }
    }
}
