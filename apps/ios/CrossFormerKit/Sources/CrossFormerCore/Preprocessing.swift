import Foundation

/// The manifest's input.resize: shorter side to `size`, then a center crop of `crop`.
public struct ResizeSpec: Equatable, Sendable {
    public var size: Int
    public var crop: Int
    public var interpolation: String
    public init(size: Int, crop: Int, interpolation: String = "bilinear") {
        self.size = size; self.crop = crop; self.interpolation = interpolation
    }
    /// Only bilinear is implemented exactly; other modes (upstream's bicubic) are approximated with it.
    public var isExact: Bool { interpolation == "bilinear" }
}

/// 8-bit RGBA pixels, row-major, opaque (translucent images are composited on white when drawn).
public struct RGBAImage: Sendable {
    public let width: Int
    public let height: Int
    public let rgba: [UInt8]

    public init(width: Int, height: Int, rgba: [UInt8]) {
        precondition(rgba.count == width * height * 4, "RGBA buffer is \(rgba.count) bytes for \(width)x\(height)")
        self.width = width; self.height = height; self.rgba = rgba
    }
}

/// The exporter's preprocessing (edge_crossformer.data.preprocess), pixel for pixel: RGB / 255, bilinear resize
/// with half-pixel centers, antialiased when shrinking (triangle kernel widened by the scale, as
/// torch.nn.functional.interpolate(antialias: true)), center crop, clamp to [0, 1]. Normalization is in the model.
/// Checked against apps/golden/golden.json by the package tests.
public enum Preprocessing {
    struct Taps { let first: Int; let weights: [Double] }

    /// Size after scaling the shorter side to spec.size: rounded half to even (as Python), never below the crop.
    public static func resizedSize(height: Int, width: Int, spec: ResizeSpec) -> (height: Int, width: Int) {
        let scale = Double(spec.size) / Double(min(height, width))
        return (
            max(spec.crop, Int((Double(height) * scale).rounded(.toNearestOrEven))),
            max(spec.crop, Int((Double(width) * scale).rounded(.toNearestOrEven)))
        )
    }

    static func taps(inSize: Int, outSize: Int, index: Int) -> Taps {
        let scale = Double(inSize) / Double(outSize)
        let support = max(scale, 1.0)
        let center = (Double(index) + 0.5) * scale
        let lo = max(Int((center - support + 0.5).rounded(.down)), 0)
        let hi = min(Int((center + support + 0.5).rounded(.down)), inSize)
        let raw = (lo..<hi).map { max(0, 1 - abs((Double($0) + 0.5 - center) / support)) }
        let total = raw.reduce(0, +)
        return Taps(first: lo, weights: raw.map { $0 / total })
    }

    /// NCHW float [1, 3, crop, crop], flattened, values in [0, 1].
    public static func tensor(from image: RGBAImage, spec: ResizeSpec) -> [Float] {
        let (h, w) = (image.height, image.width)
        let (nh, nw) = resizedSize(height: h, width: w, spec: spec)
        let crop = spec.crop
        let (top, left) = ((nh - crop) / 2, (nw - crop) / 2)
        let identity = nh == h && nw == w
        let cols = (0..<crop).map {
            identity ? Taps(first: left + $0, weights: [1]) : taps(inSize: w, outSize: nw, index: left + $0)
        }
        let rows = (0..<crop).map {
            identity ? Taps(first: top + $0, weights: [1]) : taps(inSize: h, outSize: nh, index: top + $0)
        }
        let rowFirst = rows.map(\.first).min()!
        let rowEnd = rows.map { $0.first + $0.weights.count }.max()!
        // Horizontal pass over the rows the vertical pass needs, for the cropped columns only: [row][x][channel].
        var horizontal = [Double](repeating: 0, count: (rowEnd - rowFirst) * crop * 3)
        image.rgba.withUnsafeBufferPointer { px in
            for y in rowFirst..<rowEnd {
                for x in 0..<crop {
                    let t = cols[x]
                    var acc = (0.0, 0.0, 0.0)
                    for (k, wk) in t.weights.enumerated() {
                        let i = (y * w + t.first + k) * 4
                        acc.0 += wk * Double(px[i]); acc.1 += wk * Double(px[i + 1]); acc.2 += wk * Double(px[i + 2])
                    }
                    let o = ((y - rowFirst) * crop + x) * 3
                    horizontal[o] = acc.0; horizontal[o + 1] = acc.1; horizontal[o + 2] = acc.2
                }
            }
        }
        var out = [Float](repeating: 0, count: 3 * crop * crop)
        for y in 0..<crop {
            let t = rows[y]
            for x in 0..<crop {
                for c in 0..<3 {
                    var v = 0.0
                    for (k, wk) in t.weights.enumerated() {
                        v += wk * horizontal[((t.first + k - rowFirst) * crop + x) * 3 + c]
                    }
                    out[(c * crop + y) * crop + x] = Float(min(max(v / 255, 0), 1))
                }
            }
        }
        return out
    }
}
