package org.edgecrossformer.demo

import kotlin.math.ceil
import kotlin.math.exp
import kotlin.math.floor
import kotlin.math.max

/** docs/results_schema.md's latency statistics, in milliseconds. */
data class LatencyStats(
    val median: Double,
    val p90: Double,
    val trimmedMean: Double,
    val min: Double,
    val max: Double,
    val n: Int,
) {
    companion object {
        /** Median (mean of the two middle runs for an even count), nearest-rank p90, mean after cutting
         *  floor(trim * n) runs from each end (none when that would leave nothing). */
        fun of(samplesMs: List<Double>, trim: Double): LatencyStats {
            require(samplesMs.isNotEmpty()) { "no timed runs to summarise" }
            require(trim in 0.0..<0.5) { "trim must be in [0, 0.5), got $trim" }
            val s = samplesMs.sorted()
            val n = s.size
            val median = if (n % 2 == 1) s[n / 2] else (s[n / 2 - 1] + s[n / 2]) / 2
            val p90 = s[max(0, ceil(0.9 * n).toInt() - 1)]
            val k = floor(trim * n).toInt()
            val kept = if (n - 2 * k > 0) s.subList(k, n - k) else s
            return LatencyStats(median, p90, kept.average(), s.first(), s.last(), n)
        }
    }
}

data class Prediction(val index: Int, val label: String, val probability: Double)

/** Softmax of logits (the model outputs logits), then the k most probable classes; ties keep the lower index. */
fun topK(logits: FloatArray, labels: List<String>, k: Int = 5): List<Prediction> {
    val peak = logits.max()
    val e = logits.map { exp((it - peak).toDouble()) }
    val total = e.sum()
    return logits.indices.sortedWith(compareBy({ -logits[it] }, { it })).take(k)
        .map { Prediction(it, labels.getOrElse(it) { "class_$it" }, e[it] / total) }
}
