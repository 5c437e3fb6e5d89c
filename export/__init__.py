"""`python -m export`: Core ML, ExecuTorch, OpenVINO and ONNX artifacts with a manifest and built-in parity."""

import logging
import os
import warnings

# Converters print their own progress bars and INFO logs; this tool shows one progress display and a summary.
os.environ.setdefault("TQDM_DISABLE", "1")
for _name in ("executorch", "coremltools", "torch.onnx", "torch._export", "nncf", "torchao"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module=r"(coremltools|executorch|torchao|torch\.onnx|onnxscript)(\..*)?")

from .request import ExportError, ExportRequest, validate
from .pipeline import run_export

__all__ = ["ExportError", "ExportRequest", "run_export", "validate"]
