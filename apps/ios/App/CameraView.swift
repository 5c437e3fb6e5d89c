import AVFoundation
import CoreImage
import CrossFormerKit
import SwiftUI

/// The back camera's feed, classified a few times a second.
struct CameraView: View {
    @State private var camera = CameraModel()

    var body: some View {
        VStack {
            CameraPreview(session: camera.session).aspectRatio(3 / 4, contentMode: .fit)
            if let result = camera.result { List { PredictionsSection(result: result) } }
            Text(camera.message).font(.footnote).foregroundStyle(.secondary)
        }
        .onAppear { camera.start() }
        .onDisappear { camera.stop() }
    }
}

@Observable
final class CameraModel: NSObject, AVCaptureVideoDataOutputSampleBufferDelegate, @unchecked Sendable {
    let session = AVCaptureSession()
    var result: Classification?
    var message = ""
    private var classifier: Classifier?
    private let queue = DispatchQueue(label: "camera.frames")
    private let context = CIContext()
    private var lastRun = Date.distantPast

    func start() {
        queue.async { [self] in
            do {
                if classifier == nil { classifier = try Classifier(manifest: ModelManifest.fromBundle()) }
                if session.inputs.isEmpty {
                    guard let device = AVCaptureDevice.default(.builtInWideAngleCamera, for: .video, position: .back)
                    else { throw ManifestError("no back camera") }
                    session.addInput(try AVCaptureDeviceInput(device: device))
                    let output = AVCaptureVideoDataOutput()
                    output.alwaysDiscardsLateVideoFrames = true
                    output.setSampleBufferDelegate(self, queue: queue)
                    session.addOutput(output)
                    output.connection(with: .video)?.videoRotationAngle = 90  // portrait, upright
                }
                session.startRunning()
            } catch {
                let text = error.localizedDescription
                DispatchQueue.main.async { self.message = "camera unavailable: \(text)" }
            }
        }
    }

    func stop() { queue.async { self.session.stopRunning() } }

    func captureOutput(_ output: AVCaptureOutput, didOutput sampleBuffer: CMSampleBuffer,
                       from connection: AVCaptureConnection) {
        guard Date().timeIntervalSince(lastRun) > 0.2, let classifier,
              let buffer = CMSampleBufferGetImageBuffer(sampleBuffer),
              let frame = context.createCGImage(CIImage(cvPixelBuffer: buffer), from: CIImage(cvPixelBuffer: buffer).extent)
        else { return }
        lastRun = Date()
        let classification = try? classifier.classify(frame)
        DispatchQueue.main.async { self.result = classification }
    }
}

struct CameraPreview: UIViewRepresentable {
    let session: AVCaptureSession
    final class PreviewView: UIView {
        override class var layerClass: AnyClass { AVCaptureVideoPreviewLayer.self }
    }
    func makeUIView(context: Context) -> PreviewView {
        let view = PreviewView()
        (view.layer as! AVCaptureVideoPreviewLayer).session = session
        (view.layer as! AVCaptureVideoPreviewLayer).videoGravity = .resizeAspectFill
        return view
    }
    func updateUIView(_ uiView: PreviewView, context: Context) {}
}
