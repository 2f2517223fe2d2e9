"""Registry entries for the group-rational elementwise kernels (what the launcher can dispatch to).

The launcher picks, per call, the widest vector in :data:`VECS` that divides K/g (and matches the
pointers' alignment); the build check compiles exactly these variants.  Cheap to import: no DSL.
"""
from __future__ import annotations

from fusedkat.ops import rational_math as rm

from .arch import SUPPORTED_ARCHES
from .config import DTYPE_NAMES
from .registry import Variant, make_variant

#: Vector widths (elements) compiled per dtype: 16 bytes, 8 bytes, and scalar as the fallback.
VECS: dict[str, tuple[int, ...]] = {"bf16": (8, 4, 1), "fp16": (8, 4, 1), "fp32": (4, 1)}
#: Modules whose source changes the generated code (cache fingerprint).
SOURCES: tuple[str, ...] = ("fusedkat.ops.rational_math", "cutlass_kernels.dsl", "cutlass_kernels.config")
_MODULE = "cutlass_kernels.rational_elementwise"


#: direction -> (compile function, extra config fields).  ``bwdf``: the backward that also writes
#: F(x) and the ones column (the unfused ``rational_linear`` backward's kernel).
DIRECTIONS: dict[str, tuple[str, dict]] = {
    "fwd": ("compile_forward", {}),
    "bwd": ("compile_backward", {}),
    "bwdf": ("compile_backward", {"emit_f": True}),
}


def variant_name(direction: str, dtype: str, form: str, vec: int) -> str:
    """e.g. ``group_rational_fwd_bf16_A_v8`` (every rational kernel's name contains 'rational')."""
    return f"group_rational_{direction}_{dtype}_{form}_v{vec}"


def variants() -> list[Variant]:
    out = []
    for direction, (fn, extra) in DIRECTIONS.items():
        for dtype in DTYPE_NAMES:
            for form in rm.FORMS:
                for vec in VECS[dtype]:
                    # A vectorised variant must really issue vector loads/stores of its width;
                    # the fast reciprocal must be there (MUFU.RCP), never a division subroutine.
                    width = {16: ".128", 8: ".64", 4: "", 2: ".U16"}.get(vec * (4 if dtype == "fp32" else 2), "")
                    expect = {"MUFU.RCP": vec, "LDG": 1, "STG": 1}
                    if vec > 1 and width:
                        expect[f"LDG.E{width}"] = 1
                        expect[f"STG.E{width}"] = 1
                    out.append(make_variant(
                        variant_name(direction, dtype, form, vec), f"{_MODULE}:{fn}",
                        {"dtype": dtype, "form": form, "vec": vec, **extra},
                        arches=SUPPORTED_ARCHES, expect_sass=expect, sources=SOURCES))
    return out
