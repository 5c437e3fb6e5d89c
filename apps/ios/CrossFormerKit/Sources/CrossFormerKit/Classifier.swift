import CoreGraphics
import CoreML
import CrossFormerCore
import Foundation
import Vision

extension ComputeUnits {
    var mlValue: MLComputeUnits {
        switch self {
        case .all: return .all
        case .cpuAndNeuralEngine: return .cpuAndNeuralEngine
        case .cpuOnly: return .cpuOnly
        }
    }
}

public struct Classification: Sendable {
    public let top5: [Prediction]
    public let inferenceMs: Double
    public let preprocessMs: Double
}

/// The exported Core ML model, run through Vision (VNCoreMLRequest) on an input preprocessed as manifest.json says.
public final class Classifier: @unchecked Sendable {
    public let manifest: ModelManifest
    public let model: MLModel
    public let computeUnits: ComputeUnits
    public let loadMs: Double
    private let vnModel: VNCoreMLModel

    public init(manifest: ModelManifest, computeUnits: ComputeUnits = .all, bundle: Bundle = .main) throws {
        guard let url = bundle.url(forResource: manifest.compiledModelName, withExtension: "mlmodelc") else {
            throw ManifestError("\(manifest.compiledModelName).mlmodelc is not in the app bundle: add "
                + "\(manifest.coreMLFile) to the app target's Compile Sources (apps/copy_artifacts.sh, xcodegen)")
        }
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits.mlValue
        let start = DispatchTime.now()
        model = try MLModel(contentsOf: url, configuration: config)
        vnModel = try VNCoreMLModel(for: model)
        loadMs = Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e6
        self.manifest = manifest
        self.computeUnits = computeUnits
    }

    /// [1, 3, S, S] tensor in [0, 1] -> logits, through Vision. The pixel buffer already has the model's size,
    /// so Vision's own scaling (.scaleFill) is the identity: resizing followed the manifest, not Vision.
    public func logits(tensor: [Float]) throws -> [Float] {
        guard let buffer = Preprocessing.pixelBuffer(from: tensor, size: manifest.resize.crop) else {
            throw ManifestError("cannot allocate a \(manifest.resize.crop)x\(manifest.resize.crop) pixel buffer")
        }
        let request = VNCoreMLRequest(model: vnModel)
        request.imageCropAndScaleOption = .scaleFill
        try VNImageRequestHandler(cvPixelBuffer: buffer, options: [:]).perform([request])
        guard let observation = (request.results as? [VNCoreMLFeatureValueObservation])?.first,
              let array = observation.featureValue.multiArrayValue else {
            throw ManifestError("the model returned no '\(manifest.outputName)' array")
        }
        return (0..<array.count).map { array[$0].floatValue }
    }

    public func classify(_ image: CGImage) throws -> Classification {
        let t0 = DispatchTime.now().uptimeNanoseconds
        guard let rgba = RGBAImage(cgImage: image) else { throw ManifestError("cannot read the image's pixels") }
        let tensor = Preprocessing.tensor(from: rgba, spec: manifest.resize)
        let t1 = DispatchTime.now().uptimeNanoseconds
        let logits = try logits(tensor: tensor)
        let t2 = DispatchTime.now().uptimeNanoseconds
        return Classification(top5: topK(logits: logits, labels: manifest.labels),
                              inferenceMs: Double(t2 - t1) / 1e6, preprocessMs: Double(t1 - t0) / 1e6)
    }
}
