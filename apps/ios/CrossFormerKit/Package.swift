// swift-tools-version:5.9
// The demo's logic in two targets:
// - CrossFormerCore: Foundation only (manifest, preprocessing on raw pixels, statistics, top-k, benchmark report),
//   so it builds and its tests run on Linux too (apps/ci/build_cores.sh, in CI) as well as on a Mac.
// - CrossFormerKit: Core ML / Vision / CoreGraphics / CoreVideo (classifier, benchmark loop, pixel buffers); it
//   re-exports CrossFormerCore, so the app (../App, SwiftUI only) imports just CrossFormerKit. Apple platforms only.
import PackageDescription

var products: [Product] = [.library(name: "CrossFormerCore", targets: ["CrossFormerCore"])]
var targets: [Target] = [
    .target(name: "CrossFormerCore"),
    // Reads ../../golden/golden.json and the decoded samples beside it from the repository (see GoldenTests).
    .testTarget(name: "CrossFormerCoreTests", dependencies: ["CrossFormerCore"]),
]
#if canImport(Darwin)
products.append(.library(name: "CrossFormerKit", targets: ["CrossFormerKit"]))
targets.append(.target(name: "CrossFormerKit", dependencies: ["CrossFormerCore"]))
#endif

let package = Package(
    name: "CrossFormerKit",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: products,
    targets: targets
)
