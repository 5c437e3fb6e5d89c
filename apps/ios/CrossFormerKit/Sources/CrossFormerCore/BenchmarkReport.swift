import Foundation

/// Which processors Core ML may use (CrossFormerKit maps it to MLComputeUnits); the raw value is the report's name.
public enum ComputeUnits: String, CaseIterable, Identifiable, Sendable {
    case all, cpuAndNeuralEngine, cpuOnly
    public var id: String { rawValue }
}

public struct BenchmarkSettings: Sendable {
    public var runs = 50
    public var warmup = 10
    public var trim = 0.1
    public var computeUnits = ComputeUnits.all
    public init() {}
}

public struct BenchmarkOutcome: Sendable {
    public let settings: BenchmarkSettings
    public let manifest: ModelManifest
    public let loadMs: Double?
    public let firstInferenceMs: Double?
    public let samplesMs: [Double]
    public let error: String?
    public var stats: LatencyStats? { LatencyStats(samplesMs: samplesMs, trim: settings.trim) }

    public init(
        settings: BenchmarkSettings, manifest: ModelManifest, loadMs: Double?, firstInferenceMs: Double?,
        samplesMs: [Double], error: String?
    ) {
        self.settings = settings; self.manifest = manifest; self.loadMs = loadMs
        self.firstInferenceMs = firstInferenceMs; self.samplesMs = samplesMs; self.error = error
    }
}

public struct DeviceInfo: Sendable {
    public var name: String, os: String, cores: Int, memoryGib: Double
    public init(name: String, os: String, cores: Int, memoryGib: Double) {
        self.name = name; self.os = os; self.cores = cores; self.memoryGib = memoryGib
    }

    /// Hardware model identifier (e.g. "iPhone16,1"), OS version, cores and memory of this device.
    public static var current: DeviceInfo {
        var info = utsname()
        uname(&info)
        let machine = withUnsafeBytes(of: &info.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let process = ProcessInfo.processInfo
        let v = process.operatingSystemVersion
        #if os(iOS)
            let osName = "iOS"
        #elseif os(macOS)
            let osName = "macOS"
        #else
            let osName = "Linux"  // the core's tests on CI
        #endif
        return DeviceInfo(
            name: machine, os: "\(osName) \(v.majorVersion).\(v.minorVersion).\(v.patchVersion)",
            cores: process.activeProcessorCount,
            memoryGib: Double(process.physicalMemory) / 1_073_741_824)
    }
}

/// results.json in docs/results_schema.md's format (version 1, source "ios-app"), for
/// `python -m benchmarks merge host/results.json phone.json`.
public enum BenchmarkReport {
    public static func json(
        _ outcome: BenchmarkOutcome, device: DeviceInfo = .current, appVersion: String,
        created: Date = Date()
    ) -> [String: Any] {
        let m = outcome.manifest
        let s = outcome.settings
        let units = s.computeUnits.rawValue
        var latency: Any = NSNull()
        if let st = outcome.stats {
            latency =
                [
                    "median": st.median, "p90": st.p90, "trimmed_mean": st.trimmedMean, "min": st.min,
                    "max": st.max, "n": st.n,
                ] as [String: Any]
        }
        let result: [String: Any] = [
            "id": "coreml/\(m.precision)/project/\(units)",
            "runtime": "coreml",
            "backend": units,
            "precision": m.precision,
            "variant": "project",
            "artifact": m.coreMLFile,
            "artifact_bytes": m.artifactBytes.map { $0 as Any } ?? NSNull(),
            "status": outcome.error == nil ? "ok" : "failed",
            "error": outcome.error.map { $0 as Any } ?? NSNull(),
            "load_ms": outcome.loadMs.map { $0 as Any } ?? NSNull(),
            "first_inference_ms": outcome.firstInferenceMs.map { $0 as Any } ?? NSNull(),
            "latency_ms": latency,
            "samples_ms": outcome.samplesMs,
            "notes": ["timed: MLModel.prediction on a preallocated 8-bit image input, preprocessing excluded"],
        ]
        var versions: [String: Any] = ["app": appVersion]
        for (tool, version) in m.tools { versions["export:\(tool)"] = version }
        let iso = ISO8601DateFormatter()  // UTC, e.g. 2026-11-25T12:00:00Z
        return [
            "schema": "edge-crossformer/results",
            "schema_version": 1,
            "created": iso.string(from: created),
            "source": "ios-app",
            "machine": [
                "kind": "device", "name": device.name, "os": device.os, "cores": device.cores,
                "memory_gib": (device.memoryGib * 10).rounded() / 10,
            ] as [String: Any],
            "versions": versions,
            "settings": [
                "model": m.model, "img_size": m.imgSize, "batch": 1, "threads": NSNull(),
                "warmup": s.warmup, "runs": s.runs, "rounds": 1, "trim": s.trim, "quick": false,
                "compute_units": units,
            ] as [String: Any],
            "model": ["name": m.model, "img_size": m.imgSize] as [String: Any],
            "results": [result],
        ]
    }

    /// Writes the report atomically into `directory`/results.json and returns its URL (for ShareLink).
    public static func write(_ report: [String: Any], to directory: URL) throws -> URL {
        let data = try JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys])
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let url = directory.appendingPathComponent("results.json")
        try data.write(to: url, options: .atomic)
        return url
    }
}
