import CrossFormerKit
import PhotosUI
import SwiftUI

/// Pick a photo, see the top-5 (softmax of the logits) and the inference time.
struct ClassifyView: View {
    @State private var item: PhotosPickerItem?
    @State private var image: UIImage?
    @State private var result: Classification?
    @State private var message = "Pick a photo to classify"
    @State private var classifier: Classifier?

    var body: some View {
        NavigationStack {
            List {
                Section {
                    PhotosPicker("Pick a photo", selection: $item, matching: .images)
                    if let image {
                        Image(uiImage: image).resizable().scaledToFit().frame(maxHeight: 220)
                    }
                    Text(message).font(.footnote).foregroundStyle(.secondary)
                }
                if let result { PredictionsSection(result: result) }
            }
            .navigationTitle("CrossFormer")
        }
        .onChange(of: item) { _, newItem in
            Task { await classify(newItem) }
        }
    }

    private func classify(_ item: PhotosPickerItem?) async {
        guard let item else { return }
        do {
            guard let data = try await item.loadTransferable(type: Data.self), let ui = UIImage(data: data),
                  let cg = ui.normalizedOrientation().cgImage else {
                message = "cannot read that image"; return
            }
            if classifier == nil { classifier = try Classifier(manifest: ModelManifest.fromBundle()) }
            let classifier = classifier!
            result = try await Task.detached { try classifier.classify(cg) }.value
            image = ui
            let m = classifier.manifest
            message = "\(m.model) · \(m.coreMLFile)" + (m.resize.isExact ? "" :
                " · \(m.resize.interpolation) resize approximated with bilinear")
        } catch {
            message = "failed: \(error.localizedDescription)"
        }
    }
}

struct PredictionsSection: View {
    let result: Classification
    var body: some View {
        Section("Top 5") {
            ForEach(result.top5) { p in
                VStack(alignment: .leading) {
                    HStack { Text(p.label); Spacer(); Text(p.probability, format: .percent.precision(.fractionLength(1))) }
                    ProgressView(value: p.probability)
                }
            }
            Text(String(format: "inference %.2f ms · preprocessing %.2f ms", result.inferenceMs, result.preprocessMs))
                .font(.footnote)
        }
    }
}

extension UIImage {
    /// Photos carry an EXIF orientation; the model must see the image upright, as a viewer does.
    func normalizedOrientation() -> UIImage {
        guard imageOrientation != .up else { return self }
        return UIGraphicsImageRenderer(size: size, format: { let f = imageRendererFormat; f.scale = scale; return f }())
            .image { _ in draw(in: CGRect(origin: .zero, size: size)) }
    }
}
