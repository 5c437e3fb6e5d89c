"""The apps' golden contract (apps/golden/golden.json): current, reproducible, matched by the exported artifacts.

Nothing here can build the iOS or Android apps; the Python side checks the contract they test against, and a few
things in the app projects that would silently break it (runtime version, schema keys, file names).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import golden as gold
from edge_crossformer.data import load_image
from conftest import load_manifest, run_cli

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "apps" / "golden" / "golden.json"
APPS = ROOT / "apps"
REGENERATE = "regenerate it with `python -m benchmarks golden` and commit apps/golden/golden.json"


@pytest.fixture(scope="module")
def golden() -> dict:
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing; {REGENERATE}")
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------- the file itself
def test_regenerating_gives_identical_file(tmp_path):
    out = tmp_path / "golden.json"
    assert gold.run(["--output", str(out)]) == 0
    assert out.read_bytes() == GOLDEN.read_bytes(), f"committed golden file is stale; {REGENERATE}"
    for image in json.loads(out.read_text())["images"]:
        copy = image["pixels_file"]
        assert (tmp_path / copy).read_bytes() == (GOLDEN.parent / copy).read_bytes(), \
            f"committed decoded sample {copy} is stale; {REGENERATE}"
    assert gold.run(["--check", "--output", str(out)]) == 0
    (tmp_path / image["pixels_file"]).write_bytes(b"P6\n1 1\n255\n\0\0\0")
    assert gold.run(["--check", "--output", str(out)]) == 1
    assert gold.run(["--output", str(out)]) == 0
    out.write_text(out.read_text().replace('"Ankle boot"', '"Boot"', 1))
    assert gold.run(["--check", "--output", str(out)]) == 1


def test_decoded_samples_are_the_exporters_pixels(golden):
    """The PPM copies the apps' core tests read are exactly what load_image gives for the PNGs (no decoder needed)."""
    for image in golden["images"]:
        data = (GOLDEN.parent / image["pixels_file"]).read_bytes()
        rgb = load_image(gold.DEFAULT_SAMPLES / image["file"])
        header = b"P6\n%d %d\n255\n" % (rgb.shape[1], rgb.shape[0])
        assert data[:len(header)] == header and data[len(header):] == rgb.tobytes(), image["pixels_file"]


def test_bad_samples_folder_is_a_clear_error(tmp_path, capsys):
    assert gold.run(["--samples", str(tmp_path), "--output", str(tmp_path / "g.json")]) == 2
    assert "no sample images" in capsys.readouterr().err
    assert not (tmp_path / "g.json").exists()


def test_samples_are_labelled_and_classified_correctly(golden):
    """Apps check top-1 against the golden top-1; the samples are chosen so that it is also the true label."""
    assert len(golden["images"]) >= 6
    for image in golden["images"]:
        assert image["label_index"] is not None, f"{image['file']}: file name carries no known label"
        assert image["top5"][0]["index"] == image["label_index"], image["file"]
        probs = [t["probability"] for t in image["top5"]]
        assert probs == sorted(probs, reverse=True)
        logits = np.asarray(image["logits"])
        softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(softmax[[t["index"] for t in image["top5"]]], probs, atol=2e-5)


def test_statistics_cases_follow_the_schema_definitions(golden):
    """median, nearest-rank p90 and trimmed mean as numpy / scipy define them (docs/results_schema.md)."""
    from scipy.stats import trim_mean

    assert golden["statistics"]["cases"], "golden.json has no statistics cases"
    for case in golden["statistics"]["cases"]:
        x, want = np.asarray(case["samples_ms"]), case["expected"]
        assert want["median"] == pytest.approx(np.median(x), abs=1e-9)
        assert want["p90"] == pytest.approx(np.percentile(x, 90, method="inverted_cdf"), abs=1e-9)
        assert want["trimmed_mean"] == pytest.approx(trim_mean(x, case["trim"]), abs=1e-9)
        assert (want["min"], want["max"], want["n"]) == (x.min(), x.max(), len(x))


# ---------------------------------------------------------------------------------------------- preprocessing
def _triangle_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] bilinear weights with half-pixel centers, the kernel widened by the scale when shrinking.

    This is the algorithm the apps implement (Preprocessing.kt, Preprocessing.swift), written independently of
    torch, so this test proves that what the apps do is what the manifest's resize means.
    """
    scale = in_size / out_size
    support = max(scale, 1.0)
    w = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo, hi = max(int(math.floor(center - support + 0.5)), 0), min(int(math.floor(center + support + 0.5)), in_size)
        taps = np.clip(1.0 - np.abs((np.arange(lo, hi) + 0.5 - center) / support), 0.0, None)
        w[i, lo:hi] = taps / taps.sum()
    return w


def _app_preprocess(rgb: np.ndarray, size: int, crop: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(crop, round(h * scale)), max(crop, round(w * scale))  # round(): half to even, as the apps
    x = rgb.astype(np.float64).transpose(2, 0, 1) / 255.0
    x = np.einsum("oh,chw,pw->cop", _triangle_weights(h, nh), x, _triangle_weights(w, nw))
    top, left = (nh - crop) // 2, (nw - crop) // 2
    return np.clip(x[:, top:top + crop, left:left + crop], 0.0, 1.0)


def _check_input(record: dict, x: np.ndarray, golden: dict, what: str) -> None:
    tol = golden["tolerances"]
    flat = x.reshape(3, -1)
    assert record["shape"] == [1, *x.shape], what
    for key, got in (("mean", flat.mean(1)), ("std", flat.std(1)), ("min", flat.min(1)), ("max", flat.max(1))):
        np.testing.assert_allclose(got, record[key], atol=tol["input_stats_abs"], err_msg=f"{what}: {key}")
    for (py, px), want in zip(golden["probes"], record["pixels"]):
        np.testing.assert_allclose(x[:, py, px], want, atol=tol["input_abs"], err_msg=f"{what}: pixel {py},{px}")


def test_preprocessed_inputs_match_images(golden):
    from edge_crossformer.data import load_image, preprocess

    resize = golden["input"]["resize"]
    assert golden["resize"] == resize
    for image in golden["images"]:
        rgb = load_image(gold.DEFAULT_SAMPLES / image["file"])
        assert [image["source"]["height"], image["source"]["width"]] == list(rgb.shape[:2])
        ours = preprocess(torch.from_numpy(rgb)[None], resize)[0].numpy()
        _check_input(image["input"], ours, golden, f"{image['file']} (edge_crossformer.data)")
        _check_input(image["input"], _app_preprocess(rgb, resize["size"], resize["crop"]), golden,
                     f"{image['file']} (the apps' algorithm)")


def test_resize_cases_pin_the_apps_algorithm(golden):
    resize = golden["input"]["resize"]
    cases = golden["resize_cases"]["cases"]
    assert {c["name"].split("-")[0] for c in cases} == {"downscale", "upscale"}
    for case in cases:
        rgb = gold.synthetic_image(case["width"], case["height"])
        assert rgb.shape == (case["height"], case["width"], 3)
        x = _app_preprocess(rgb, resize["size"], resize["crop"])
        _check_input(case["input"], x, golden, case["name"])


# ---------------------------------------------------------------------------------------------- exported artifacts
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden_art")
    assert run_cli("--target", "onnx,executorch", "--output", out, "--overwrite", "--parity-samples", "6") == 0
    return out, load_manifest(out)


@pytest.mark.parametrize("target,delegate", [("onnx", None), ("executorch", "xnnpack")])
def test_fp32_artifacts_reproduce_golden(golden, artifacts, target, delegate):
    from edge_crossformer.data import load_image, preprocess

    out, manifest = artifacts
    assert manifest["input"] == golden["input"], "the manifest's input contract differs from the golden file's"
    assert manifest["labels"] == golden["labels"]
    art = next(a for a in manifest["artifacts"] if a["target"] == target and a["delegate"] == delegate)
    assert art["precision"] == "fp32"
    from edge_crossformer import targets

    runner = targets.get(target).load_runner(out / art["file"])
    tol = golden["tolerances"]
    for image in golden["images"]:
        x = preprocess(torch.from_numpy(load_image(gold.DEFAULT_SAMPLES / image["file"]))[None],
                       golden["input"]["resize"]).numpy().astype(np.float32)
        logits = np.asarray(runner(x), dtype=np.float64)[0]
        np.testing.assert_allclose(logits, image["logits"], atol=tol["logits_abs"]["fp32"],
                                   err_msg=f"{art['file']} on {image['file']}")
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top5 = [int(i) for i in np.argsort(-logits, kind="stable")[:5]]
        assert top5 == [t["index"] for t in image["top5"]], f"{art['file']} on {image['file']}: top-5 order"
        np.testing.assert_allclose(probs[top5], [t["probability"] for t in image["top5"]],
                                   atol=tol["probability_abs"]["fp32"])


# ---------------------------------------------------------------------------------------------- the app projects
def test_android_pins_the_exporters_executorch_version():
    gradle = (APPS / "android" / "app" / "build.gradle.kts").read_text()
    variables = dict(re.findall(r'val (\w+) = "([^"]+)"', gradle))
    pinned = [variables.get(v[1:], v) if v.startswith("$") else v
              for v in re.findall(r'"org\.pytorch:executorch-android:([^"]+)"', gradle)]
    assert pinned, "app/build.gradle.kts does not depend on org.pytorch:executorch-android"
    installed = importlib.metadata.version("executorch")
    assert pinned == [installed], (f"the Android app pins executorch-android {pinned} but .pte files are exported "
                                   f"with executorch {installed}; the runtime must match the exporter")


def test_ios_project_bundles_manifest_and_uses_the_swift_package():
    project = (APPS / "ios" / "project.yml").read_text()
    package = APPS / "ios" / "CrossFormerKit" / "Package.swift"
    assert package.exists()
    assert "CrossFormerKit" in project and "manifest.json" in project
    kit = "\n".join(p.read_text() for p in (APPS / "ios" / "CrossFormerKit" / "Sources").rglob("*.swift"))
    assert "manifest.json" in kit and "VNCoreMLRequest" in kit


@pytest.mark.parametrize("writer,source", [
    ("ios/CrossFormerKit/Sources/CrossFormerCore/BenchmarkReport.swift", "ios-app"),
    ("android/core/src/main/kotlin/org/edgecrossformer/demo/BenchmarkReport.kt", "android-app"),
])
def test_benchmark_writers_emit_the_results_schema(writer, source):
    text = (APPS / writer).read_text()
    schema_doc = (ROOT / "docs" / "results_schema.md").read_text()
    version = re.search(r'"schema_version":\s*(\d+)', schema_doc).group(1)
    for key in ("schema", "schema_version", "created", "source", "machine", "versions", "settings", "model",
                "results", "latency_ms", "median", "p90", "trimmed_mean", "load_ms"):
        assert f'"{key}"' in text, f"{writer} never writes '{key}' (docs/results_schema.md)"
    assert '"edge-crossformer/results"' in text and f'"{source}"' in text
    assert re.search(rf'"schema_version"\D{{1,12}}{version}\b', text), f"{writer}: schema_version is not {version}"


def test_apps_read_the_golden_file():
    android_tests = "\n".join(p.read_text() for p in (APPS / "android" / "core" / "src" / "test").rglob("*.kt"))
    ios_tests = "\n".join(p.read_text() for p in (APPS / "ios" / "CrossFormerKit" / "Tests").rglob("*.swift"))
    for name, text in (("android", android_tests), ("ios", ios_tests)):
        assert "golden.json" in text, f"the {name} app's tests do not read golden.json"
        for key in ("probes", "pixels", "resize_cases", "tolerances"):
            assert f'"{key}"' in text, f"the {name} app's tests ignore golden '{key}'"
