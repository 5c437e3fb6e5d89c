"""`python -m export`: Core ML, ExecuTorch, OpenVINO and ONNX artifacts with a manifest and built-in parity.

Importing it changes no global state (environment, loggers, warning filters): `run_export` quiets the converters
while it runs and restores the caller's settings."""

from .flags import with_options
from .pipeline import run_export
from .request import ExportError, ExportRequest
from .validate import validate

__all__ = ["ExportError", "ExportRequest", "run_export", "validate", "with_options"]
