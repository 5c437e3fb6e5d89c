import CoreML
import CrossFormerCore
import Foundation

/// Load with the chosen compute units, one first inference, warm-up, then `runs` timed MLModel predictions on a
/// fixed preprocessed input (preprocessing and Vision's request overhead excluded, as the host benchmark does).
public enum Benchmark {
    public static func run(manifest: ModelManifest, settings: BenchmarkSettings, bundle: Bundle = .main,
                           progress: @Sendable (Int) -> Void = { _ in }) -> BenchmarkOutcome {
        func failed(_ why: String, load: Double? = nil) -> BenchmarkOutcome {
            BenchmarkOutcome(settings: settings, manifest: manifest, loadMs: load, firstInferenceMs: nil,
                             samplesMs: [], error: why)
        }
        let classifier: Classifier
        do { classifier = try Classifier(manifest: manifest, computeUnits: settings.computeUnits, bundle: bundle) }
        catch { return failed("load failed: \(error.localizedDescription)") }
        let size = manifest.resize.crop
        let tensor = (0..<(3 * size * size)).map { Float($0 % 251) / 250 }
        guard let buffer = Preprocessing.pixelBuffer(from: tensor, size: size) else {
            return failed("cannot allocate the input pixel buffer", load: classifier.loadMs)
        }
        let input: MLFeatureProvider
        do { input = try MLDictionaryFeatureProvider(dictionary: [manifest.inputName: MLFeatureValue(pixelBuffer: buffer)]) }
        catch { return failed("bad input: \(error.localizedDescription)", load: classifier.loadMs) }
        func timed() throws -> Double {
            let start = DispatchTime.now().uptimeNanoseconds
            _ = try classifier.model.prediction(from: input)
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        }
        do {
            let first = try timed()
            for _ in 0..<settings.warmup { _ = try timed() }
            var samples: [Double] = []
            for i in 0..<settings.runs {
                samples.append(try timed())
                progress(i + 1)
            }
            return BenchmarkOutcome(settings: settings, manifest: manifest, loadMs: classifier.loadMs,
                                    firstInferenceMs: first, samplesMs: samples, error: nil)
        } catch {
            return failed("inference failed: \(error.localizedDescription)", load: classifier.loadMs)
        }
    }
}
