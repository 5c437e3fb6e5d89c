import Foundation

/// docs/results_schema.md's latency statistics, in milliseconds.
public struct LatencyStats: Equatable, Sendable {
    public let median, p90, trimmedMean, min, max: Double
    public let n: Int

    /// Median (mean of the two middle runs for an even count), nearest-rank p90, mean after cutting
    /// floor(trim * n) runs from each end (none when that would leave nothing). nil for no runs.
    public init?(samplesMs: [Double], trim: Double) {
        guard !samplesMs.isEmpty else { return nil }
        let s = samplesMs.sorted()
        let n = s.count
        median = n % 2 == 1 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2
        p90 = s[Swift.max(0, Int((0.9 * Double(n)).rounded(.up)) - 1)]
        let k = Int((trim * Double(n)).rounded(.down))
        let kept = n - 2 * k > 0 ? Array(s[k..<(n - k)]) : s
        trimmedMean = kept.reduce(0, +) / Double(kept.count)
        min = s[0]; max = s[n - 1]; self.n = n
    }
}

public struct Prediction: Identifiable, Sendable {
    public let index: Int
    public let label: String
    public let probability: Double
    public var id: Int { index }
}

/// Softmax of logits (the model outputs logits), then the k most probable; ties keep the lower index.
public func topK(logits: [Float], labels: [String], k: Int = 5) -> [Prediction] {
    guard let peak = logits.max() else { return [] }
    let e = logits.map { exp(Double($0 - peak)) }
    let total = e.reduce(0, +)
    let order = logits.indices.sorted { logits[$0] != logits[$1] ? logits[$0] > logits[$1] : $0 < $1 }
    return order.prefix(k).map {
        Prediction(index: $0, label: $0 < labels.count ? labels[$0] : "class_\($0)", probability: e[$0] / total)
    }
}
