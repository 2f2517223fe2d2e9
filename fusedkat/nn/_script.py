"""``torch.jit.script`` of a fusedkat layer: one clear error that points to ``torch.export``.

TorchScript cannot compile the Python wrappers around the ``fusedkat::*`` custom ops (keyword-only
``form``; ``torch.jit.script`` itself is deprecated in favour of ``torch.export``), and would fail
deep inside the op layer with a message about keyword-only arguments.  ``torch.jit.script`` calls
``__prepare_scriptable__`` on every submodule first, so the fusedkat layers raise there instead.
"""
from __future__ import annotations


class ScriptingNotSupportedError(RuntimeError):
    """``torch.jit.script`` was asked to compile a fusedkat layer."""


class NotScriptable:
    """Mixin for the fusedkat ``nn.Module`` layers: ``torch.jit.script`` raises :class:`ScriptingNotSupportedError`."""

    def __prepare_scriptable__(self):
        raise ScriptingNotSupportedError(
            f"torch.jit.script does not support fusedkat layers ({type(self).__name__} calls a fusedkat custom op "
            f"through Python): use torch.export instead -- fusedkat.export.export_program(model), or "
            f"`fusedkat export CHECKPOINT OUT --format pt2|onnx|aoti`")
