// swift-tools-version:5.9
// The demo's logic, unit-testable with `swift test` on a Mac: manifest, preprocessing, Core ML / Vision
// classification, latency statistics and the benchmark report. The app target (../App) is only SwiftUI.
import PackageDescription

let package = Package(
    name: "CrossFormerKit",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [.library(name: "CrossFormerKit", targets: ["CrossFormerKit"])],
    targets: [
        .target(name: "CrossFormerKit"),
        // Reads ../../golden/golden.json and ../../../export/samples/*.png from the repository (see GoldenTests).
        .testTarget(name: "CrossFormerKitTests", dependencies: ["CrossFormerKit"]),
    ]
)
