import CoreGraphics
import CoreVideo
import CrossFormerCore
import Foundation

// The Core Graphics / Core Video ends of preprocessing: decoded images in, Core ML image inputs out.

extension RGBAImage {
    /// Draws `image` on white into device RGB (no resampling: same size).
    public init?(cgImage image: CGImage) {
        let (w, h) = (image.width, image.height)
        var bytes = [UInt8](repeating: 255, count: w * h * 4)
        let drawn = bytes.withUnsafeMutableBytes { buffer -> Bool in
            guard let ctx = CGContext(data: buffer.baseAddress, width: w, height: h, bitsPerComponent: 8,
                                      bytesPerRow: w * 4, space: CGColorSpaceCreateDeviceRGB(),
                                      bitmapInfo: CGImageAlphaInfo.premultipliedLast.rawValue) else { return false }
            ctx.interpolationQuality = .none
            ctx.draw(image, in: CGRect(x: 0, y: 0, width: w, height: h))
            return true
        }
        guard drawn else { return nil }
        self.init(width: w, height: h, rgba: bytes)
    }
}

extension Preprocessing {
    /// The tensor as the 8-bit BGRA pixel buffer a Core ML image input takes (Core ML scales by 1/255 again).
    /// Rounding to 8 bits costs at most 0.5/255 per value (golden tolerances.input_abs_8bit).
    public static func pixelBuffer(from tensor: [Float], size: Int) -> CVPixelBuffer? {
        var buffer: CVPixelBuffer?
        let attrs = [kCVPixelBufferCGImageCompatibilityKey: true, kCVPixelBufferCGBitmapContextCompatibilityKey: true]
        guard CVPixelBufferCreate(kCFAllocatorDefault, size, size, kCVPixelFormatType_32BGRA, attrs as CFDictionary,
                                  &buffer) == kCVReturnSuccess, let buffer else { return nil }
        CVPixelBufferLockBaseAddress(buffer, [])
        defer { CVPixelBufferUnlockBaseAddress(buffer, []) }
        let stride = CVPixelBufferGetBytesPerRow(buffer)
        let base = CVPixelBufferGetBaseAddress(buffer)!.assumingMemoryBound(to: UInt8.self)
        let plane = size * size
        for y in 0..<size {
            for x in 0..<size {
                let p = base + y * stride + x * 4
                let i = y * size + x
                p[0] = UInt8((tensor[2 * plane + i] * 255).rounded())  // B
                p[1] = UInt8((tensor[plane + i] * 255).rounded())      // G
                p[2] = UInt8((tensor[i] * 255).rounded())              // R
                p[3] = 255
            }
        }
        return buffer
    }
}
