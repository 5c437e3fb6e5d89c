// The app imports CrossFormerKit only; the platform-free types (manifest, preprocessing, statistics, report) live
// in CrossFormerCore so that they build and are tested on Linux as well.
@_exported import CrossFormerCore
