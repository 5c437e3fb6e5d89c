package org.edgecrossformer.demo

import org.json.JSONObject

/** What the app needs from `python -m export`'s manifest.json: input contract, labels and the .pte to load. */
data class ModelManifest(
    val model: String,
    val imgSize: Int,
    val inputShape: LongArray,
    val resize: ResizeSpec,
    val labels: List<String>,
    val pteFile: String,
    val precision: String,
    val artifactBytes: Long,
    /** The .pte's sha256 as the exporter recorded it (lowercase hex); null when the manifest has none. */
    val sha256: String?,
    val tools: Map<String, String>,
) {
    companion object {
        const val FILE = "manifest.json"

        /** [delegate] picks the ExecuTorch artifact: "xnnpack" is the one Android runs. */
        fun parse(json: String, delegate: String = "xnnpack"): ModelManifest {
            val m = JSONObject(json)
            val input = m.getJSONObject("input")
            val shape = input.getJSONArray("shape")
            val resize = input.getJSONObject("resize")
            val labelsJson = m.getJSONArray("labels")
            val artifacts = m.getJSONArray("artifacts")
            val pte = (0 until artifacts.length()).map { artifacts.getJSONObject(it) }.firstOrNull {
                it.getString("target") == "executorch" && it.optString("delegate") == delegate
            } ?: throw IllegalArgumentException(
                "manifest.json lists no ExecuTorch $delegate artifact; export one with " +
                    "`python -m export --target executorch` and run apps/copy_artifacts.sh",
            )
            val normalization = input.getJSONObject("normalization").getString("applied")
            require(normalization == "in_model") {
                "manifest says normalization is '$normalization'; this app feeds [0, 1] RGB and needs it in the model"
            }
            val tools = m.optJSONObject("tools")
            return ModelManifest(
                model = m.getString("model"),
                imgSize = m.getInt("img_size"),
                inputShape = LongArray(shape.length()) { shape.getLong(it) },
                resize = ResizeSpec(
                    resize.getInt("size"),
                    resize.getInt("crop"),
                    resize.optString("interpolation", "bilinear"),
                ),
                labels = List(labelsJson.length()) { labelsJson.getString(it) },
                pteFile = pte.getString("file"),
                precision = pte.getString("precision"),
                artifactBytes = pte.optLong("bytes"),
                sha256 = pte.optString("sha256").lowercase().takeIf { it.isNotEmpty() },
                tools = tools?.keys()?.asSequence()?.filter { !tools.isNull(it) }
                    ?.associateWith { tools.getString(it) }.orEmpty(),
            )
        }
    }
}
