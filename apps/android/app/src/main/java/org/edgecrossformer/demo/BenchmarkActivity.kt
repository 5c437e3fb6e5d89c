package org.edgecrossformer.demo

import android.app.ActivityManager
import android.content.Context
import android.os.Build
import android.os.Bundle
import android.os.SystemClock
import android.util.Log
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.compose.foundation.layout.padding
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Text
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp
import androidx.lifecycle.lifecycleScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import java.io.File

/**
 * Benchmark mode, startable from a host:
 *   adb shell am start -W -a org.edgecrossformer.demo.BENCHMARK --ei runs 50 --ei warmup 10 --ei threads 4
 * Writes files/benchmarks/results.json, then logs "BENCHMARK_DONE <path>" (or "BENCHMARK_FAILED <why>") under
 * the tag EdgeCrossFormer and finishes, so a host helper can wait on logcat and `adb pull` the file.
 */
class BenchmarkActivity : ComponentActivity() {
    private var status by mutableStateOf("starting")

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContent { MaterialTheme { Text(status, Modifier.padding(24.dp)) } }
        val settings = try {
            intent.extras.let {
                BenchmarkSettings(
                    runs = it?.getInt(EXTRA_RUNS, 50) ?: 50,
                    warmup = it?.getInt(EXTRA_WARMUP, 10) ?: 10,
                    threads = it?.getInt(EXTRA_THREADS, 0) ?: 0,
                    trim = it?.getFloat(EXTRA_TRIM, 0.1f)?.toDouble() ?: 0.1,
                )
            }
        } catch (e: IllegalArgumentException) {
            fail("bad intent extras: ${e.message}")
            return
        }
        lifecycleScope.launch {
            // Whatever goes wrong must still end in a BENCHMARK_ line: the host helper waits for one.
            val file = try {
                runAndWrite(this@BenchmarkActivity, settings) { done -> status = "run $done / ${settings.runs}" }
            } catch (e: Exception) {
                fail("${e.javaClass.simpleName}: ${e.message}")
                return@launch
            }
            status = "wrote $file"
            finish()
        }
    }

    private fun fail(why: String) {
        Log.e(TAG, "BENCHMARK_FAILED $why")
        status = why
        finish()
    }

    companion object {
        const val ACTION = "org.edgecrossformer.demo.BENCHMARK"
        const val EXTRA_RUNS = "runs"
        const val EXTRA_WARMUP = "warmup"
        const val EXTRA_THREADS = "threads"
        const val EXTRA_TRIM = "trim"
        const val TAG = "EdgeCrossFormer"

        fun resultsFile(context: Context) = File(context.filesDir, "benchmarks/results.json")

        /** Runs the benchmark off the main thread and writes the report; also used by the app's own button. */
        suspend fun runAndWrite(context: Context, settings: BenchmarkSettings, onProgress: (Int) -> Unit): File {
            val outcome = withContext(Dispatchers.Default) {
                val load = { Classifier.load(context, settings.threads) }
                Benchmark.run(load, settings, SystemClock::elapsedRealtimeNanos) { done ->
                    if (done % 10 == 0) Log.i(TAG, "run $done / ${settings.runs}")
                }
            }
            onProgress(outcome.samplesMs.size)
            val file = resultsFile(context)
            val json =
                BenchmarkReport.toJson(
                    outcome,
                    deviceInfo(context),
                    appVersion(context),
                    BuildConfig.EXECUTORCH_VERSION,
                )
            withContext(Dispatchers.IO) { BenchmarkReport.write(json, file) }
            if (outcome.error == null) {
                val s = outcome.stats!!
                Log.i(
                    TAG,
                    "median %.2f ms, p90 %.2f ms, trimmed mean %.2f ms (n=%d)".format(
                        s.median,
                        s.p90,
                        s.trimmedMean,
                        s.n,
                    ),
                )
                Log.i(TAG, "BENCHMARK_DONE ${file.absolutePath}")
            } else {
                Log.e(TAG, "BENCHMARK_FAILED ${outcome.error} (report written to ${file.absolutePath})")
            }
            return file
        }

        private fun appVersion(context: Context): String =
            context.packageManager.getPackageInfo(context.packageName, 0).versionName ?: "unknown"

        fun deviceInfo(context: Context): DeviceInfo {
            val memory = ActivityManager.MemoryInfo().also {
                (context.getSystemService(Context.ACTIVITY_SERVICE) as ActivityManager).getMemoryInfo(it)
            }
            val soc = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) {
                "${Build.SOC_MANUFACTURER} ${Build.SOC_MODEL}"
            } else {
                Build.HARDWARE
            }
            return DeviceInfo(
                name = "${Build.MANUFACTURER} ${Build.MODEL}",
                os = "Android ${Build.VERSION.RELEASE} (API ${Build.VERSION.SDK_INT})",
                cpu = soc,
                cores = Runtime.getRuntime().availableProcessors(),
                memoryGib = memory.totalMem / (1024.0 * 1024.0 * 1024.0),
            )
        }
    }
}
