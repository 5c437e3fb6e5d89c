package org.edgecrossformer.demo

import java.io.File
import java.io.InputStream
import java.security.MessageDigest

/**
 * ExecuTorch loads a program from a path, so the app copies the bundled .pte out of its APK. The copy is reused
 * only while it is the artifact the manifest describes: a stamp file beside it records the sha256 the copy was
 * verified against. Why not the size: a retrained model of the same architecture has the same byte count.
 * Why not hash the copy on every launch: that reads the whole program; the stamp costs one small read.
 */
object ArtifactCopy {
    fun stampOf(file: File) = File(file.parentFile, ".${file.name}.sha256")

    /** True when [file] is a verified copy of the artifact with this [sha256] and [bytes]. */
    fun isCurrent(file: File, sha256: String?, bytes: Long): Boolean {
        val stamp = stampOf(file)
        if (sha256 == null || !file.isFile || !stamp.isFile) return false
        return file.length() == bytes && stamp.readText().trim() == sha256
    }

    /** Copies [source] into [file] (whole or not at all), checks it against the manifest's [sha256] and
     *  [bytes] (when given), then writes the stamp. Throws when the copy is not what the manifest describes. */
    fun copy(source: InputStream, file: File, sha256: String?, bytes: Long) {
        file.parentFile?.mkdirs()
        val stamp = stampOf(file)
        stamp.delete() // a copy in progress is never current
        val tmp = File(file.parentFile, "${file.name}.tmp")
        val digest = MessageDigest.getInstance("SHA-256")
        source.use { input ->
            tmp.outputStream().use { out ->
                val buffer = ByteArray(1 shl 16)
                while (true) {
                    val n = input.read(buffer)
                    if (n < 0) break
                    digest.update(buffer, 0, n)
                    out.write(buffer, 0, n)
                }
            }
        }
        val got = digest.digest().joinToString("") { "%02x".format(it) }
        if ((sha256 != null && got != sha256) || (bytes > 0 && tmp.length() != bytes)) {
            tmp.delete()
            throw IllegalStateException(
                "${file.name} in the app's assets (sha256 $got) is not the one manifest.json describes " +
                    "(sha256 $sha256, $bytes bytes); run apps/copy_artifacts.sh again and rebuild",
            )
        }
        check(tmp.renameTo(file)) { "cannot move $tmp to $file" }
        if (sha256 != null) stamp.writeText(sha256)
    }
}
