"""NVTX ranges for profiling fusedkat with Nsight Systems, in the NVTX domain ``fusedkat``.

Off by default, and then free: each op launch pays one boolean test.  Turn it on with the
environment variable ``FUSEDKAT_NVTX=1`` (read when fusedkat is imported) or in code::

    with fusedkat.profiling.nvtx_ranges():
        loss = model(x).sum(); loss.backward()

What gets a range (through the ``nvtx`` package, which works on CPU-only builds of torch, unlike
``torch.cuda.nvtx``):

* every fusedkat op launch, forward and backward, named after the op, the backend that ran it and
  the shapes of its tensor arguments: ``fusedkat::rational_linear_forward[torch] 8x197x192 1x6 8x4 768x192 768``;
* the forward of every module of a model that contains a fusedkat module (GR-KAN, KAT): modules
  defined in fusedkat at any depth and every module at most three levels deep (``blocks.3``,
  ``blocks.3.mlp``), named by qualified name, class and input shape:
  ``blocks.3.mlp.fc1:GRKAN fwd 8x197x768``.  Dropout/Identity modules are skipped.
* the backward of those modules where it can be marked: from the moment the gradient of the
  module's output arrives until the gradient of its input is ready (``... bwd``).  Modules whose
  inputs do not require grad (the patch embedding of an image model) have no backward range.
  Backward ranges are NVTX start/end ranges (they may begin and end on different threads);
  forward and op ranges are push/pop ranges.

Module ranges come from global ``nn.Module`` forward hooks installed while ranges are on, so no
model class needs editing.  Under ``torch.compile`` the hooks and op ranges do nothing while
Dynamo traces (``torch.compiler.is_compiling()``), so compiled graphs stay free of them
(``fullgraph=True`` works); the compiled graph's fusedkat op calls still get their op ranges at run
time, because the op's kernel is opaque to the compiler.
"""
from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Any, Iterator, Optional, Sequence

import torch

DOMAIN = "fusedkat"
ENV = "FUSEDKAT_NVTX"
_MAX_MODULE_DEPTH = 3
_SKIPPED_CLASSES = frozenset({"Identity", "Dropout", "DropPath"})
_MAX_CACHED_MESSAGES = 4096

_enabled = False
_backward = True
_hook_handles: list[Any] = []
_names: "weakref.WeakKeyDictionary[torch.nn.Module, Optional[str]]" = weakref.WeakKeyDictionary()
_local = threading.local()
_domain: Any = None
_attributes: dict[str, Any] = {}
_NULL = contextlib.nullcontext()


def _env_flag() -> bool:
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def is_enabled() -> bool:
    """Whether fusedkat emits NVTX ranges now."""
    return _enabled


def _get_domain() -> Any:
    global _domain
    if _domain is None:
        import nvtx  # imported on first use: it is not needed while ranges are off

        _domain = nvtx.get_domain(DOMAIN)  # a no-op DummyDomain when no tool is attached
    return _domain


def _attrs(message: str) -> Any:
    """Event attributes (holding the registered message string), cached per message."""
    attrs = _attributes.get(message)
    if attrs is None:
        attrs = _get_domain().get_event_attributes(message=message)
        if len(_attributes) < _MAX_CACHED_MESSAGES:
            _attributes[message] = attrs
    return attrs


def push(message: str) -> None:
    """Open a push/pop range named ``message`` in the fusedkat domain (this thread)."""
    _get_domain().push_range(_attrs(message))


def pop() -> None:
    """Close the innermost push/pop range of this thread."""
    _get_domain().pop_range()


def start(message: str) -> int:
    """Open a start/end (process-wide) range; returns its id for :func:`end`."""
    return _get_domain().start_range(_attrs(message))


def end(range_id: int) -> None:
    _get_domain().end_range(range_id)


@contextlib.contextmanager
def _range(message: str) -> Iterator[None]:
    push(message)
    try:
        yield
    finally:
        pop()


def nvtx_range(message: str) -> contextlib.AbstractContextManager:
    """A range named ``message`` while ranges are on and nothing is being compiled; else a no-op."""
    if not _enabled or torch.compiler.is_compiling():
        return _NULL
    return _range(message)


def _shape(t: Any) -> str:
    return "x".join(str(s) for s in t.shape) if isinstance(t, torch.Tensor) else ""


def op_range(op: str, device: torch.device, args: Sequence[Any]) -> contextlib.AbstractContextManager:
    """The range around one fusedkat op launch (used by ``fusedkat.ops.custom_ops._run``)."""
    if not _enabled or torch.compiler.is_compiling():
        return _NULL
    from .ops import dispatch

    backend = dispatch.choose(device, op)
    shapes = " ".join(_shape(a) for a in args if isinstance(a, torch.Tensor))
    return _range(f"fusedkat::{op}[{backend}] {shapes}")


# ---------------------------------------------------------------------------------------------
# module ranges: global forward hooks, active only while ranges are on
# ---------------------------------------------------------------------------------------------
def _is_fusedkat_module(m: torch.nn.Module) -> bool:
    return type(m).__module__.startswith("fusedkat.")


def _name_tree(root: torch.nn.Module) -> None:
    """Give ``root`` and its submodules their range names (None: not instrumented)."""
    subs = list(root.named_modules())
    if not any(_is_fusedkat_module(m) for _, m in subs):
        for _, m in subs:
            _names[m] = None
        return
    root_name = type(root).__name__
    orig = getattr(root, "_orig_mod", None)
    if isinstance(orig, torch.nn.Module):
        root_name = f"{type(orig).__name__} (compiled)"
    for qual, m in subs:
        cls = type(m).__name__
        # torch.compile's OptimizedModule wraps the model as "_orig_mod": keep the model's own names
        qual = qual.replace("_orig_mod.", "").replace("_orig_mod", "")
        if qual == "" and m is not root:
            _names[m] = cls
            continue
        depth = qual.count(".") + 1 if qual else 0
        wanted = cls not in _SKIPPED_CLASSES and (depth <= _MAX_MODULE_DEPTH or _is_fusedkat_module(m))
        _names[m] = (f"{qual}:{cls}" if qual else root_name) if wanted else None


def _module_name(m: torch.nn.Module) -> Optional[str]:
    try:
        return _names[m]
    except KeyError:
        _name_tree(m)  # first call of a module never seen as a submodule: it is a root
        return _names.get(m)


def _stack() -> list:
    s = getattr(_local, "stack", None)
    if s is None:
        s = _local.stack = []
    return s


def _first_tensor(args: Any) -> Optional[torch.Tensor]:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    return None


def _pre_hook(module: torch.nn.Module, args: Any) -> None:
    if torch.compiler.is_compiling():
        return
    name = _module_name(module)
    if name is None:
        return
    push(f"{name} fwd {_shape(_first_tensor(args))}")
    _stack().append(module)


def _post_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
    if torch.compiler.is_compiling():
        return
    stack = _stack()
    if not stack or stack[-1] is not module:
        return  # the pre-hook did not open a range for this call
    stack.pop()
    pop()
    if _backward and torch.is_grad_enabled():
        _mark_backward(_names.get(module), args, output)


def _mark_backward(name: Optional[str], args: Any, output: Any) -> None:
    out = output if isinstance(output, torch.Tensor) else _first_tensor(output if isinstance(output, (tuple, list)) else ())
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    if name is None or out is None or not out.requires_grad or not inputs:
        return
    state: dict[str, Any] = {}

    def on_output_grad(grad):
        if "id" not in state and _enabled:
            state["id"] = start(f"{name} bwd")
        return None

    def on_input_grad(grad):
        rid = state.pop("id", None)
        if rid is not None:
            end(rid)
        return None

    out.register_hook(on_output_grad)
    inputs[0].register_hook(on_input_grad)


def _install_hooks() -> None:
    if not _hook_handles:
        from torch.nn.modules import module as nn_module

        _hook_handles.append(nn_module.register_module_forward_pre_hook(_pre_hook))
        _hook_handles.append(nn_module.register_module_forward_hook(_post_hook, always_call=True))


def _remove_hooks() -> None:
    while _hook_handles:
        _hook_handles.pop().remove()


def enable(modules: bool = True, backward: bool = True) -> None:
    """Turn ranges on: op launches always, module forwards if ``modules``, their backward if
    ``backward`` too."""
    global _enabled, _backward
    _enabled, _backward = True, backward
    if modules:
        _install_hooks()
    else:
        _remove_hooks()


def disable() -> None:
    """Turn all fusedkat NVTX ranges off and remove the module hooks."""
    global _enabled
    _enabled = False
    _remove_hooks()


class _Setting:
    """One live ``nvtx_ranges`` block (compared by identity)."""

    __slots__ = ("enabled", "modules", "backward")

    def __init__(self, enabled: bool, modules: bool, backward: bool) -> None:
        self.enabled, self.modules, self.backward = enabled, modules, backward


_blocks: list[_Setting] = []
_blocks_lock = threading.Lock()
_outside: Optional[tuple[bool, bool, bool]] = None  # the setting before the first live block


def _apply(enabled: bool, modules: bool, backward: bool) -> None:
    if enabled:
        enable(modules=modules, backward=backward)
    else:
        disable()


@contextlib.contextmanager
def nvtx_ranges(enabled: bool = True, *, modules: bool = True, backward: bool = True) -> Iterator[None]:
    """Emit fusedkat NVTX ranges inside the block (or suppress them with ``enabled=False``).

    The setting is process-wide.  Blocks may be entered and left in any interleaving across threads:
    the most recently entered block that is still open decides, each block removes exactly its own
    entry on exit, and when the last one closes the setting from before the first is restored."""
    global _outside
    entry = _Setting(enabled, modules, backward)
    with _blocks_lock:
        if not _blocks:
            _outside = (_enabled, bool(_hook_handles), _backward)
        _blocks.append(entry)
        _apply(enabled, modules, backward)
    try:
        yield
    finally:
        with _blocks_lock:
            for i in range(len(_blocks) - 1, -1, -1):
                if _blocks[i] is entry:
                    del _blocks[i]
                    break
            if _blocks:
                top = _blocks[-1]
                _apply(top.enabled, top.modules, top.backward)
            elif _outside is not None:
                _apply(*_outside)


if _env_flag():
    enable()
