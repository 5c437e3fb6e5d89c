package org.pytorch.executorch

import java.nio.FloatBuffer

/** Stub of executorch-android's Tensor (see ../../../README.md): signatures only. */
abstract class Tensor internal constructor(shape: LongArray) {
    fun numel(): Long = stub()

    fun shape(): LongArray = stub()

    open val dataAsFloatArray: FloatArray get() = stub()

    open fun copyDataInto(dst: FloatBuffer): Unit = stub()

    companion object {
        /** A direct buffer in native byte order, which fromBlob(FloatBuffer, ...) wraps without copying. */
        @JvmStatic
        fun allocateFloatBuffer(numElements: Int): FloatBuffer = stub()

        /** Copies [data] into a new buffer on every call. */
        @JvmStatic
        fun fromBlob(data: FloatArray, shape: LongArray): Tensor = stub()

        @JvmStatic
        fun fromBlob(data: FloatBuffer, shape: LongArray): Tensor = stub()
    }
}
