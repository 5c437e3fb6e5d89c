package org.edgecrossformer.demo

import android.content.Context
import android.graphics.Bitmap
import android.os.SystemClock
import java.io.File

data class Classification(val top5: List<Prediction>, val inferenceMs: Double, val preprocessMs: Double)

/** The exported .pte on ExecuTorch (XNNPACK): [1, 3, S, S] RGB in [0, 1] -> logits. */
class Classifier private constructor(
    private val program: ExecuTorchProgram,
    override val manifest: ModelManifest,
    override val loadMs: Double,
    val threads: Int,
) : TimedModel {

    override fun logits(input: FloatArray): FloatArray = program.forward(input)

    fun classify(image: RgbImage): Classification {
        val t0 = SystemClock.elapsedRealtimeNanos()
        val input = Preprocessing.toTensor(image, manifest.resize)
        val t1 = SystemClock.elapsedRealtimeNanos()
        val logits = logits(input)
        val t2 = SystemClock.elapsedRealtimeNanos()
        return Classification(topK(logits, manifest.labels), (t2 - t1) / 1e6, (t1 - t0) / 1e6)
    }

    override fun close() = program.close()

    companion object {
        /** Where `python -m benchmarks android` pushes an export (app-specific external storage: adb can write
         *  it, the app reads it without any permission). */
        fun pushedDir(context: Context): File? = context.getExternalFilesDir("models")

        /** The pushed export when there is one (manifest.json + .pte in [pushedDir]), else the bundled assets. */
        fun load(context: Context, threads: Int = 0): Classifier {
            val dir = pushedDir(context)
            return if (dir != null && File(dir, ModelManifest.FILE).isFile) {
                fromDirectory(dir, threads)
            } else {
                fromAssets(context, threads)
            }
        }

        fun fromDirectory(dir: File, threads: Int = 0): Classifier {
            val manifest = ModelManifest.parse(File(dir, ModelManifest.FILE).readText())
            val pte = File(dir, manifest.pteFile)
            check(pte.isFile) { "manifest.json in $dir names ${manifest.pteFile}, which is not there; push it too" }
            return load(pte, manifest, threads)
        }

        /** Loads manifest.json and the XNNPACK .pte from the APK's assets (apps/copy_artifacts.sh puts them
         *  there). [threads] = 0 lets ExecuTorch pick. */
        fun fromAssets(context: Context, threads: Int = 0): Classifier {
            val manifestJson = try {
                context.assets.open(ModelManifest.FILE).bufferedReader().use { it.readText() }
            } catch (e: java.io.IOException) {
                throw IllegalStateException(
                    "no ${ModelManifest.FILE} in the app's assets; run apps/copy_artifacts.sh after " +
                        "`python -m export --target executorch`, then rebuild",
                    e,
                )
            }
            val manifest = ModelManifest.parse(manifestJson)
            return load(assetToFile(context, manifest), manifest, threads)
        }

        private fun load(pte: File, manifest: ModelManifest, threads: Int): Classifier {
            val t0 = SystemClock.elapsedRealtimeNanos()
            val program = ExecuTorchProgram.load(pte.absolutePath, manifest.inputShape, threads)
            val loadMs = (SystemClock.elapsedRealtimeNanos() - t0) / 1e6
            return Classifier(program, manifest, loadMs, threads)
        }

        /** ExecuTorch loads from a path: copy the asset into files/, again whenever the manifest's sha256 is not
         *  the one the copy was verified against (ArtifactCopy). */
        private fun assetToFile(context: Context, manifest: ModelManifest): File {
            val file = File(context.filesDir, manifest.pteFile)
            if (!ArtifactCopy.isCurrent(file, manifest.sha256, manifest.artifactBytes)) {
                ArtifactCopy.copy(context.assets.open(manifest.pteFile), file, manifest.sha256, manifest.artifactBytes)
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
