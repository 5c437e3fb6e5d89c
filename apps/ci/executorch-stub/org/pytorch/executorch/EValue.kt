package org.pytorch.executorch

/** Stub of executorch-android's EValue (see ../../../README.md): signatures only. */
class EValue private constructor() {
    val isTensor: Boolean get() = stub()

    fun toTensor(): Tensor = stub()

    companion object {
        @JvmStatic
        fun from(tensor: Tensor): EValue = stub()
    }
}
