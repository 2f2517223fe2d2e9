"""The static cycle model (cutlass_kernels.costmodel): its validation against the H100 results stays
within the issues' bounds when recomputed from the results JSON and freshly profiled SASS, the CLI
prints its two summary lines, and the model keeps the properties any cycle model must have.

Compiles six registered variants for sm_90a (the old fused forward, dgrad, wgrad and three
elementwise kernels) through the build's compile cache: a few seconds once, then cache hits.
"""
from __future__ import annotations

import collections
import json
import re
from dataclasses import asdict, fields, replace

import pytest

from cutlass_kernels import costmodel as cm
from cutlass_kernels import costmodel_kernels as km
from cutlass_kernels import costmodel_sass as cs
from cutlass_kernels.costmodel_data import PROFILE_SHAPE, load
from cutlass_kernels.costmodel_hw import A100, H100, H200, spec_for
from cutlass_kernels.costmodel_report import format_report, report

FINAL_FWD = re.compile(r"^validated: (\d+\.\d)% on (\d+) measurements; worst predicted fused/cuBLAS: (\d+\.\d\d)x$")
FINAL_BWD = re.compile(r"^backward validated: (\d+\.\d)% on (\d+) measurements; "
                       r"worst predicted backward/linear backward: (\d+\.\d\d)x$")


@pytest.fixture(scope="module")
def compiled() -> cm.SassInputs:
    return cm.sass_inputs()


@pytest.fixture(scope="module")
def rep(compiled) -> dict:
    return report(H100, compiled)


def test_stored_sass_counts_match_the_compiled_kernels(compiled):
    """DEFAULT_SLOTS (what predicted_faster uses without a compiler) is the SASS of today's kernels
    (the removed old dgrad / wgrad are not compiled: sass_inputs takes their stored counts)."""
    a, b = asdict(compiled), asdict(cm.DEFAULT_SLOTS)
    for f in fields(cm.SassInputs):
        if f.name in ("source", "ws_slots") + cm.REMOVED_FIELDS:
            continue
        got, stored = a[f.name], b[f.name]
        for key in (got if isinstance(got, dict) else {"": got}):
            g = got[key] if key else got
            s = stored[key] if key else stored
            assert g == pytest.approx(s, rel=0.02, abs=1.0), f"{f.name}.{key}: compiled {g}, stored {s}"


def test_validation_within_the_issue_bounds(rep):
    s = rep["summary"]
    assert s["fwd"]["n"] >= 12 and s["bwd"]["n"] >= 15
    assert s["fwd"]["max_error"] <= cm.FWD_BOUND, s["fwd"]
    assert s["bwd"]["max_error"] <= cm.BWD_BOUND, s["bwd"]
    # the held-out old fused backward (the issue-16 number) on its own, and the fitted forward
    rows = {(r["what"], r["run"]): r for r in rep["validation"] if r["kind"] == "gpu"}
    assert rows[("old_fused_bwd", "run3")]["role"] == "held-out"
    assert rows[("old_fused_bwd", "run3")]["measured_us"] == 1315.5
    assert abs(rows[("old_fused_bwd", "run3")]["error"]) <= cm.BWD_BOUND
    assert abs(rows[("old_fused_fwd", "run3")]["error"]) <= cm.FWD_BOUND
    # GPU time never exceeds wall time: all but at most one bound hold
    assert len(s["wall_bounds"]["violations"]) <= 1


def test_fit_is_physical_and_recomputed_from_the_results(compiled):
    meas = load()
    f = cm.fit(meas, compiled)
    assert 0.5 < f.eta_mma < 1.0 and 0.5 < f.eta_hbm < 1.0 and 0.0 <= f.phi_old <= 1.0
    # a different measurement moves the fit: the constants come from the data, not the code
    moved = [replace(x, us=x.us * 1.2) if x.what == "cublas_fwd" else x for x in meas]
    assert cm.fit(moved, compiled).eta_mma == pytest.approx(f.eta_mma / 1.2, rel=1e-6)


def test_measurements_parsed_from_the_profiles():
    gpu = collections.defaultdict(list)
    for x in load():
        if x.kind == "gpu":
            assert x.shape == PROFILE_SHAPE
            gpu[x.what].append(x.us)
    assert sorted(gpu["old_fused_fwd"]) == [370.2, 370.5, 370.7, 371.0]
    assert gpu["old_fused_bwd"] == [1315.5]
    assert sorted(gpu["cublas_fwd"]) == [170.2, 171.0, 173.0, 173.3]
    assert len(gpu["cublas_dgrad"]) == len(gpu["cublas_wgrad"]) == 3


def test_cli_prints_the_two_summary_lines_and_writes_json(tmp_path, capsys):
    out = tmp_path / "model.json"
    assert cm.main(["--json", str(out), "--defaults"]) == 0  # the stored counts: checked above
    lines = capsys.readouterr().out.rstrip("\n").splitlines()
    fwd, bwd = FINAL_FWD.match(lines[-2]), FINAL_BWD.match(lines[-1])
    assert fwd and bwd, lines[-2:]
    data = json.loads(out.read_text())
    assert float(fwd.group(1)) == pytest.approx(100 * data["summary"]["fwd"]["max_error"], abs=0.05)
    assert int(bwd.group(2)) == data["summary"]["bwd"]["n"]
    assert "a model, not a measurement" in lines[0]


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cm.main(["--json", str(tmp_path), "--defaults"])  # a folder
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cm.main(["--arch", "sm_70", "--defaults"])
    assert "sm_70" in capsys.readouterr().err


def test_h200_and_other_gpus(compiled):
    r200 = report(H200, compiled)
    r100 = report(H100, compiled)
    for a, b in zip(r200["forward"], r100["forward"]):
        assert a["predicted_us"] <= b["predicted_us"] + 1e-9  # same SM, more bandwidth
    assert all(r["measured_us"] == "" for r in r200["forward"])  # H100 numbers only next to H100
    ra = report(A100, compiled)
    assert not any(r["variant"].startswith("ws") for r in ra["forward"])  # no WGMMA before sm_90
    assert FINAL_BWD.match(format_report(ra).splitlines()[-1])


def test_old_kernel_transform_work_grows_with_n_tiles():
    f = km.Fit(0.73, 0.77, 0.38)
    kern = cm.old_kernels(cm.DEFAULT_SLOTS, H100)[0]
    t = [km.old_fwd_us(H100, f, kern, (25216, 768, n)) for n in (768, 1536, 3072)]
    assert t[0] < t[1] < t[2]
    assert t[2] / t[1] == pytest.approx(2.0, rel=0.15)  # F recomputed per 256-wide N tile
    # and the serial sum (phi = 0) is the slowest, full overlap the fastest
    s0, s1 = (km.old_fwd_us(H100, f, kern, (25216, 768, 3072), phi) for phi in (0.0, 1.0))
    assert s1 < t[2] < s0


@pytest.mark.parametrize("label,shape", cm.KAT_SHAPES)
def test_ws_predictions_respect_the_floors(label, shape):
    f = cm.fit(load(), cm.DEFAULT_SLOTS)
    floor = km.mma_floor_us(H100, shape)
    full, fid, nomma = (km.ws_fwd_us(H100, f, cm.ws_design(cm.DEFAULT_SLOTS, False, mode), shape)
                        for mode in ("full", "fid", "nomma"))
    assert full >= floor and fid >= floor
    assert full >= max(fid, nomma) - 1e-9  # the diagnostic variants are floors of the full kernel
    if shape[1] <= 384:  # the resident panel transforms each element once: never more ALU work
        res_nomma = km.ws_fwd_us(H100, f, cm.ws_design(cm.DEFAULT_SLOTS, True, "nomma"), shape)
        assert res_nomma <= nomma + 1e-9
    assert cm.fused_bwd_us(H100, f, cm.DEFAULT_SLOTS, shape) >= km.mma_floor_us(H100, shape)


def test_predicted_faster():
    for arch in ("sm_80", "sm_86", "sm_89", "sm_90a", "sm_90"):
        for op in ("forward", "backward"):
            for design in ("new", "old"):
                assert cm.predicted_faster(arch, op, (25216, 768, 3072), design) in ("fused", "unfused")
    # the tree's sm_90 fused forward measured 2.2x cuBLAS at KAT-B fc1: the model agrees it loses
    assert cm.predicted_faster("sm_90a", "forward", (25216, 768, 3072), "old") == "unfused"
    with pytest.raises(ValueError, match="op"):
        cm.predicted_faster("sm_90a", "fwd", (1, 2, 3))
    with pytest.raises(ValueError, match="shape"):
        cm.predicted_faster("sm_90a", "forward", (0, 2, 3))
    with pytest.raises(ValueError):
        cm.predicted_faster("sm_70", "forward", (1, 2, 3))
    assert spec_for("sm_90").name == H100.name


_FAKE_SASS = """
        Function : fake_kernel
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   FFMA R2, R3, R4, R5 ;
        /*0020*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], R24 ;
        /*0030*/                   MUFU.RCP R6, R7 ;
        /*0040*/              @!P0 BRA 0x70 ;
        /*0050*/                   UTMALDG.2D [UR12], [UR10], desc[URZ] ;
        /*0060*/                   UIADD3 UR6, UR6, 0x1, URZ ;
        /*0070*/               @P1 BRA 0x10 ;
        /*0080*/                   STG.E [R2.64], R6 ;
        /*0090*/                   EXIT ;
        /*00a0*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R5+URZ+0x20], R3 ;
        /*00b0*/                   BRA 0x30 ;
"""


def test_sass_profile_finds_loop_producer_and_skips_out_of_line_blocks():
    p = cs.profile(_FAKE_SASS)
    assert p.loop_span == (0x10, 0x70)  # not the out-of-line branch behind EXIT
    assert p.loop == collections.Counter({"FFMA": 1, "HGMMA": 1, "MUFU": 1, "BRA": 2})
    assert p.producer == collections.Counter({"UTMALDG": 1, "UIADD3": 1})
    assert p.prologue == collections.Counter({"MOV": 1}) and p.epilogue == collections.Counter({"STG": 1, "EXIT": 1})
    clocks = cs.pipe_clocks(collections.Counter({"MUFU": 4, "FFMA": 10}))
    assert clocks["mufu"] == 32 and cs.smsp_cycles(collections.Counter({"MUFU": 4, "FFMA": 10})) == 32
    with pytest.raises(ValueError):
        cs.profile("no sass here")


def test_ws_uses_measured_role_counts_when_present(monkeypatch):
    from cutlass_kernels import sass

    # without an sm90ws variant's counts: the design
    assert "design" in cm.ws_design(replace(cm.DEFAULT_SLOTS, ws_slots=None)).source
    monkeypatch.setattr(sass, "role_counts", lambda text: {"transform": collections.Counter(
        {"FFMA.FTZ": 90, "MUFU.RCP": 10, "F2FP.BF16.F32.PACK_AB": 20, "LDS.128": 5})}, raising=False)
    slots = cm._ws_slots_from_sass("")
    assert slots == pytest.approx(12.5)
    measured = cm.ws_design(replace(cm.DEFAULT_SLOTS, ws_slots=slots))
    assert measured.slots_per_element == pytest.approx(12.5) and cm.WS_NAME in measured.source


def test_a_registered_ws_variant_that_does_not_build_falls_back_to_the_design(monkeypatch):
    real = cs.variant_sass

    def fake(name, arch="sm_90a", cache_dir=None):
        if name == cm.WS_NAME:
            raise RuntimeError("building it failed: test")
        return real(name, arch, cache_dir)

    monkeypatch.setattr(cs, "find_variants", lambda prefix: [cm.WS_NAME])
    monkeypatch.setattr(cs, "variant_sass", fake)
    inp = cm.sass_inputs()
    assert inp.ws_slots is None and "did not build" in inp.source
    assert "design" in cm.ws_design(inp).source


def test_backward_floor_bounds_every_ws_prediction(rep):
    """The free-epilogue row (memory and MMA only) is at or below every issue-16 design and build
    at each shape, and above the linear backward where the dgrad's extra bytes dominate (fc2, N = K/4):
    the reason the 1.10x goal is out of reach there while only x is saved."""
    by_shape: dict = {}
    for r in rep["backward"]:
        by_shape.setdefault(r["shape"], {})[r["variant"]] = r["predicted_us"]
    for shape, v in by_shape.items():
        floor = v["new, free epi"]
        for name in ("new (issue 16)", "new, lean epi", "sm90ws (built)", "sm90wspp (built)"):
            assert floor <= v[name] * (1 + 1e-9), (shape, name)
        if shape.endswith("fc2") and not shape.startswith("KAT-B"):
            assert floor > 1.10 * v["linear backward"], shape
