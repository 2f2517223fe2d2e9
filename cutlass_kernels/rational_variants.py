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
                        arches=SUPPORTED_ARCHES, expect_sass=expect, sources=SOURCES,
                        role_check=f"{__name__}:{'fwd' if direction == 'fwd' else 'bwd'}_pass_failures", role_counter="cutlass_kernels.sass:elementwise_passes"))
    return out


#: Hot-loop issue slots per element (every element pays them), by direction and vector or scalar
#: loads, sm_80 and sm_90a, DSL 4.8.1: forward 15.2-18.1 with 16/8-byte vectors (15.4 before the
#: large-|x| test existed), 21.5-25.5 scalar; backward 49-64 / 65-76.  The budgets leave room for
#: scheduling noise, not for an exact path predicated into the loop (+15-19 per element in the
#: forward, +30-40 in the backward, as a per-element branch was).
SLOT_BUDGET: dict[tuple[str, bool], float] = {("fwd", True): 20.0, ("fwd", False): 28.0,
                                              ("bwd", True): 66.0, ("bwd", False): 80.0}


def fwd_pass_failures(roles: dict[str, dict[str, int]], fields: dict) -> list[str]:
    """:func:`pass_failures` of a forward variant."""
    return pass_failures(roles, fields, "fwd")


def bwd_pass_failures(roles: dict[str, dict[str, int]], fields: dict) -> list[str]:
    """:func:`pass_failures` of a backward variant (with or without F(x))."""
    return pass_failures(roles, fields, "bwd")


def pass_failures(roles: dict[str, dict[str, int]], fields: dict, direction: str) -> list[str]:
    """The elementwise kernels' two-pass structure (:func:`cutlass_kernels.sass.elementwise_passes`):
    a hot loop with one unpredicated ``MUFU.RCP`` per element of its ``vec x unroll`` and none
    predicated, within :data:`SLOT_BUDGET` per element; an exact loop after it."""
    from .rational_elementwise import GroupRationalBwdConfig, GroupRationalConfig

    cfg = (GroupRationalConfig if direction == "fwd" else GroupRationalBwdConfig)(**fields)
    hot, exact = roles.get("hot"), roles.get("exact")
    if hot is None or exact is None:
        return [f"expected a hot and an exact loop, found {sorted(roles)}"]
    out = []
    elems = cfg.vec * cfg.unroll
    rcp = sum(c for op, c in hot.items() if op.startswith("MUFU.RCP"))
    if rcp != elems:
        out.append(f"hot loop: {rcp} MUFU.RCP for {elems} elements per iteration")
    pred = sum(c for op, c in hot.items() if op.startswith("@MUFU.RCP"))
    if pred:
        out.append(f"hot loop: {pred} predicated MUFU.RCP (the exact path if-converted into it)")
    slots = sum(hot.values()) / elems
    budget = SLOT_BUDGET[direction, cfg.vec > 1]
    if slots > budget:
        out.append(f"hot loop: {slots:.1f} issue slots per element > {budget}")
    return out
