package org.edgecrossformer.demo

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File
import java.nio.file.Files

/** The bundled .pte is copied again whenever the manifest's sha256 changes, even at the same size. */
class ArtifactCopyTest {
    // sha256 of "test" and of "tesu": same size, different program.
    private val shaTest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    private val shaTesu = "e9c0f9e7b0d1db05bc4cd6c7b2a0d2ef9b7b8a1cf5c82b0ba1e6e0c8bd2b7b1f"
    private val dir: File = Files.createTempDirectory("artifact-copy").toFile().apply { deleteOnExit() }
    private val file = File(dir, "m.pte")

    @Test
    fun copiesVerifiesAndStamps() {
        assertFalse(ArtifactCopy.isCurrent(file, shaTest, 4))
        ArtifactCopy.copy("test".byteInputStream(), file, shaTest, 4)
        assertArrayEquals("test".toByteArray(), file.readBytes())
        assertTrue(ArtifactCopy.isCurrent(file, shaTest, 4))
        // A retrained model of the same architecture: same size, another sha256 -> not current, copied again.
        assertFalse(ArtifactCopy.isCurrent(file, shaTesu, 4))
        assertFalse(ArtifactCopy.isCurrent(file, null, 4)) // no sha256 in the manifest: always copy
    }

    @Test
    fun refusesACopyThatIsNotTheManifestsArtifact() {
        ArtifactCopy.copy("test".byteInputStream(), file, shaTest, 4)
        val e = runCatching { ArtifactCopy.copy("tesu".byteInputStream(), file, shaTest, 4) }.exceptionOrNull()
        assertTrue(e is IllegalStateException && e.message.orEmpty().contains("copy_artifacts.sh"))
        assertFalse("a failed copy must not look current", ArtifactCopy.isCurrent(file, shaTest, 4))
        assertFalse(File(dir, "m.pte.tmp").exists())
    }
}
