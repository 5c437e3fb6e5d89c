"""The torch modules each target exports, built once per variant and cached for the run."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge_crossformer import Normalized, Spelling, create_model, deployable, targets
from edge_crossformer.checkpoint import CheckpointError, learned_ranges_file
from quantize import AccuracyTarget, QuantOptions, calibration_list, quantize_pt2e
from quantize.sensitivity import keep_float_pattern, measure, search_keep_float, units
from quantize.weights import WeightSensitivity, search_keep_8bit, unit_of, unit_pattern

from .int8 import load_int8_data
from .parity import eight_bit, reference_logits, run_batched
from .request import ExportError, ExportRequest
from .sizes import calibration_arrays, dynamic_shapes, int8_images, resize_spec

SAMPLES = Path(__file__).parent / "samples"


@dataclass
class ModelSource:
    """Builds the faithful reference and the deployable rewrite from one request, each once."""

    request: ExportRequest
    _deployables: dict = field(default_factory=dict, repr=False)
    _search: object = field(default=None, repr=False)
    _int8_graphs: dict = field(default_factory=dict, repr=False)
    _weight_searches: dict = field(default_factory=dict, repr=False)

    def _create(self, **kw) -> nn.Module:
        req = self.request
        if req.task == "features":
            kw = {"features_only": True, "out_indices": req.out_indices, "dynamic_size": req.dynamic_size,
                  "img_size": tuple(req.img_hw), **kw}
        else:
            kw.update(img_size=req.img_size, num_classes=req.num_classes, reset_head=req.reset_head,
                      dynamic_size=req.dynamic_size)
        try:
            return create_model(req.model, checkpoint=req.checkpoint, **kw)
        except (CheckpointError, ValueError) as e:
            raise ExportError(str(e)) from e

    def deployable_at(self, spelling: Spelling, hw: tuple[int, int]) -> nn.Module:
        """A backbone's deployable at one of --sizes (one ExecuTorch method / Core ML function each)."""
        key = (spelling, tuple(hw))
        if key not in self._deployables:
            self._deployables[key] = deployable(self._create(spelling=spelling, img_size=tuple(hw)))
        return self._deployables[key]

    @functools.cached_property
    def reference(self) -> nn.Module:
        """The faithful model with normalization in front: the oracle for parity."""
        return Normalized(self._create()).eval()

    @property
    def head_reset(self) -> bool:
        """--reset-head replaced the checkpoint's head (with one seeded head, the same in every model built)."""
        return bool(getattr(self.reference.model, "head_reset", False))

    def deployable(self, spelling: Spelling = Spelling()) -> nn.Module:
        """What gets exported: the rewrite in a target's spelling (or, on request, the faithful model), position MLP
        stripped, normalization inside; built once per spelling."""
        if self.request.reference_model:
            return self.reference
        if spelling not in self._deployables:
            self._deployables[spelling] = deployable(self._create(spelling=spelling))
        return self._deployables[spelling]

    @functools.cached_property
    def qat_ranges(self) -> Path | None:
        """INT8 ranges learned by an XNNPACK-scheme QAT run, when the checkpoint has them beside it."""
        return None if self.request.reference_model else learned_ranges_file(self.request.checkpoint)

    @functools.cached_property
    def int8_data(self):
        """Calibration and held-out parity images for INT8 (loaded once)."""
        req = self.request
        data = load_int8_data(req, resize_spec(req))
        if req.task == "features":  # resized (not cropped) to its H x W, as detectors feed them
            data.parity = int8_images(data.parity, req.img_hw)
        return data

    def quant_options(self) -> QuantOptions:
        req = self.request
        # The benchmarks' upstream baseline keeps NNCF's default (overflow fix on the first layer only).
        fix = "first_layer" if req.plain_int8 else ("none" if req.full_range_int8_weights else "all")
        # plain_int8 (the benchmarks' upstream baseline) takes NNCF's own recipe: smooth_quant_alpha None.
        alpha = None if req.plain_int8 else req.smooth_quant_alpha
        return QuantOptions(subset_size=req.calib_size, smooth_quant_alpha=alpha,
                            keep_float=tuple(req.keep_float), overflow_fix=fix)

    @functools.cached_property
    def search_images(self) -> np.ndarray:
        """The --max-accuracy-drop images as the artifacts see them (8-bit pixels, like every parity input)."""
        return eight_bit(self.int8_data.search.numpy())

    @functools.cached_property
    def search_labelled(self) -> bool:
        """Whether every search image has a label (top-1 drop) or not (agreement with FP32)."""
        return bool((self.int8_data.search_labels >= 0).all())

    @functools.cached_property
    def search_labels(self) -> np.ndarray:
        """What --max-accuracy-drop scores against on the search images: their labels, or where any is missing
        the faithful FP32 model's top-1 (the criterion is then agreement with FP32)."""
        return self.int8_data.search_labels.numpy() if self.search_labelled else self.search_fp32.argmax(1)

    @functools.cached_property
    def search_fp32(self) -> np.ndarray:
        return reference_logits(self.reference, self.search_images)[0]

    def search_drop(self, runner) -> float:
        """Top-1 points an artifact loses against the FP32 reference on the search images."""
        labels = self.search_labels
        fp32 = float((self.search_fp32.argmax(1) == labels).mean() * 100)
        return fp32 - float((run_batched(runner, self.search_images).argmax(1) == labels).mean() * 100)

    def accuracy_target(self):
        """--max-accuracy-drop for NNCF's accuracy control (OpenVINO, ONNX), or None."""
        if self.request.max_accuracy_drop is None:
            return None
        return AccuracyTarget(calibration_list(torch.from_numpy(self.search_images)), self.search_labels,
                              self.request.max_accuracy_drop)

    @functools.cached_property
    def _sensitivity(self):
        return measure(self.deployable(targets.spelling_for_scheme("xnnpack")), self.int8_data.calibration,
                       torch.from_numpy(self.search_images), self.search_labels if self.search_labelled else None,
                       self.quant_options())

    @property
    def keep_float_search(self):
        """(SearchResult, layer count) of --max-accuracy-drop for XNNPACK's scheme (ExecuTorch, Core ML W8A8):
        rank the layers by what keeping each float buys on the search images, keep the most sensitive float until
        the simulated drop holds. Computed once, on the graph ExecuTorch quantizes (Core ML's differs only in
        keeping LayerNorm whole); `refine_keep_float` continues it."""
        if self._search is None:
            self._search = search_keep_float(self._sensitivity, self.request.max_accuracy_drop)
        return self._search, len(units(self._sensitivity.graph))

    def refine_keep_float(self, simulated_target_pp: float) -> None:
        """Keep more layers float, until the simulation reaches a stricter target (a runtime measured more)."""
        found, _ = self.keep_float_search
        self._search = search_keep_float(self._sensitivity, simulated_target_pp, after=found)

    def pt2e_quant_options(self):
        """quant_options plus, with --max-accuracy-drop, the layers the search keeps float."""
        opts = self.quant_options()
        if self.request.max_accuracy_drop is None:
            return opts
        found, _ = self.keep_float_search
        return replace(opts, keep_float=opts.keep_float + tuple(keep_float_pattern(u) for u in found.kept_float))

    def pt2e_int8(self, example: torch.Tensor, spelling: Spelling) -> torch.fx.GraphModule:
        """The NNCF-calibrated XNNPACK-scheme INT8 graph, calibrated once per spelling and set of options.
        ExecuTorch takes LayerNorm decomposed (XNNPACK has no LayerNorm); Core ML W8A8 keeps it whole, on
        purpose: decomposed, its variance is a square computed in FP16, which overflows (65504) once activations
        pass about 256, where Core ML's own layer_norm stays exact."""
        opts = self.pt2e_quant_options()
        key = (spelling, repr(opts))
        if key not in self._int8_graphs:
            self._int8_graphs[key] = quantize_pt2e(self.deployable(spelling), example, self.calibration(), opts)
        return self._int8_graphs[key]

    def accuracy_control_info(self, method: str, **extra) -> dict:
        """What the manifest records of --max-accuracy-drop (the pipeline adds the drop measured on the artifact)."""
        criterion = "top-1 drop vs FP32 (labels)" if self.search_labelled else "agreement with FP32 (no labels)"
        return {"max_drop_pp": self.request.max_accuracy_drop, "method": method, "criterion": criterion,
                "images": self.int8_data.search_source, **extra}

    def weight_plan(self, plan):
        """A compressed precision's plan (export.compression.WeightPlan), with --max-accuracy-drop plus the units its
        search keeps at 8 bits."""
        if plan is None or self.request.max_accuracy_drop is None:
            return plan
        found, _, _ = self.weight_search(plan)
        return replace(plan, keep_8bit=plan.keep_8bit + tuple(unit_pattern(u) for u in found.kept_8bit))

    def weight_search(self, plan):
        """(KeepSearch, units, units the scheme keeps at 8 bits by default) of --max-accuracy-drop for compressed
        weights: the units ranked by what the scheme's bits cost each (simulated in PyTorch on the search images),
        the most harmful kept at 8 bits until the simulated drop holds. Once per scheme and group size."""
        key = (plan.scheme.name, plan.group_size)
        if key not in self._weight_searches:
            labels = self.search_labels if self.search_labelled else None
            sens = WeightSensitivity(deployable(self._create()), plan.scheme, plan.group_size,
                                     torch.from_numpy(self.search_images), labels, batch=100)
            default = {unit_of(name) for name in sens.weights if plan.kept(name)}
            found = search_keep_8bit(sens, default, self.request.max_accuracy_drop)
            self._weight_searches[key] = (found, sens.units, default)
        return self._weight_searches[key]

    def weight_control_info(self, plan) -> dict:
        """What the manifest records of --max-accuracy-drop for compressed weights."""
        found, units_, default = self.weight_search(plan)
        return self.accuracy_control_info(
            f"units {plan.scheme.bits} bits hurt most kept at 8 bits (weights simulated in PyTorch, ranked by KL)",
            kept_8bit=found.kept_8bit, units=len(units_), kept_8bit_by_default=sorted(default),
            simulated_drop_pp=found.drop_pp, default_simulated_drop_pp=found.default_drop_pp,
            met_in_simulation=found.met, tried=found.tried)

    def calibration(self):
        """The calibration images as batch-1 arrays, made once (several targets and the ONNX fixes read them)."""
        return self._calibration

    @functools.cached_property
    def _calibration(self):
        if self.request.task == "features":
            return calibration_arrays(self.int8_data.calibration, self.request)
        return calibration_list(self.int8_data.calibration)

    def example(self, batch: int = 1) -> torch.Tensor:
        return torch.rand(batch, 3, *self.request.img_hw, generator=torch.Generator().manual_seed(0))

    def dynamic_shapes(self):
        """torch.export's symbolic H and W for a backbone that serves a range of sizes (else None)."""
        return dynamic_shapes(self.request)

    def exported_program(self, spelling: Spelling) -> torch.export.ExportedProgram:
        with torch.no_grad():
            return torch.export.export(self.deployable(spelling), (self.example(),),
                                       dynamic_shapes=self.dynamic_shapes())
