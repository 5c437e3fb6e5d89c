package org.pytorch.executorch

import java.io.Closeable

/** Stub of executorch-android's Module (see ../../../README.md): signatures only. */
open class Module private constructor() : Closeable {
    open fun forward(vararg inputs: EValue): Array<EValue> = stub()

    open fun execute(methodName: String, vararg inputs: EValue): Array<EValue> = stub()

    open fun loadMethod(methodName: String): Unit = stub()

    open fun getMethods(): Array<String> = stub()

    open fun destroy(): Unit = stub()

    override fun close(): Unit = stub()

    companion object {
        const val LOAD_MODE_FILE = 0
        const val LOAD_MODE_MMAP = 1
        const val LOAD_MODE_MMAP_USE_MLOCK = 2
        const val LOAD_MODE_MMAP_USE_MLOCK_IGNORE_ERRORS = 3

        @JvmStatic
        @JvmOverloads
        fun load(modelPath: String?, loadMode: Int = LOAD_MODE_FILE, numThreads: Int = 0): Module = stub()
    }
}

internal fun stub(): Nothing = throw UnsupportedOperationException("ExecuTorch API stub: compile-time only")
