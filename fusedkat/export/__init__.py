"""Deploying a KAT: ``torch.export`` programs, ONNX models (onnxruntime) and AOTInductor packages.

Usage::

    import fusedkat, timm
    model = timm.create_model("kat_tiny_patch16_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file="kat_tiny.pth")).eval()
    program = fusedkat.export.export_program(model)              # dynamic batch, plain ATen ops
    report = fusedkat.export.export_model(model, "kat_tiny.onnx", format="onnx")
    print(report.max_rel_diff)                                   # checked against eager before writing

or from the shell: ``fusedkat export kat_tiny.pth kat_tiny.onnx --model kat_tiny_patch16_224
--format onnx``.  See :mod:`fusedkat.export.program` (tracing, decomposition, checks) and
:mod:`fusedkat.export.formats` (pt2 / onnx / aoti).  ``torch.jit.script`` of fusedkat layers is not
supported (it raises, pointing here).
"""
from __future__ import annotations

from .formats import (FORMATS, ExportReport, compile_aoti, default_tolerance, export_model, load_aoti, load_pt2,
                      onnx_session, run_onnx, to_onnx, to_pt2)
from .program import (ExportError, check_exportable, decompositions, example_input, export_program, fusedkat_ops_in,
                      max_differences, run_program, unwrap)

__all__ = ["FORMATS", "ExportError", "ExportReport", "check_exportable", "compile_aoti", "decompositions",
           "default_tolerance", "example_input", "export_model", "export_program", "fusedkat_ops_in", "load_aoti",
           "load_pt2", "max_differences", "onnx_session", "run_onnx", "run_program", "to_onnx", "to_pt2", "unwrap"]
