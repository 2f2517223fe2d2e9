"""Run a callback right after a module is first imported (or at once if it already is).

The one mechanism fusedkat uses to stay cheap at import and still plug into heavy libraries:

* inductor's decomposition table (``torch._inductor.decomposition``) gets the fusedkat lowering
  (:mod:`fusedkat.ops.lowering`) when inductor is imported, not when fusedkat is;
* timm's model registry gets the KAT models (:mod:`fusedkat.models`) when timm is imported, so
  ``timm.create_model("kat_tiny_patch16_224")`` works after ``import fusedkat`` and ``import timm``
  in either order, without ``import fusedkat`` paying for timm.

A one-shot :class:`importlib.abc.MetaPathFinder` per module name wraps the module's loader so the
callback runs after the module body has executed completely.  Only the standard library is used.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from typing import Any, Callable, Dict, List, Optional

__all__ = ["after_import"]

_lock = threading.RLock()
_pending: Dict[str, List[Callable[[], None]]] = {}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finder that answers only for the watched module names, once each."""

    def find_spec(self, fullname: str, path: Optional[Any], target: Any = None):  # noqa: D401
        with _lock:
            if fullname not in _pending:
                return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # cannot wrap this loader: the callbacks wait for a later import
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            # The module body is complete: make it importable by name, then run the callbacks.
            # They are taken here, not in find_spec: ``importlib.util.find_spec("timm")`` (which
            # transformers calls to probe for timm) asks for a spec without importing anything.
            sys.modules.setdefault(fullname, module)
            with _lock:
                callbacks = _pending.pop(fullname, [])
                if not _pending:
                    _remove_finder()
            for cb in callbacks:
                cb()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_finder: Optional[_AfterImport] = None


def _ensure_finder() -> None:
    global _finder
    if _finder is None:
        _finder = _AfterImport()
        sys.meta_path.insert(0, _finder)


def _remove_finder() -> None:
    global _finder
    if _finder is not None and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    _finder = None


def after_import(module: str, callback: Callable[[], None]) -> None:
    """Call ``callback()`` once ``module`` is imported: now if it already is, else right after its import."""
    with _lock:
        if module not in sys.modules:
            _pending.setdefault(module, []).append(callback)
            _ensure_finder()
            return
    callback()


def pending() -> Dict[str, int]:
    """Module names still watched, with how many callbacks wait on each (for tests)."""
    with _lock:
        return {k: len(v) for k, v in _pending.items()}
