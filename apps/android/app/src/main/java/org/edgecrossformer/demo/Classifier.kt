package org.edgecrossformer.demo

import android.content.Context
import android.graphics.Bitmap
import android.os.SystemClock
import java.io.Closeable
import java.io.File
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

data class Classification(val top5: List<Prediction>, val inferenceMs: Double, val preprocessMs: Double)

/** The exported .pte on ExecuTorch (XNNPACK): [1, 3, S, S] RGB in [0, 1] -> logits. */
class Classifier private constructor(
    private val module: Module,
    val manifest: ModelManifest,
    val loadMs: Double,
    val threads: Int,
) : Closeable {

    fun logits(input: FloatArray): FloatArray {
        val tensor = Tensor.fromBlob(input, manifest.inputShape)
        return module.forward(EValue.from(tensor))[0].toTensor().getDataAsFloatArray()
    }

    fun classify(image: RgbImage): Classification {
        val t0 = SystemClock.elapsedRealtimeNanos()
        val input = Preprocessing.toTensor(image, manifest.resize)
        val t1 = SystemClock.elapsedRealtimeNanos()
        val logits = logits(input)
        val t2 = SystemClock.elapsedRealtimeNanos()
        return Classification(topK(logits, manifest.labels), (t2 - t1) / 1e6, (t1 - t0) / 1e6)
    }

    override fun close() = module.destroy()

    companion object {
        /** Where `python -m benchmarks android` pushes an export (app-specific external storage: adb can write
         *  it, the app reads it without any permission). */
        fun pushedDir(context: Context): File? = context.getExternalFilesDir("models")

        /** The pushed export when there is one (manifest.json + .pte in [pushedDir]), else the bundled assets. */
        fun load(context: Context, threads: Int = 0): Classifier {
            val dir = pushedDir(context)
            return if (dir != null && File(dir, ModelManifest.FILE).isFile) fromDirectory(dir, threads)
            else fromAssets(context, threads)
        }

        fun fromDirectory(dir: File, threads: Int = 0): Classifier {
            val manifest = ModelManifest.parse(File(dir, ModelManifest.FILE).readText())
            val pte = File(dir, manifest.pteFile)
            check(pte.isFile) { "manifest.json in $dir names ${manifest.pteFile}, which is not there; push it too" }
            val t0 = SystemClock.elapsedRealtimeNanos()
            val module = Module.load(pte.absolutePath, Module.LOAD_MODE_MMAP, threads)
            module.loadMethod("forward")
            val loadMs = (SystemClock.elapsedRealtimeNanos() - t0) / 1e6
            return Classifier(module, manifest, loadMs, threads)
        }

        /** Loads manifest.json and the XNNPACK .pte from the APK's assets (apps/copy_artifacts.sh puts them
         *  there). [threads] = 0 lets ExecuTorch pick. */
        fun fromAssets(context: Context, threads: Int = 0): Classifier {
            val manifestJson = try {
                context.assets.open(ModelManifest.FILE).bufferedReader().use { it.readText() }
            } catch (e: java.io.IOException) {
                throw IllegalStateException(
                    "no ${ModelManifest.FILE} in the app's assets; run apps/copy_artifacts.sh after " +
                        "`python -m export --target executorch`, then rebuild", e)
            }
            val manifest = ModelManifest.parse(manifestJson)
            val pte = assetToFile(context, manifest.pteFile, manifest.artifactBytes)
            val t0 = SystemClock.elapsedRealtimeNanos()
            val module = Module.load(pte.absolutePath, Module.LOAD_MODE_MMAP, threads)
            module.loadMethod("forward") // load now, so that load time is not billed to the first inference
            val loadMs = (SystemClock.elapsedRealtimeNanos() - t0) / 1e6
            return Classifier(module, manifest, loadMs, threads)
        }

        /** ExecuTorch loads from a path: copy the asset into files/ once (again when its size changed). */
        private fun assetToFile(context: Context, name: String, bytes: Long): File {
            val file = File(context.filesDir, name)
            if (file.length() != bytes || bytes == 0L) {
                val tmp = File(context.filesDir, "$name.tmp")
                context.assets.open(name).use { input -> tmp.outputStream().use { input.copyTo(it) } }
                check(tmp.renameTo(file)) { "cannot move $tmp to $file" }
            }
            return file
        }
    }
}

fun Bitmap.toRgbImage(): RgbImage {
    val bitmap = if (config == Bitmap.Config.ARGB_8888) this else copy(Bitmap.Config.ARGB_8888, false)
    val pixels = IntArray(bitmap.width * bitmap.height)
    bitmap.getPixels(pixels, 0, bitmap.width, 0, 0, bitmap.width, bitmap.height)
    return RgbImage(bitmap.width, bitmap.height, pixels)
}
