import Foundation

/// What the app needs from `python -m export`'s manifest.json: input contract, labels and the Core ML model.
public struct ModelManifest: Sendable {
    public static let fileName = "manifest.json"

    public let model: String
    public let imgSize: Int
    public let inputName: String
    public let outputName: String
    public let resize: ResizeSpec
    public let labels: [String]
    /// The Core ML artifact (`<model>_coreml_<precision>.mlpackage`); Xcode bundles it compiled, as .mlmodelc.
    public let coreMLFile: String
    public let precision: String
    public let artifactBytes: Int?
    public let tools: [String: String]

    public var compiledModelName: String { (coreMLFile as NSString).deletingPathExtension }

    public init(data: Data) throws {
        guard let m = try JSONSerialization.jsonObject(with: data) as? [String: Any],
            let input = m["input"] as? [String: Any],
            let resize = input["resize"] as? [String: Any],
            let output = m["output"] as? [String: Any],
            let artifacts = m["artifacts"] as? [[String: Any]]
        else {
            throw ManifestError("manifest.json lacks input / output / artifacts; is it from `python -m export`?")
        }
        guard let coreml = artifacts.first(where: { $0["target"] as? String == "coreml" }),
            let file = coreml["file"] as? String
        else {
            throw ManifestError(
                "manifest.json lists no Core ML artifact; export with `python -m export --target "
                    + "coreml` and run apps/copy_artifacts.sh")
        }
        let normalization = (input["normalization"] as? [String: Any])?["applied"] as? String
        guard normalization == "in_model" else {
            throw ManifestError("manifest says normalization is '\(normalization ?? "?")'; the app feeds [0, 1] RGB")
        }
        model = m["model"] as? String ?? "?"
        imgSize = m["img_size"] as? Int ?? 0
        inputName = input["name"] as? String ?? "image"
        outputName = output["name"] as? String ?? "logits"
        self.resize = ResizeSpec(
            size: resize["size"] as? Int ?? imgSize, crop: resize["crop"] as? Int ?? imgSize,
            interpolation: resize["interpolation"] as? String ?? "bilinear")
        labels = m["labels"] as? [String] ?? []
        coreMLFile = file
        precision = coreml["precision"] as? String ?? "fp16"
        artifactBytes = coreml["bytes"] as? Int
        tools = (m["tools"] as? [String: Any] ?? [:]).compactMapValues { $0 as? String }
    }

    /// manifest.json from the app bundle (copied there by apps/copy_artifacts.sh).
    public static func fromBundle(_ bundle: Bundle = .main) throws -> ModelManifest {
        guard let url = bundle.url(forResource: "manifest", withExtension: "json") else {
            throw ManifestError(
                "no \(fileName) in the app bundle; run apps/copy_artifacts.sh after "
                    + "`python -m export --target coreml`, then `xcodegen generate` and rebuild")
        }
        return try ModelManifest(data: Data(contentsOf: url))
    }
}

public struct ManifestError: LocalizedError {
    public let errorDescription: String?
    public init(_ message: String) { errorDescription = message }
}
