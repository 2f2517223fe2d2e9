"""The registry of kernel variants: every binary the library can dispatch to.

A :class:`Variant` names one compiled kernel (family + compile-time parameters) and says how to
compile it: ``target`` is ``"module:function"``, a function called as
``function(arch=..., options=..., **kwargs)`` that must call ``cute.compile(..., options=options)``
and return the compiled object (``options`` carries the arch and the dump dir; kwargs are
primitives, so variants pickle into worker processes).  ``expect_sass`` lists instructions the
cubin must contain (minimum counts, prefix match on full opcodes: ``"HMMA"`` matches
``HMMA.16816.F32.BF16``, ``"LDG.E.128"`` a 16-byte load).

Families register by module: each module in :data:`VARIANT_MODULES` defines
``variants() -> list[Variant]``.  Modules not present yet are skipped (reported by the build).
Variant modules must be cheap to import (no DSL import at module level).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from .arch import DEFAULT_BUILD_ARCHES, normalize_arch

#: Modules that contribute variants (the GEMM engineers add theirs under cutlass_kernels.gemm).
VARIANT_MODULES: tuple[str, ...] = (
    "cutlass_kernels.rational_variants",
    "cutlass_kernels.gemm.variants",
)


@dataclass(frozen=True)
class Variant:
    """One compiled kernel the library can dispatch to (see the module docstring)."""

    name: str
    target: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    arches: tuple[str, ...] = DEFAULT_BUILD_ARCHES
    expect_sass: tuple[tuple[str, int], ...] = ()
    sources: tuple[str, ...] = ()
    #: ``"module:function"`` checking the per-role SASS (:func:`cutlass_kernels.sass.role_counts`):
    #: ``function(roles: dict[str, dict[str, int]], fields: dict) -> list[str]`` of failures.
    role_check: str = ""
    #: ``"module:function"`` splitting the SASS text into roles (``{role: Counter}``) for the check:
    #: the warp-specialized kernels' roles by default, the elementwise kernels' two passes
    #: (:func:`cutlass_kernels.sass.elementwise_passes`).
    role_counter: str = "cutlass_kernels.sass:role_counts"

    def __post_init__(self) -> None:
        if ":" not in self.target:
            raise ValueError(f"variant {self.name}: target must be 'module:function', got {self.target!r}")
        object.__setattr__(self, "arches", tuple(normalize_arch(a) for a in self.arches))

    @property
    def kwargs_dict(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def compile_function(self) -> Callable[..., Any]:
        mod, fn = self.target.split(":")
        return getattr(importlib.import_module(mod), fn)

    def fingerprint_modules(self) -> tuple[str, ...]:
        """Modules whose source goes into the cache key: the target's module plus ``sources``."""
        return tuple(sorted({self.target.split(":")[0], *self.sources}))


def make_variant(
    name: str,
    target: str,
    kwargs: Optional[dict[str, Any]] = None,
    *,
    arches: Iterable[str] = DEFAULT_BUILD_ARCHES,
    expect_sass: Optional[dict[str, int]] = None,
    sources: Iterable[str] = (),
    role_check: str = "",
    role_counter: str = "",
) -> Variant:
    """Convenience constructor taking dicts."""
    return Variant(
        name=name,
        target=target,
        kwargs=tuple(sorted((kwargs or {}).items())),
        arches=tuple(arches),
        expect_sass=tuple(sorted((expect_sass or {}).items())),
        sources=tuple(sources),
        role_check=role_check,
        **({"role_counter": role_counter} if role_counter else {}),
    )


def role_check_failures(variant: Variant, roles: dict[str, dict[str, int]]) -> list[str]:
    """Messages of the variant's per-role SASS check (none when it has no ``role_check``)."""
    if not variant.role_check:
        return []
    mod, fn = variant.role_check.split(":")
    return list(getattr(importlib.import_module(mod), fn)(roles, variant.kwargs_dict))


def all_variants(modules: Iterable[str] = VARIANT_MODULES) -> tuple[list[Variant], list[str]]:
    """``(variants, skipped module names)``; raises on duplicate names or broken modules."""
    out: list[Variant] = []
    skipped: list[str] = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                skipped.append(name)  # the module itself does not exist (yet)
                continue
            raise
        out.extend(mod.variants())
    names = [v.name for v in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate kernel variant names: {dupes}")
    return out, skipped


def sass_expectation_failures(expect: Iterable[tuple[str, int]], sass_full: dict[str, int]) -> list[str]:
    """Messages for each expected instruction the counts fall short of (prefix match)."""
    failures = []
    for op, minimum in expect:
        n = sum(c for full, c in sass_full.items() if full == op or full.startswith(op + "."))
        if n < minimum:
            failures.append(f"expected >= {minimum} {op}, found {n}")
    return failures
