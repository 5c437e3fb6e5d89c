"""An export is timed, scored or pushed to a phone only as its manifest vouches for it.

`verified_export(folder, fix)` reads `folder/manifest.json` and checks every artifact it lists (and OpenVINO's .bin
beside the .xml) against the sha256 recorded there. Every benchmark subcommand that loads artifacts calls
it first: an edited, truncated or deleted file, or a manifest that is not one, stops the command with one line
naming the file and `fix`, instead of a traceback or a published number for a file nobody exported."""

from __future__ import annotations

import json
from pathlib import Path


class ArtifactError(ValueError):
    """A cached or given export that is not what its manifest says: one line, exit 2."""


def verified_export(folder: Path, fix: str, manifest: dict | None = None) -> dict:
    """The manifest of the export in `folder` (or `manifest`, when the caller holds it already), after checking
    that each file it lists is on disk with the recorded sha256; else ArtifactError ending with `fix`."""
    if manifest is None:
        manifest = read_manifest(folder / "manifest.json", fix)
    for art in manifest["artifacts"]:
        for entry in [art, *(art.get("extra_files") or [])]:
            _check_file(folder, entry, fix)
    return manifest


def read_manifest(path: Path, fix: str) -> dict:
    """A manifest with an artifact list whose entries name a file and its sha256."""
    if not path.is_file():
        raise ArtifactError(f"{path} is missing; the export there is incomplete: {fix}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({type(e).__name__}: truncated or edited): {fix}") from None
    artifacts = manifest.get("artifacts") if isinstance(manifest, dict) else None
    if not isinstance(artifacts, list) or not all(_well_formed(a) for a in artifacts):
        raise ArtifactError(f"{path} is not an export manifest (no artifact list with file and sha256): {fix}")
    return manifest


def _well_formed(art) -> bool:
    entries = [art, *(art.get("extra_files") or [])] if isinstance(art, dict) else [art]
    return all(isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("sha256"), str)
               for e in entries)


def _check_file(folder: Path, entry: dict, fix: str) -> None:
    from export.manifest import sha256_of

    path = folder / entry["file"]
    if Path(entry["file"]).is_absolute() or ".." in Path(entry["file"]).parts:
        raise ArtifactError(f"{folder / 'manifest.json'} lists {entry['file']!r}, outside its folder: {fix}")
    if not path.exists():
        raise ArtifactError(f"{path} is listed in {folder / 'manifest.json'} but missing: {fix}")
    digest, _ = sha256_of(path)
    if digest != entry["sha256"]:
        raise ArtifactError(f"{path} does not match its manifest (sha256 {digest[:12]}..., recorded "
                            f"{entry['sha256'][:12]}...): it was changed after the export: {fix}")
