"""The compile-only build check, run as CI runs it: every registered kernel variant compiled for
sm_80 and sm_90a with fake tensors (no GPU), cubins inspected; plus checks that the check itself
fails when it should (missing instruction, compile error) and that the runtime's AOT disk cache
is really used by a later process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cutlass_kernels import registry
from cutlass_kernels.build import build_one

ARCHES = ("sm_80", "sm_90a")


@pytest.fixture(scope="module")
def build_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    json_path = out / "rows.json"
    # a fresh cache dir: every kernel is really compiled in this run
    proc = subprocess.run(
        [sys.executable, "-m", "cutlass_kernels.build", "--arch", ",".join(ARCHES), "--check",
         "--json", str(json_path), "--jobs", "2", "--cache-dir", str(out / "cache")],
        capture_output=True, text=True, timeout=900,
    )
    return proc, json.loads(json_path.read_text()) if json_path.exists() else None


def test_build_check_passes(build_rows):
    proc, rows = build_rows
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert rows is not None
    assert "kernel" in proc.stdout.splitlines()[0]  # the table is printed


def test_every_variant_for_both_arches_without_spills(build_rows):
    _, rows = build_rows
    variants, _ = registry.all_variants()
    expected = {(v.name, a) for v in variants for a in ARCHES if a in v.arches}
    got = {(r["kernel"], r["arch"]) for r in rows}
    assert got == expected
    for v in variants:  # the elementwise kernels are built for both arches
        if v.name.startswith("group_rational_"):
            assert set(ARCHES) <= set(v.arches)
    for r in rows:
        assert r["ok"], r
        assert r["errors"] == []
        assert r["spills"] == 0, r
        assert 0 < r["registers"] <= 255
        assert r["seconds"] > 0 and r["cached"] is False
        assert set(r) >= {"kernel", "arch", "registers", "spills", "sass", "seconds"}
        assert "rational" in r["kernel"]
        # the expected instructions really are in the cubin (prefix match on full opcodes)
        assert registry.sass_expectation_failures(r["expect"].items(), r["sass_full"]) == []


def test_rational_kernels_use_fast_reciprocal_and_vector_memory_ops(build_rows):
    _, rows = build_rows
    for r in rows:
        if not r["kernel"].startswith("group_rational_"):
            continue
        full = r["sass_full"]
        assert full.get("MUFU.RCP", 0) >= 1, r["kernel"]  # rcp_approx, not a division subroutine
        assert "LDL" not in r["sass"] and "STL" not in r["sass"]  # no local memory traffic
        if r["kernel"].endswith(("bf16_A_v8", "fp16_B_v8", "fp32_A_v4", "fp32_B_v4")):
            assert full.get("LDG.E.128", 0) >= 1 and full.get("STG.E.128", 0) >= 1, (r["kernel"], full)


def test_build_check_reports_missing_instructions_and_compile_errors(tmp_path):
    v = registry.make_variant(
        "group_rational_fwd_selftest_v1", "cutlass_kernels.rational_elementwise:compile_forward",
        {"dtype": "fp32", "form": "A", "vec": 1}, expect_sass={"HGMMA": 1})
    row = build_one(v, "sm_80", str(tmp_path))
    assert not row["ok"] and row["errors"] == ["expected >= 1 HGMMA, found 0"]
    assert row["spills"] == 0 and row["sass"]["MUFU"] >= 1
    broken = registry.make_variant("rational_broken", "cutlass_kernels.rational_elementwise:compile_forward",
                                   {"dtype": "fp64"})
    row = build_one(broken, "sm_80", str(tmp_path))
    assert not row["ok"] and "fp64" in row["errors"][0]


def test_build_check_fails_on_values_parked_on_the_stack(tmp_path, monkeypatch):
    """ptxas can keep a value on the stack (STL/LDL, cuobjdump's STACK) while reporting no LOCAL
    spill; the F-writing backward once did at 80 registers.  The check fails such a kernel too.
    (A real compile whose inspection is given a stack, since no registered kernel has one.)"""
    from cutlass_kernels import sass

    real = sass.inspect_cubin
    monkeypatch.setattr(sass, "inspect_cubin", lambda cubin: {**real(cubin), "stack": 8})
    v = registry.make_variant("group_rational_fwd_stacktest_v1", "cutlass_kernels.rational_elementwise:compile_forward",
                              {"dtype": "fp32", "form": "A", "vec": 1})
    row = build_one(v, "sm_80", None)
    assert not row["ok"] and row["spills"] == 0
    assert row["errors"] == ["8 bytes of stack per thread (values spilled to the stack)"]


def test_build_cli_rejects_bad_arch():
    proc = subprocess.run([sys.executable, "-m", "cutlass_kernels.build", "--arch", "hopper", "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "not a GPU arch" in proc.stderr


_AOT_SCRIPT = """
import sys
from cutlass_kernels import runtime
if sys.argv[1] == "second":
    def no_compile(*a, **k):
        raise AssertionError("recompiled although the disk cache has the kernel")
    runtime._compile = no_compile
fn = runtime.get_kernel("cutlass_kernels.rational_elementwise:compile_forward",
                        {"dtype": "fp32", "form": "B", "m": 5, "n": 4, "vec": 1}, "sm_80",
                        ("fusedkat.ops.rational_math",))
print("loaded", type(fn).__name__)
"""


@pytest.mark.skipif(not any(os.access(os.path.join(p, "g++"), os.X_OK) for p in os.environ.get("PATH", "").split(":")),
                    reason="AOT export links with g++")
def test_runtime_aot_cache_is_reused_by_a_later_process(tmp_path):
    env = {**os.environ, "FUSEDKAT_CACHE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", _AOT_SCRIPT, "first"], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    entries = [p for p in tmp_path.iterdir() if (p / "kernel.so").exists()]
    assert len(entries) == 1 and json.loads((entries[0] / "meta.json").read_text())["arch"] == "sm_80"
    second = subprocess.run([sys.executable, "-c", _AOT_SCRIPT, "second"], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "loaded" in second.stdout


def test_kernels_take_their_math_from_rational_math(tmp_path, monkeypatch):
    """The kernel generators must call rational_math (single source of truth), not re-derive F."""
    from cutlass_kernels import dsl, rational_elementwise as rel
    from fusedkat.ops import rational_math as rm

    calls = {"forward": 0, "grad_terms": 0}
    real_fwd, real_grad = rm.forward, rm.grad_terms

    def fwd(*a, **k):
        calls["forward"] += 1
        assert a[-1] is dsl.DslMath  # evaluated with the DSL MathOps (rcp = rcp_approx)
        return real_fwd(*a, **k)

    def grad(*a, **k):
        calls["grad_terms"] += 1
        assert a[-1] is dsl.DslMath
        return real_grad(*a, **k)

    monkeypatch.setattr(rm, "forward", fwd)
    monkeypatch.setattr(rm, "grad_terms", grad)
    rel.compile_forward(arch="sm_80", options=dsl.compile_options("sm_80", tmp_path / "f"), dtype="fp32", form="B", vec=1)
    rel.compile_backward(arch="sm_80", options=dsl.compile_options("sm_80", tmp_path / "b"), dtype="fp32", form="A", vec=1)
    # one call per element of the unrolled vectors: U=4 x V=1 (forward), U=2 x V=1 (backward)
    assert calls == {"forward": 4, "grad_terms": 2}


def test_ws_forward_roles_hold_in_the_sass(build_rows):
    """The warp-specialized sm_90a forward (issue 15), per role, in every variant the registry
    builds: the consumer loop is 4 HGMMA plus bookkeeping, the transform loop has one MUFU.RCP per
    element, no integer division and <= 13.5 slots per element, the producer issues the TMA loads;
    the diagnostic variants really lack the MMA (``_nomma``) or F (``_fid``)."""
    from cutlass_kernels.gemm import ws_check

    _, rows = build_rows
    ws = [r for r in rows if r["kernel"].startswith("rational_gemm_fwd_sm90ws_")]
    assert len(ws) >= 11 and {r["arch"] for r in ws} == {"sm_90a"}
    for r in ws:
        roles = r["roles"]
        assert r["ok"] and r["spills"] == 0 and r["registers"] <= 128, r["kernel"]  # 64K / 512 threads
        assert r["sass"].get("STL", 0) == 0 and r["sass"].get("LDL", 0) == 0
        t = roles["transform"]
        assert not any(op.startswith(("I2F", "F2I", "IMAD.HI")) for op in t), (r["kernel"], t)
        rcp = sum(n for op, n in t.items() if op.startswith("MUFU.RCP"))
        if r["kernel"].endswith("_nomma"):
            assert "consumer" not in roles and r["sass"].get("HGMMA", 0) == 0
        else:
            hgmma = sum(n for op, n in roles["consumer"].items() if op.startswith("HGMMA"))
            assert hgmma == 4 and sum(roles["consumer"].values()) - hgmma <= ws_check.MAX_CONSUMER_OTHER
        if r["kernel"].endswith("_fid"):
            assert rcp == 0
        else:
            assert rcp == ws_check.ELEMENTS_PER_THREAD
            assert ws_check.slots_per_element(roles) <= ws_check.MAX_SLOTS_PER_ELEMENT, r["kernel"]
        # x and W per k-tile in one loop; the resident-panel variant loads them in a loop each
        tma = 1 if "_panel" in r["kernel"] else 2
        assert sum(n for op, n in roles["producer"].items() if op.startswith("UTMALDG")) == tma


def test_ws_dgrad_roles_hold_in_the_sass(build_rows):
    """The warp-specialized sm_90a dgrad (issue 16; cooperative and ping-pong) in every variant the registry builds: zero
    spills and stack, 4 HGMMA per k-tile in the consumer loop, an epilogue with one MUFU.RCP per
    accumulator value and no integer division (``ws_check.dgrad_role_failures``)."""
    from cutlass_kernels.gemm import ws_check

    _, rows = build_rows
    ws = [r for r in rows if r["kernel"].startswith(("rational_gemm_dgrad_sm90ws_", "rational_gemm_dgrad_sm90wspp_"))]
    # ping-pong: both dtypes x both forms; cooperative: both dtypes, form A only (bwd_variants)
    assert len(ws) == 6 and {r["arch"] for r in ws} == {"sm_90a"}
    assert sum(r["kernel"].startswith("rational_gemm_dgrad_sm90wspp_") for r in ws) == 4
    for r in ws:
        assert r["ok"] and r["spills"] == 0 and r["sass"].get("STL", 0) == 0, r["kernel"]
        assert ws_check.dgrad_role_failures(r["roles"], {}) == [], r["kernel"]
        assert not any(op.startswith(("I2F", "F2I", "IMAD.HI")) for op in r["roles"]["epilogue"])


def test_elementwise_kernels_keep_the_exact_pass_out_of_the_hot_loop(build_rows):
    """Every elementwise rational variant (forward, backward, backward writing F(x)) on every arch:
    a hot loop with one unpredicated MUFU.RCP per element and no predicated one (the large-|x|
    exact evaluation is not issued for every element), then an exact loop
    (``rational_variants.pass_failures``, ``sass.elementwise_passes``)."""
    from cutlass_kernels import rational_variants as rv

    _, rows = build_rows
    ew = [r for r in rows if r["kernel"].startswith("group_rational_")]
    assert len(ew) == 2 * len(rv.variants())
    for r in ew:
        hot, exact = r["roles"]["hot"], r["roles"]["exact"]
        assert not any(op.startswith("@MUFU.RCP") for op in hot), r["kernel"]
        assert any(op.startswith("@MUFU.RCP") or op.startswith("MUFU.RCP") for op in exact), r["kernel"]
        direction = "fwd" if "_fwd_" in r["kernel"] else "bwd"
        (v,) = [v for v in rv.variants() if v.name == r["kernel"]]
        assert rv.pass_failures(r["roles"], v.kwargs_dict, direction) == [], r["kernel"]


_FAKE_EW_SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   MUFU.RCP R6, R6 ;
        /*0030*/               @P1 MUFU.RCP R7, R7 ;
        /*0040*/                   STG.E.128 desc[UR4][R2.64], R4 ;
        /*0050*/               @P0 BRA 0x10 ;
        /*0060*/                   MUFU.RCP R6, R6 ;
        /*0070*/               @P0 BRA 0x60 ;
        /*0080*/                   EXIT ;
"""


def test_elementwise_pass_check_catches_an_if_converted_exact_path():
    """sass.elementwise_passes names the loops hot and exact and marks predicated opcodes; the
    check fails on a predicated reciprocal in the hot loop, a wrong element count and a missing
    exact loop, and passes on a clean hot loop."""
    from cutlass_kernels import rational_variants as rv
    from cutlass_kernels import sass

    roles = sass.elementwise_passes(_FAKE_EW_SASS)
    assert roles["hot"]["@MUFU.RCP"] == 1 and roles["hot"]["MUFU.RCP"] == 1 and roles["exact"]["MUFU.RCP"] == 1
    fields = {"dtype": "fp32", "form": "A", "vec": 1, "unroll": 1}
    msgs = rv.pass_failures(roles, fields, "fwd")
    assert any("predicated MUFU.RCP" in m for m in msgs)
    clean = {"hot": {"MUFU.RCP": 1, "FFMA": 9, "BRA": 1}, "exact": dict(roles["exact"])}
    assert rv.pass_failures(clean, fields, "fwd") == []
    assert any("2 MUFU.RCP for 1 elements" in m for m in rv.pass_failures(
        {"hot": {"MUFU.RCP": 2}, "exact": {"MUFU.RCP": 1}}, fields, "fwd"))
    assert any("hot and an exact loop" in m for m in rv.pass_failures({"hot": clean["hot"]}, fields, "fwd"))
    slow = {"hot": {"MUFU.RCP": 1, "FFMA": 40}, "exact": {"MUFU.RCP": 1}}
    assert any("issue slots per element" in m for m in rv.pass_failures(slow, fields, "fwd"))
