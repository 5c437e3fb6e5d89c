package org.edgecrossformer.demo

import android.graphics.Bitmap
import android.graphics.ImageDecoder
import android.net.Uri
import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.rememberLauncherForActivityResult
import androidx.activity.compose.setContent
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts.PickVisualMedia
import androidx.compose.foundation.Image
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.size
import androidx.compose.material3.Button
import androidx.compose.material3.LinearProgressIndicator
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.rememberCoroutineScope
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.unit.dp
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext

/** Pick a photo, see the top-5 and the inference time; or run the benchmark (same as the BENCHMARK intent). */
class MainActivity : ComponentActivity() {
    // Kept as a Lazy so that onDestroy can tell whether the model was ever loaded (and not load it to close it).
    private val lazyClassifier = lazy { Classifier.load(applicationContext) }
    private val classifier by lazyClassifier

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContent { MaterialTheme { Screen() } }
    }

    override fun onDestroy() {
        super.onDestroy()
        if (isFinishing && lazyClassifier.isInitialized()) runCatching { classifier.close() }
    }

    @Composable
    private fun Screen() {
        var bitmap by remember { mutableStateOf<Bitmap?>(null) }
        var result by remember { mutableStateOf<Classification?>(null) }
        var message by remember { mutableStateOf("Pick a photo to classify") }
        val scope = rememberCoroutineScope()
        val picker = rememberLauncherForActivityResult(PickVisualMedia()) { uri: Uri? ->
            if (uri == null) return@rememberLauncherForActivityResult
            scope.launch {
                message = "classifying..."
                runCatching {
                    withContext(Dispatchers.Default) {
                        val picked = decode(uri)
                        picked to classifier.classify(picked.toRgbImage())
                    }
                }.onSuccess { (picked, classification) ->
                    bitmap = picked
                    result = classification
                    message = classifier.manifest.let { m ->
                        "${m.model} · ${m.pteFile}" + if (m.resize.isExact) {
                            ""
                        } else {
                            " · ${m.resize.interpolation} resize approximated with bilinear"
                        }
                    }
                }.onFailure { message = "failed: ${it.message}" }
            }
        }
        Column(Modifier.padding(16.dp), verticalArrangement = Arrangement.spacedBy(12.dp)) {
            Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
                Button(onClick = { picker.launch(PickVisualMediaRequest(PickVisualMedia.ImageOnly)) }) {
                    Text("Pick image")
                }
                Button(onClick = {
                    scope.launch {
                        message = "benchmarking (warm-up 10, 50 runs)..."
                        val file = BenchmarkActivity.runAndWrite(applicationContext, BenchmarkSettings()) {}
                        message = "wrote $file"
                    }
                }) { Text("Benchmark") }
            }
            Text(message, style = MaterialTheme.typography.bodySmall)
            bitmap?.let { Image(it.asImageBitmap(), contentDescription = "picked image", Modifier.size(160.dp)) }
            result?.let { r ->
                r.top5.forEach { p ->
                    Text("${p.label}  ${"%.1f".format(p.probability * 100)}%")
                    LinearProgressIndicator(progress = { p.probability.toFloat() }, Modifier.fillMaxWidth())
                }
                Text("inference %.2f ms · preprocessing %.2f ms".format(r.inferenceMs, r.preprocessMs))
            }
        }
    }

    /** Decodes with EXIF orientation applied, into software ARGB_8888 pixels that getPixels can read. */
    private fun decode(uri: Uri): Bitmap =
        ImageDecoder.decodeBitmap(ImageDecoder.createSource(contentResolver, uri)) { decoder, _, _ ->
            decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
        }.copy(Bitmap.Config.ARGB_8888, false)
}
