import Foundation
import XCTest
@testable import CrossFormerCore

/// The package against apps/golden/golden.json (written by `python -m benchmarks golden`), read in place. The
/// sample images are read from their decoded copies (binary PPM beside golden.json): the exporter's exact RGB
/// bytes, with no image decoder and no colour matching (drawing an untagged gray PNG into device RGB can move
/// pixels by more than the 1e-5 tolerance).
final class GoldenTests: XCTestCase {
    static let golden = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("golden")

    var golden: [String: Any] = [:]
    var spec = ResizeSpec(size: 0, crop: 0)
    var tolerances: [String: Any] = [:]

    override func setUpWithError() throws {
        let url = Self.golden.appendingPathComponent("golden.json")
        golden = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any],
            "cannot read \(url.path)")
        let resize = try XCTUnwrap((golden["input"] as? [String: Any])?["resize"] as? [String: Any])
        spec = ResizeSpec(
            size: resize["size"] as! Int, crop: resize["crop"] as! Int,
            interpolation: resize["interpolation"] as! String)
        tolerances = try XCTUnwrap(golden["tolerances"] as? [String: Any])
    }

    private func check(_ what: String, _ x: [Float], _ expected: [String: Any]) {
        let crop = spec.crop
        XCTAssertEqual(x.count, 3 * crop * crop, what)
        let statsTol = tolerances["input_stats_abs"] as! Double
        for c in 0..<3 {
            let ch = x[(c * crop * crop)..<((c + 1) * crop * crop)].map(Double.init)
            let mean = ch.reduce(0, +) / Double(ch.count)
            let std = (ch.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(ch.count)).squareRoot()
            for (key, value) in [("mean", mean), ("std", std), ("min", ch.min()!), ("max", ch.max()!)] {
                let want = (expected[key] as! [Double])[c]
                XCTAssertEqual(value, want, accuracy: statsTol, "\(what): \(key) of channel \(c)")
            }
        }
        let probes = golden["probes"] as! [[Int]]
        let pixels = expected["pixels"] as! [[Double]]
        let tol = tolerances["input_abs"] as! Double
        for (probe, want) in zip(probes, pixels) {
            for c in 0..<3 {
                let got = Double(x[(c * crop + probe[0]) * crop + probe[1]])
                XCTAssertEqual(got, want[c], accuracy: tol, "\(what): pixel \(probe) channel \(c)")
            }
        }
    }

    /// Binary PPM (P6, maxval 255, no comments: what benchmarks/golden.py writes) -> opaque RGBA.
    static func readPPM(_ url: URL) throws -> RGBAImage {
        let bytes = [UInt8](try Data(contentsOf: url))
        var fields: [String] = []
        var pos = 0
        func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 }
        while fields.count < 4 {
            while isSpace(bytes[pos]) { pos += 1 }
            let start = pos
            while !isSpace(bytes[pos]) { pos += 1 }
            fields.append(String(decoding: bytes[start..<pos], as: UTF8.self))
        }
        pos += 1  // the single whitespace byte before the raster
        guard fields[0] == "P6", fields[3] == "255", let w = Int(fields[1]), let h = Int(fields[2]),
            bytes.count - pos == w * h * 3
        else {
            throw ManifestError("\(url.path): not a binary 8-bit PPM (\(fields))")
        }
        var rgba = [UInt8](repeating: 255, count: w * h * 4)
        for i in 0..<(w * h) {
            for c in 0..<3 { rgba[i * 4 + c] = bytes[pos + i * 3 + c] }
        }
        return RGBAImage(width: w, height: h, rgba: rgba)
    }

    func testSampleImagesPreprocessLikeGolden() throws {
        let images = try XCTUnwrap(golden["images"] as? [[String: Any]])
        XCTAssertFalse(images.isEmpty)
        for image in images {
            let file = try XCTUnwrap(image["pixels_file"] as? String, "golden image without pixels_file")
            let rgba = try Self.readPPM(Self.golden.appendingPathComponent(file))
            let source = try XCTUnwrap(image["source"] as? [String: Any])
            XCTAssertEqual(rgba.width, source["width"] as? Int, file)
            XCTAssertEqual(rgba.height, source["height"] as? Int, file)
            check(file, Preprocessing.tensor(from: rgba, spec: spec), image["input"] as! [String: Any])
        }
    }

    func testSyntheticResizeCasesMatchGolden() throws {
        let cases = try XCTUnwrap((golden["resize_cases"] as? [String: Any])?["cases"] as? [[String: Any]])
        for c in cases {
            let (w, h) = (c["width"] as! Int, c["height"] as! Int)
            var bytes = [UInt8](repeating: 255, count: w * h * 4)
            for y in 0..<h {
                for x in 0..<w {
                    let i = (y * w + x) * 4
                    bytes[i] = UInt8((7 * x + 3 * y) % 256)
                    bytes[i + 1] = UInt8((x * y) % 256)
                    bytes[i + 2] = UInt8((((255 - 5 * x + 2 * y) % 256) + 256) % 256)
                }
            }
            let image = RGBAImage(width: w, height: h, rgba: bytes)
            check(c["name"] as! String, Preprocessing.tensor(from: image, spec: spec), c["input"] as! [String: Any])
        }
    }

    func testLatencyStatisticsMatchGolden() throws {
        let cases = try XCTUnwrap((golden["statistics"] as? [String: Any])?["cases"] as? [[String: Any]])
        for (i, c) in cases.enumerated() {
            let st = try XCTUnwrap(LatencyStats(samplesMs: c["samples_ms"] as! [Double], trim: c["trim"] as! Double))
            let want = c["expected"] as! [String: Any]
            XCTAssertEqual(st.median, want["median"] as! Double, accuracy: 1e-9, "case \(i)")
            XCTAssertEqual(st.p90, want["p90"] as! Double, accuracy: 1e-9, "case \(i)")
            XCTAssertEqual(st.trimmedMean, want["trimmed_mean"] as! Double, accuracy: 1e-9, "case \(i)")
            XCTAssertEqual(st.n, want["n"] as! Int, "case \(i)")
        }
        XCTAssertNil(LatencyStats(samplesMs: [], trim: 0.1))
    }

    func testTop5OfGoldenLogits() throws {
        let labels = try XCTUnwrap(golden["labels"] as? [String])
        for image in try XCTUnwrap(golden["images"] as? [[String: Any]]) {
            let logits = (image["logits"] as! [Double]).map(Float.init)
            let want = image["top5"] as! [[String: Any]]
            let got = topK(logits: logits, labels: labels)
            XCTAssertEqual(got.map(\.index), want.map { $0["index"] as! Int }, image["file"] as! String)
            for (g, w) in zip(got, want) { XCTAssertEqual(g.probability, w["probability"] as! Double, accuracy: 1e-5) }
        }
    }

    func testReportFollowsResultsSchema() throws {
        let manifestJSON = """
            {"model": "crossformer-fmnist", "img_size": 32, "input": {"name": "image", "resize": {"size": 32,
             "crop": 32, "interpolation": "bilinear"}, "normalization": {"applied": "in_model"}},
             "output": {"name": "logits"}, "labels": [], "artifacts": [{"target": "coreml", "precision": "fp16",
             "file": "m_coreml_fp16.mlpackage", "bytes": 10}], "tools": {"executorch": "1.5.1"}}
            """
        let manifest = try ModelManifest(data: Data(manifestJSON.utf8))
        XCTAssertEqual(manifest.compiledModelName, "m_coreml_fp16")
        let outcome = BenchmarkOutcome(
            settings: BenchmarkSettings(), manifest: manifest, loadMs: 12,
            firstInferenceMs: 3, samplesMs: [2, 1, 3], error: nil)
        let report = BenchmarkReport.json(outcome, appVersion: "test")
        for key in [
            "schema", "schema_version", "created", "source", "machine", "versions", "settings", "model",
            "results",
        ] {
            XCTAssertNotNil(report[key], key)
        }
        let result = try XCTUnwrap((report["results"] as? [[String: Any]])?.first)
        XCTAssertEqual(result["id"] as? String, "coreml/fp16/project/all")
        XCTAssertEqual((result["latency_ms"] as? [String: Any])?["median"] as? Double, 2)
        XCTAssertTrue(JSONSerialization.isValidJSONObject(report))
    }
}
