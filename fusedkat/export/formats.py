"""The three deployable forms of an exported KAT, each verified against eager before it is written.

* ``pt2``  -- ``torch.export.save`` of the ExportedProgram (load with ``torch.export.load``; a
  program that keeps the fusedkat ops needs ``import fusedkat`` before loading);
* ``onnx`` -- ``torch.onnx.export(program, dynamo=True)``: the rational becomes standard ONNX ops
  (``Mul``/``Add`` in Horner order, ``Abs``, ``Reciprocal``), checked with ``onnx.checker`` and run
  in ``onnxruntime``;
* ``aoti`` -- an AOTInductor package (``torch._inductor.aoti_compile_and_package``): compiled C++
  (CPU) or C++/Triton (CUDA) kernels plus the weights, loaded with
  ``torch._inductor.aoti_load_package`` and run without the Python model code.

:func:`export_model` is the one entry point: it checks the output path first, exports, builds the
artifact in memory (or a temporary folder), loads it back, compares its logits with the eager
model's on fresh random images (batch 1 and an untraced batch), and only then writes the file
atomically (:mod:`fusedkat.files`).  ``onnx``/``onnxscript``/``onnxruntime`` are imported only here,
only for ``onnx`` (``pip install fusedkat[deploy]``).
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ..files import PathLike, atomic_save, atomic_write_bytes, check_writable
from .program import (ExportError, batches_to_check, example_input, export_program, fusedkat_ops_in,
                      max_differences, run_program, unwrap)

__all__ = ["FORMATS", "ExportReport", "export_model", "to_pt2", "load_pt2", "to_onnx", "onnx_session",
           "run_onnx", "compile_aoti", "load_aoti", "default_tolerance"]

FORMATS: tuple[str, ...] = ("pt2", "onnx", "aoti")


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and how closely it matches the eager model."""

    format: str
    path: str
    bytes: int
    dynamic_batch: bool
    batches_checked: list[int]
    max_abs_diff: float          # max |logit(export) - logit(eager)| over the checked batches
    max_rel_diff: float          # the same divided by max |logit(eager)|
    tolerance: float
    fusedkat_ops: list[str] = field(default_factory=list)   # kept custom ops (empty: plain ATen/ONNX)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def default_tolerance(dtype: torch.dtype) -> float:
    """Relative logit tolerance of the check: 1e-4 for float32/64, 2e-2 for half types."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


# ---------------------------------------------------------------------------------------------
# pt2
# ---------------------------------------------------------------------------------------------
def to_pt2(program: "torch.export.ExportedProgram") -> bytes:
    """The ``torch.export.save`` archive of ``program``, as bytes."""
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def load_pt2(data: bytes) -> "torch.export.ExportedProgram":
    """``torch.export.load`` from bytes."""
    return torch.export.load(io.BytesIO(data))


# ---------------------------------------------------------------------------------------------
# onnx
# ---------------------------------------------------------------------------------------------
def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(f"the onnx format needs {module!r} ({e}); pip install 'fusedkat[deploy]' "
                          f"(onnx, onnxscript, onnxruntime)") from None


def _name_batch_dim(proto: Any, name: str = "batch") -> None:
    """Call the symbolic batch dimension ``name`` (torch names it after its symbol, e.g. ``s77``)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    sym = dims[0].dim_param if len(dims) else ""
    if not sym:
        return
    for vi in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param == sym:
                d.dim_param = name


def to_onnx(program: "torch.export.ExportedProgram", example: torch.Tensor) -> bytes:
    """The ONNX model (bytes) of a decomposed ``program``, checked with ``onnx.checker``."""
    kept = fusedkat_ops_in(program)
    if kept:
        raise ExportError(f"ONNX has no {', '.join(kept)} op: export with the "
                          f"fusedkat ops decomposed (keep_custom_ops=False / no --keep-custom-ops)")
    onnx = _need("onnx")
    _need("onnxscript")
    import contextlib

    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        onnx_program = torch.onnx.export(program, (example,), dynamo=True, verbose=False)
    proto = onnx_program.model_proto
    _name_batch_dim(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise ExportError(f"the exported ONNX model fails onnx.checker: {e}") from e
    return proto.SerializeToString()


def onnx_session(data: bytes) -> Any:
    """An ``onnxruntime.InferenceSession`` (CPU) for the model bytes ``data``."""
    ort = _need("onnxruntime")
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, x: torch.Tensor) -> torch.Tensor:
    """Run ``session`` on ``x`` (moved to CPU numpy); returns the first output as a CPU tensor."""
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


# ---------------------------------------------------------------------------------------------
# aoti
# ---------------------------------------------------------------------------------------------
def compile_aoti(program: "torch.export.ExportedProgram", package_path: str) -> str:
    """Compile ``program`` into an AOTInductor package at ``package_path`` (a ``.pt2`` file name)."""
    kept = fusedkat_ops_in(program)
    if kept:
        raise ExportError(f"an AOTInductor package runs without Python, and {', '.join(kept)} "
                          f"is a Python custom op: export with the fusedkat ops decomposed (no --keep-custom-ops)")
    from torch._inductor import aoti_compile_and_package

    return aoti_compile_and_package(program, package_path=package_path)


def load_aoti(path: str) -> Any:
    """``torch._inductor.aoti_load_package(path)``: a callable ``runner(x) -> logits``."""
    from torch._inductor import aoti_load_package

    return aoti_load_package(path)


# ---------------------------------------------------------------------------------------------
# export_model
# ---------------------------------------------------------------------------------------------
def _reference_inputs(model: nn.Module, batches, img_size: Optional[int], dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(20261201)
    return [example_input(model, b, img_size, generator=gen).to(dtype) for b in batches]


def export_model(model: nn.Module, out: PathLike, *, format: str = "pt2", keep_custom_ops: bool = False,
                 batch: Optional[int] = None, img_size: Optional[int] = None, force: bool = False,
                 tolerance: Optional[float] = None) -> ExportReport:
    """Export ``model`` to ``out`` in ``format`` (``pt2``, ``onnx`` or ``aoti``), verified against eager.

    Args:
        model: a model holding fusedkat layers (any ``nn.Module`` taking ``[B, C, H, W]`` images).
        out: the file to write; checked before any work, never overwritten unless ``force``.
        keep_custom_ops: keep ``fusedkat::*`` ops (``pt2`` only; ``onnx``/``aoti`` refuse them).
        batch: export a fixed batch of this size; default (None): a dynamic batch dimension.
        img_size: image side the model is exported for (default: the model's own).
        tolerance: the largest accepted ``max|logit(export) - logit(eager)| / max|logit(eager)|``
            (default :func:`default_tolerance` of the model's dtype).

    Returns:
        An :class:`ExportReport`.  Raises :class:`ExportError` (and writes nothing) if the
        exported logits differ by more than ``tolerance``, or if the model cannot be exported.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; expected one of {FORMATS}")
    if keep_custom_ops and format != "pt2":
        raise ExportError(f"--keep-custom-ops applies to the pt2 format only: {format} cannot call fusedkat's "
                          f"Python custom ops")
    if batch is not None and batch < 1:
        raise ExportError(f"batch must be >= 1, got {batch}")
    dest = check_writable(out, force=force, what="output file")
    start = time.perf_counter()
    model = unwrap(model)
    p = next(iter(model.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    tol = default_tolerance(dtype) if tolerance is None else float(tolerance)
    dynamic = batch is None
    example = example_input(model, 2 if dynamic else batch, img_size).to(dtype)
    program = export_program(model, example, keep_custom_ops=keep_custom_ops, dynamic_batch=dynamic)

    checks = list(batches_to_check(dynamic, batch or 0))
    inputs = _reference_inputs(model, checks, img_size, dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = [model(x) for x in inputs]
    finally:
        model.train(was_training)

    def verify(run) -> tuple[float, float]:
        worst = (0.0, 0.0)
        for x, ref in zip(inputs, expected):
            got = run(x)
            if tuple(got.shape) != tuple(ref.shape):
                raise ExportError(f"the {format} export returns shape {tuple(got.shape)} for batch {x.shape[0]}, "
                                  f"eager {tuple(ref.shape)}")
            worst = max(worst, max_differences(ref, got), key=lambda d: d[1])
        if not worst[1] <= tol:  # also catches NaN
            raise ExportError(f"the {format} export differs from the eager model: max |logit diff| {worst[0]:.3g} "
                              f"= {worst[1]:.3g} of the largest logit > tolerance {tol:g}; nothing written")
        return worst

    if format == "pt2":
        data = to_pt2(program)
        loaded = load_pt2(data)
        diffs = verify(lambda x: run_program(loaded, x))
        atomic_write_bytes(dest, data)
        size = len(data)
    elif format == "onnx":
        data = to_onnx(program, example)
        session = onnx_session(data)
        diffs = verify(lambda x: run_onnx(session, x))
        atomic_write_bytes(dest, data)
        size = len(data)
    else:
        with tempfile.TemporaryDirectory(prefix="fusedkat-aoti-") as tmp:
            pkg = os.path.join(tmp, "model.pt2")
            compile_aoti(program, pkg)
            runner = load_aoti(pkg)
            diffs = verify(lambda x: runner(x))
            size = os.path.getsize(pkg)
            with open(pkg, "rb") as src:
                atomic_save(dest, lambda fh: shutil.copyfileobj(src, fh))
    return ExportReport(format=format, path=str(dest), bytes=size, dynamic_batch=dynamic, batches_checked=checks,
                        max_abs_diff=diffs[0], max_rel_diff=diffs[1], tolerance=tol,
                        fusedkat_ops=fusedkat_ops_in(program), seconds=time.perf_counter() - start)
