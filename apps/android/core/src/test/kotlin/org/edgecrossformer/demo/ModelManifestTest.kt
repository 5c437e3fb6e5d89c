package org.edgecrossformer.demo

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test

/** manifest.json as `python -m export` writes it: the fields the app reads, and the errors it explains. */
class ModelManifestTest {
    companion object {
        const val SHA = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"

        fun json(normalization: String = "in_model", sha256: String? = SHA, delegate: String = "xnnpack") =
            """
            {"model": "crossformer-fmnist", "img_size": 32,
             "input": {"name": "image", "shape": [1, 3, 32, 32], "normalization": {"applied": "$normalization"},
                       "resize": {"size": 32, "crop": 32, "interpolation": "bilinear"}},
             "labels": ["T-shirt/top", "Trouser"],
             "artifacts": [
               {"target": "coreml", "precision": "fp16", "file": "m_coreml_fp16.mlpackage"},
               {"target": "executorch", "delegate": "$delegate", "precision": "fp32",
                "file": "m_executorch-xnnpack_fp32.pte", "bytes": 4,
                ${if (sha256 == null) "" else "\"sha256\": \"$sha256\","} "parity": {}}],
             "tools": {"executorch": "1.5.1", "coremltools": null}}
            """.trimIndent()

        fun parse(): ModelManifest = ModelManifest.parse(json())
    }

    @Test
    fun readsTheFieldsTheAppUses() {
        val m = parse()
        assertEquals("crossformer-fmnist", m.model)
        assertArrayEquals(longArrayOf(1, 3, 32, 32), m.inputShape)
        assertEquals(ResizeSpec(32, 32, "bilinear"), m.resize)
        assertEquals("m_executorch-xnnpack_fp32.pte", m.pteFile)
        assertEquals(4L, m.artifactBytes)
        assertEquals(SHA.lowercase(), m.sha256)
        assertEquals(mapOf("executorch" to "1.5.1"), m.tools) // null tool versions are left out
        assertNull(ModelManifest.parse(json(sha256 = null)).sha256)
    }

    @Test
    fun explainsWhatIsMissing() {
        val noPte = runCatching { ModelManifest.parse(json(delegate = "coreml")) }.exceptionOrNull()
        assertTrue(noPte?.message.orEmpty().contains("python -m export --target executorch"))
        val outside = runCatching { ModelManifest.parse(json(normalization = "none")) }.exceptionOrNull()
        assertTrue(outside?.message.orEmpty().contains("needs it in the model"))
    }
}
