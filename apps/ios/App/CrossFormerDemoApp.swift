import SwiftUI

@main
struct CrossFormerDemoApp: App {
    var body: some Scene {
        WindowGroup {
            TabView {
                ClassifyView().tabItem { Label("Classify", systemImage: "photo") }
                CameraView().tabItem { Label("Camera", systemImage: "camera") }
                BenchmarkView().tabItem { Label("Benchmark", systemImage: "speedometer") }
            }
        }
    }
}
