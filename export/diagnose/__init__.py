"""`python -m export diagnose DIR`: where an artifact departs from the model it was exported from, layer by layer.

For each artifact of an export (or one, `--artifact FILE`) the artifact runs on its own runtime with intermediate
tensors exposed (taps.py, xnnpack.py), each tensor is tied to the module of the exported model that produced it
(points.py), and compared with that module's output in torch on the same inputs. INT8 artifacts are also compared
with the quantizer's own simulation, so quantization error (simulation vs float) and runtime / kernel error (runtime
vs simulation) show apart. docs/diagnose.md says what each runtime exposes and how long it takes.
"""

from .run import DiagnoseError, diagnose_artifact, main

__all__ = ["DiagnoseError", "diagnose_artifact", "main"]
