"""``torch.export`` of a model holding fusedkat layers, with the fusedkat ops kept or decomposed.

:func:`export_program` traces any ``nn.Module`` whose forward takes one image batch ``[B, C, H, W]``
(KAT-T/S/B from :mod:`fusedkat.models`, :func:`fusedkat.models.vit_to_kat` results, any model built
from :mod:`fusedkat.nn` layers) with a dynamic batch dimension into an ``ExportedProgram``:

* ``keep_custom_ops=True``: the ``fusedkat::group_rational`` / ``fusedkat::rational_linear`` calls
  stay single custom ops (for runtimes that ``import fusedkat``, e.g. a GPU server that should run
  the fused kernels);
* ``keep_custom_ops=False`` (default): each one is replaced by the plain ATen ops of
  :mod:`fusedkat.ops.torch_impl` (Horner's rule with ``mul``/``add``, ``abs``, ``reciprocal``,
  ``linear``), the very functions inductor's CPU lowering (:mod:`fusedkat.ops.lowering`) inlines, so
  the math has one source (:mod:`fusedkat.ops.rational_math`).  The program then runs with nothing
  but torch, and every exporter that knows ATen (ONNX, AOTInductor, ExecuTorch...) can take it.

What cannot be exported raises :class:`ExportError`, one line naming the layer and the reason,
never a silently different model.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

__all__ = ["ExportError", "decompositions", "example_input", "check_exportable", "export_program",
           "fusedkat_ops_in", "unwrap"]


class ExportError(RuntimeError):
    """A model (or one of its layers) that cannot be exported as asked; the message says which and why."""


# ---------------------------------------------------------------------------------------------
# the decomposition table (single source: fusedkat.ops.torch_impl, built on rational_math)
# ---------------------------------------------------------------------------------------------
def _group_rational(x, numerator, denominator, form="A"):
    from ..ops import torch_impl

    return torch_impl.group_rational_forward(x, numerator, denominator, form)


def _rational_linear(x, numerator, denominator, weight, bias=None, form="A"):
    from ..ops import torch_impl

    return torch_impl.rational_linear_forward(x, numerator, denominator, weight, bias, form)


def _group_rational_backward(grad, x, numerator, denominator, form):
    from ..ops import torch_impl

    return torch_impl.group_rational_backward(grad, x, numerator, denominator, form)


def _rational_linear_backward(grad_out, x, numerator, denominator, weight, has_bias, form):
    from ..ops import torch_impl

    return torch_impl.rational_linear_backward(grad_out, x, numerator, denominator, weight, has_bias, form)


def decompositions() -> dict[Any, Callable[..., Any]]:
    """``{OpOverload: fn}``: each fusedkat op -> its plain-ATen implementation (any device).

    Unlike :func:`fusedkat.ops.lowering.decompositions` (inductor's, which keeps an op opaque where
    a fused GPU kernel runs), these always decompose: an exported artifact must not depend on the
    GPU it was exported on.
    """
    import fusedkat.ops  # noqa: F401  (registers torch.ops.fusedkat.*)

    ops = torch.ops.fusedkat
    return {
        ops.group_rational.default: _group_rational,
        ops.rational_linear.default: _rational_linear,
        ops.group_rational_backward.default: _group_rational_backward,
        ops.rational_linear_backward.default: _rational_linear_backward,
    }


def fusedkat_ops_in(program: "torch.export.ExportedProgram") -> list[str]:
    """Names of the ``fusedkat::*`` ops called by ``program``'s graph (sorted, unique)."""
    names = set()
    for node in program.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            name = str(node.target.name())  # "fusedkat::rational_linear" (name() exists on every torch >= 2.0)
            if name.startswith("fusedkat::"):
                names.add(name)
    return sorted(names)


# ---------------------------------------------------------------------------------------------
# inputs and checks
# ---------------------------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The eager module behind a ``torch.compile`` wrapper (same parameters, same function)."""
    while hasattr(model, "_orig_mod") and isinstance(getattr(model, "_orig_mod"), nn.Module):
        model = model._orig_mod
    return model


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def input_shape(model: nn.Module, img_size: Optional[int] = None) -> tuple[int, int, int]:
    """``(C, H, W)`` the model takes: from ``img_size`` if given, else timm's patch embedding / cfg."""
    pe = getattr(model, "patch_embed", None)
    chans = getattr(getattr(pe, "proj", None), "in_channels", None)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if chans is None:
        chans = int(cfg.get("input_size", (3,))[0])
    if img_size is not None:
        return int(chans), int(img_size), int(img_size)
    size = getattr(pe, "img_size", None)
    if size is None and "input_size" in cfg:
        size = tuple(cfg["input_size"][1:])
    if size is None:
        raise ExportError(f"cannot tell the image size {type(model).__name__} takes (no timm patch_embed.img_size "
                          f"or pretrained_cfg input_size): pass img_size= or an example input")
    h, w = _pair(size)
    return int(chans), h, w


def example_input(model: nn.Module, batch: int = 2, img_size: Optional[int] = None,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random images ``[batch, C, H, W]`` (float32 N(0, 1), on the model's device) for ``model``."""
    c, h, w = input_shape(model, img_size)
    p = next(iter(model.parameters()), None)
    x = torch.randn(batch, c, h, w, generator=generator)
    return x.to(p.device) if p is not None else x


def _rational_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    from ..nn import GroupRational

    for name, mod in model.named_modules():
        if isinstance(mod, GroupRational):
            yield name or type(model).__name__, mod


def check_exportable(model: nn.Module) -> None:
    """Raise :class:`ExportError` (naming the layer) for what would export wrongly or not at all.

    * weights on the meta device (a model built without loading its checkpoint);
    * a rational layer with non-finite coefficients (its exported output would be NaN everywhere);
    * a rational form the exporter does not know.
    """
    from ..ops.rational_math import FORMS

    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            layer = name.rsplit(".", 1)[0] if "." in name else name
            raise ExportError(f"layer {layer!r}: {name} is on the meta device (weights never loaded); "
                              f"load a checkpoint before exporting")
    for name, mod in _rational_layers(model):
        if mod.form not in FORMS:
            raise ExportError(f"layer {name!r} ({type(mod).__name__}): unknown rational form {mod.form!r}")
        for pname in ("weight_numerator", "weight_denominator"):
            p = getattr(mod, pname)
            if not torch.isfinite(p).all():
                raise ExportError(f"layer {name!r} ({type(mod).__name__}): {pname} has non-finite values")


@contextlib.contextmanager
def _layer_tracker(model: nn.Module) -> Iterator[list[str]]:
    """Record the stack of modules being run, so that a tracing failure can name its layer."""
    stack: list[str] = []
    names = {id(m): (n or type(model).__name__) for n, m in model.named_modules()}
    handles = []

    def pre(mod, args):
        stack.append(f"{names.get(id(mod), '?')} ({type(mod).__name__})")

    def post(mod, args, out):
        if stack:
            stack.pop()

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def _one_line(e: BaseException, limit: int = 300) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Inference mode for the export (dropout off), the caller's train/eval flags restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, t in flags:
            m.training = t


def export_program(model: nn.Module, example: Optional[torch.Tensor] = None, *,
                   keep_custom_ops: bool = False, dynamic_batch: bool = True,
                   img_size: Optional[int] = None) -> "torch.export.ExportedProgram":
    """``torch.export`` the inference (eval-mode) forward of ``model``.

    Args:
        model: an ``nn.Module`` taking ``[B, C, H, W]`` float images (a ``torch.compile`` wrapper is
            unwrapped: the compiled and eager module compute the same function).
        example: the tracing input; default: random images of batch 2 at the model's image size
            (``img_size`` overrides that size).  Its batch is the exported static batch when
            ``dynamic_batch=False``.
        keep_custom_ops: keep ``fusedkat::*`` ops (loading the program then needs ``import fusedkat``)
            instead of decomposing them into plain ATen ops.
        dynamic_batch: export the batch dimension as a symbol (any batch >= 1 at run time).

    Returns:
        The ExportedProgram; ``program.module()(x)`` runs it.  The model itself is not modified (its
        train/eval flags are restored).
    """
    model = unwrap(model)
    check_exportable(model)
    if example is None:
        example = example_input(model, 2 if dynamic_batch else 1, img_size)
    if not isinstance(example, torch.Tensor) or example.dim() != 4:
        raise ExportError(f"the example input must be one [B, C, H, W] tensor, got "
                          f"{type(example).__name__}{tuple(getattr(example, 'shape', ()))}")
    if dynamic_batch and example.shape[0] < 2:
        # torch.export specialises dimensions of size 1; trace with 2 to keep the batch symbolic
        example = torch.cat([example, example], 0)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    with _eval_mode(model), _layer_tracker(model) as stack:
        try:
            program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes, strict=False)
        except Exception as e:
            where = f"layer {stack[-1]}" if stack else f"model {type(model).__name__}"
            raise ExportError(f"torch.export failed in {where}: {type(e).__name__}: {_one_line(e)}") from e
    if not keep_custom_ops:
        program = program.run_decompositions(decompositions())
        left = fusedkat_ops_in(program)
        if left:  # cannot happen with the table above; never hand out a program that needs fusedkat by surprise
            raise ExportError(f"fusedkat ops left after decomposition: {left}")
    return program


def run_program(program: "torch.export.ExportedProgram", x: torch.Tensor) -> torch.Tensor:
    """``program.module()(x)`` without autograd bookkeeping."""
    with torch.no_grad():
        return program.module()(x)


def max_differences(reference: torch.Tensor, other: Any) -> tuple[float, float]:
    """``(max |ref - other|, that / max |ref|)``: the relative error against the largest logit."""
    other_t = other if isinstance(other, torch.Tensor) else torch.as_tensor(other)
    ref = reference.detach().double().cpu()
    diff = float((ref - other_t.detach().double().cpu()).abs().max())
    scale = float(ref.abs().max())
    return diff, diff / scale if scale > 0 else diff


def batches_to_check(dynamic_batch: bool, batch: int) -> Sequence[int]:
    """The batch sizes an export is verified at: 1 and 3 when dynamic (3 was never traced), else its own."""
    return (1, 3) if dynamic_batch else (batch,)
