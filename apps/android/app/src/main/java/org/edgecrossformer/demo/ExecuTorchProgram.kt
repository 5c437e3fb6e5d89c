package org.edgecrossformer.demo

import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.io.Closeable
import java.nio.FloatBuffer

/**
 * Every call this app makes into ExecuTorch (org.pytorch:executorch-android), and nothing of android.*, so CI can
 * compile this file against a stub of the pinned version's signatures (apps/ci/executorch-stub).
 *
 * The input tensor is allocated once: a direct FloatBuffer that the native tensor wraps without copying
 * (Tensor.fromBlob(FloatArray) would allocate and copy on every call); each call copies the input into it.
 */
class ExecuTorchProgram private constructor(private val module: Module, inputShape: LongArray) : Closeable {
    private val inputSize = inputShape.fold(1L) { a, b -> a * b }.toInt()
    private val inputBuffer: FloatBuffer = Tensor.allocateFloatBuffer(inputSize)
    private val input: EValue = EValue.from(Tensor.fromBlob(inputBuffer, inputShape))

    /** [1, 3, S, S] flattened -> logits. Synchronized: the buffer is shared by every call. */
    @Synchronized
    fun forward(values: FloatArray): FloatArray {
        require(values.size == inputSize) { "input has ${values.size} values, the model takes $inputSize" }
        inputBuffer.rewind()
        inputBuffer.put(values)
        return module.forward(input)[0].toTensor().dataAsFloatArray
    }

    override fun close() = module.destroy()

    companion object {
        /** Memory-maps the program and loads "forward" now, so that load time is not billed to the first
         *  inference. [threads] = 0 lets ExecuTorch pick. */
        fun load(path: String, inputShape: LongArray, threads: Int): ExecuTorchProgram {
            val module = Module.load(path, Module.LOAD_MODE_MMAP, threads)
            try {
                module.loadMethod("forward")
                return ExecuTorchProgram(module, inputShape)
            } catch (e: Exception) {
                module.destroy()
                throw e
            }
        }
    }
}
