"""INT8 schemes: how an artifact's weights and activations get their INT8 parameters, one object per scheme.

A target asks its scheme (`ctx.int8`, from the registry's `int8_scheme`; None for FP32 / FP16) and does not decide
how to quantize; what it adds is its format's own part (ONNX Runtime's QDQ fixes, the x86 saturation check).

- "xnnpack" (`Pt2eInt8`): XNNPACK's quantizer on the torch.export graph (ExecuTorch; Core ML converts the same
  quantize / dequantize graph into a W8A8 ML program). Its activation ranges come from one of three places, chosen
  by the request and what the target supports (edge_crossformer.targets): NNCF's calibration (static), the run time (dynamic:
  per row), or a QAT run (ranges learned beside the checkpoint).
- "nncf" (`NncfInt8`): `nncf.quantize` on the runtime's own graph (OpenVINO ov.Model, ONNX ModelProto), with NNCF's
  accuracy control for --max-accuracy-drop.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from quantize import quantize_pt2e_dynamic
from quantize.qat import QATError, convert_with_ranges

from .request import ExportError


class Pt2eInt8:
    name = "xnnpack"

    def ranges(self, ctx) -> str:
        """Where the activation ranges come from (the manifest's `int8_ranges`)."""
        if ctx.request.int8_activations == "dynamic":
            return "per row at run time"
        return "learned in QAT" if self._learned(ctx) is not None else "calibrated"

    def graph(self, ctx, example: torch.Tensor) -> torch.fx.GraphModule:
        """The INT8 quantize / dequantize graph of the target's spelling."""
        learned = self._learned(ctx)
        if ctx.request.int8_activations == "dynamic":
            ctx.step("quantizing for XNNPACK (linears' inputs quantized per row at run time)")
            return quantize_pt2e_dynamic(ctx.deployable(), example, ctx.source.quant_options())
        if learned is not None:
            ctx.step(f"quantizing for XNNPACK with the ranges learned in QAT ({learned.name})")
            try:
                return convert_with_ranges(ctx.deployable(), learned, example)
            except QATError as e:
                raise ExportError(str(e)) from e
        ctx.step("quantizing for XNNPACK (NNCF quantize_pt2e)")
        return ctx.source.pt2e_int8(example, ctx.target.spelling)

    def search_info(self, ctx, rounds: list[dict] | None = None) -> dict:
        """--max-accuracy-drop: the keep-float search's outcome for the manifest."""
        found, units = ctx.source.keep_float_search
        return ctx.source.accuracy_control_info(
            "keep the most sensitive layers float (python -m quantize sensitivity ranking)",
            kept_float=found.kept_float, layers=units, simulated_drop_pp=found.drop_pp,
            simulated_all_int8_drop_pp=found.all_int8_drop_pp, met_in_simulation=found.met,
            **({"rounds": rounds} if rounds else {}))

    @staticmethod
    def _learned(ctx):
        return ctx.source.qat_ranges if ctx.target.uses_learned_ranges else None


class NncfInt8:
    name = "nncf"

    def quantize(self, ctx, model, quantize: Callable, runtime: str):
        """`quantize` (quantize.quantize_openvino / quantize_onnx) with the request's calibration and options, and
        NNCF's accuracy control when --max-accuracy-drop asks for it."""
        accuracy = ctx.source.accuracy_target()
        ctx.step(f"quantizing {runtime} with NNCF's accuracy control (--max-accuracy-drop)" if accuracy is not None
                 else f"quantizing {runtime} (NNCF)")
        options = ctx.source.quant_options()
        kept = ctx.target.keep_float_on(ctx.request.cpu_level)
        if kept:
            ctx.step(f"--cpu {ctx.request.cpu_level}: keeping float what {ctx.target.title}'s INT8 kernels run slower "
                     f"than FP32 there ({', '.join(kept)})")
            options = dataclasses.replace(options, keep_float=options.keep_float + kept)
        return quantize(model, ctx.source.calibration(), options, accuracy=accuracy)


SCHEMES = {scheme.name: scheme for scheme in (Pt2eInt8(), NncfInt8())}
