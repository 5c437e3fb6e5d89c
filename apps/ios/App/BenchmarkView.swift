import CrossFormerKit
import SwiftUI

/// Warm-up, N timed runs, median / p90 / trimmed mean with the chosen compute units; the report is
/// results.json in the benchmarks schema, shared with ShareLink (AirDrop / Files to the host for
/// `python -m benchmarks merge`).
struct BenchmarkView: View {
    @State private var settings = BenchmarkSettings()
    @State private var running = false
    @State private var done = 0
    @State private var outcome: BenchmarkOutcome?
    @State private var reportURL: URL?
    @State private var message = ""

    var body: some View {
        NavigationStack {
            Form {
                Section("Settings") {
                    Picker("Compute units", selection: $settings.computeUnits) {
                        ForEach(ComputeUnits.allCases) { Text($0.rawValue).tag($0) }
                    }
                    Stepper("Warm-up runs: \(settings.warmup)", value: $settings.warmup, in: 0...100, step: 5)
                    Stepper("Timed runs: \(settings.runs)", value: $settings.runs, in: 5...1000, step: 5)
                    Button(running ? "Running \(done) / \(settings.runs)…" : "Run benchmark") { start() }
                        .disabled(running)
                }
                if let stats = outcome?.stats {
                    Section("Latency (ms)") {
                        LabeledContent("median", value: String(format: "%.2f", stats.median))
                        LabeledContent("p90", value: String(format: "%.2f", stats.p90))
                        LabeledContent("trimmed mean", value: String(format: "%.2f", stats.trimmedMean))
                        LabeledContent("load", value: String(format: "%.1f", outcome?.loadMs ?? 0))
                    }
                }
                if let reportURL { ShareLink("Share results.json", item: reportURL) }
                if !message.isEmpty { Text(message).font(.footnote).foregroundStyle(.secondary) }
            }
            .navigationTitle("Benchmark")
        }
    }

    private func start() {
        running = true; done = 0; message = ""
        let settings = settings
        Task.detached {
            do {
                let manifest = try ModelManifest.fromBundle()
                let result = Benchmark.run(manifest: manifest, settings: settings) { n in
                    Task { @MainActor in done = n }
                }
                let version = Bundle.main.infoDictionary?["CFBundleShortVersionString"] as? String ?? "?"
                let dir = FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
                    .appendingPathComponent("benchmarks")
                let url = try BenchmarkReport.write(BenchmarkReport.json(result, appVersion: version), to: dir)
                await MainActor.run {
                    outcome = result; reportURL = url; running = false
                    message = result.error ?? "wrote \(url.lastPathComponent)"
                }
            } catch {
                await MainActor.run { message = error.localizedDescription; running = false }
            }
        }
    }
}
