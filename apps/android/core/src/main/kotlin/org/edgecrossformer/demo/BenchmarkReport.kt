package org.edgecrossformer.demo

import org.json.JSONArray
import org.json.JSONObject
import java.io.File
import java.time.Instant
import java.time.temporal.ChronoUnit

/** What the benchmark report records about the phone (filled from android.os.Build in [DeviceInfo]). */
data class DeviceInfo(val name: String, val os: String, val cpu: String?, val cores: Int, val memoryGib: Double?)

/**
 * results.json in docs/results_schema.md's format (version 1, source "android-app"), so that
 * `python -m benchmarks merge host/results.json phone.json` can join it with the host's numbers.
 */
object BenchmarkReport {
    const val SCHEMA = "edge-crossformer/results"

    /** What one timed sample covers (the input tensor is allocated once; each run copies the input into it). */
    const val NOTE_TIMED =
        "timed: input copied into the preallocated input tensor + Module.forward, preprocessing excluded"

    /** [executorchVersion]: the runtime the app links (BuildConfig.EXECUTORCH_VERSION in the app). */
    fun toJson(
        outcome: BenchmarkOutcome,
        device: DeviceInfo,
        appVersion: String,
        executorchVersion: String,
        created: Instant = Instant.now(),
    ): JSONObject {
        val manifest = outcome.manifest
        val s = outcome.settings
        val precision = manifest?.precision ?: "fp32"
        val result = JSONObject()
            .put("id", "executorch/$precision/project")
            .put("runtime", "executorch")
            .put("backend", "xnnpack")
            .put("precision", precision)
            .put("variant", "project")
            .put("artifact", manifest?.pteFile ?: JSONObject.NULL)
            .put("artifact_bytes", manifest?.artifactBytes ?: JSONObject.NULL)
            .put("status", if (outcome.error == null) "ok" else "failed")
            .put("error", outcome.error ?: JSONObject.NULL)
            .put("load_ms", outcome.loadMs ?: JSONObject.NULL)
            .put("first_inference_ms", outcome.firstInferenceMs ?: JSONObject.NULL)
            .put(
                "latency_ms",
                outcome.stats?.let {
                    JSONObject().put("median", it.median).put("p90", it.p90).put("trimmed_mean", it.trimmedMean)
                        .put("min", it.min).put("max", it.max).put("n", it.n)
                } ?: JSONObject.NULL,
            )
            .put("samples_ms", JSONArray(outcome.samplesMs))
            .put("notes", JSONArray(listOf(NOTE_TIMED)))
        val versions = JSONObject().put("executorch-android", executorchVersion).put("app", appVersion)
        manifest?.tools?.forEach { (k, v) -> versions.put("export:$k", v) }
        return JSONObject()
            .put("schema", SCHEMA)
            .put("schema_version", 1) // docs/results_schema.md: bump together with it
            .put("created", created.truncatedTo(ChronoUnit.SECONDS).toString()) // UTC, e.g. 2026-11-25T12:00:00Z
            .put("source", "android-app")
            .put(
                "machine",
                JSONObject()
                    .put("kind", "device")
                    .put("name", device.name)
                    .put("os", device.os)
                    .put("cpu", device.cpu ?: JSONObject.NULL)
                    .put("cores", device.cores)
                    .put("memory_gib", device.memoryGib ?: JSONObject.NULL),
            )
            .put("versions", versions)
            .put(
                "settings",
                JSONObject()
                    .put("model", manifest?.model ?: JSONObject.NULL)
                    .put("img_size", manifest?.imgSize ?: JSONObject.NULL)
                    .put("batch", 1)
                    .put("threads", s.threads)
                    .put("warmup", s.warmup)
                    .put("runs", s.runs)
                    .put("rounds", 1)
                    .put("trim", s.trim)
                    .put("quick", false),
            )
            .put(
                "model",
                JSONObject()
                    .put("name", manifest?.model ?: JSONObject.NULL)
                    .put("img_size", manifest?.imgSize ?: JSONObject.NULL),
            )
            .put("results", JSONArray().put(result))
    }

    /** Writes [json] to [file] whole or not at all (a reader polling over adb never sees half a file). */
    fun write(json: JSONObject, file: File) {
        file.parentFile?.mkdirs()
        val tmp = File(file.parentFile, ".${file.name}.tmp")
        tmp.writeText(json.toString(2) + "\n")
        check(tmp.renameTo(file)) { "cannot move $tmp to $file" }
    }
}
