"""The decision table (cutlass_kernels.decisions): generated from bench/results, measured where a GPU
time exists, the cost model elsewhere, forced by FUSEDKAT_FUSED_FWD/BWD, shown by `fusedkat info`.
The device capability is faked (as the dispatch tests do) because this runs without a GPU."""
import json

import pytest
import torch

from cutlass_kernels import abi, decisions
from cutlass_kernels.costmodel import predicted_faster
from cutlass_kernels.gemm import bwd_launch, fwd_launch

CUDA0 = torch.device("cuda", 0)


def _fake_gpu(monkeypatch, cap):
    monkeypatch.setattr(abi, "device_info", lambda device, cap=cap: (cap, 132))
    for env in (fwd_launch.ENV_FUSED_FWD, bwd_launch.ENV_FUSED_BWD):
        monkeypatch.delenv(env, raising=False)


def test_committed_table_is_what_the_results_generate():
    """decisions.json is regenerated from bench/results, never typed by hand."""
    assert json.loads(decisions.TABLE_FILE.read_text()) == json.loads(json.dumps(decisions.build()))


def test_h100_verdicts_come_from_gpu_time_only():
    rec = next(r for r in decisions.table()["results"] if r["arch"] == "sm_90a")
    decided = [e for e in rec["entries"] if e["faster"]]
    assert {(e["op"], tuple(e["shape"])) for e in decided} == {("forward", (25216, 768, 3072)),
                                                                ("backward", (25216, 768, 3072))}
    for e in decided:  # the profiled GPU times: fused slower in both directions
        assert e["gpu_us"]["fused"] > e["gpu_us"]["unfused"] > 0 and e["faster"] == "unfused"
    # wall-time medians are stored but never decide (host-inclusive)
    assert all(e["faster"] is None for e in rec["entries"] if e["gpu_us"]["fused"] is None)
    assert len(rec["entries"]) == 12


def test_auto_follows_the_measurement_on_sm90_large(monkeypatch):
    _fake_gpu(monkeypatch, (9, 0))
    for shape in ((12608, 192, 768), (25216, 768, 3072), (4096, 3072, 768)):
        assert fwd_launch.enabled(CUDA0, shape) is False
        assert bwd_launch.enabled(CUDA0, shape) is False
        assert decisions.choose("sm_90a", "forward", shape)[1] == "measured on H100 2026-11-22"


@pytest.mark.parametrize("cap", [(8, 0), (8, 6), (8, 9), (9, 0)])
def test_auto_follows_the_cost_model_where_nothing_was_measured(monkeypatch, cap):
    _fake_gpu(monkeypatch, cap)
    arch = decisions._arch_of(cap)
    shapes = [(12608, 192, 768), (12608, 768, 192), (25216, 3072, 768), (1024, 192, 768), (2048, 768, 3072)]
    if arch == "sm_90a":
        shapes = [s for s in shapes if s[0] < decisions.LARGE_M]
    for shape in shapes:
        for op, module, design in (("forward", fwd_launch, "new"), ("backward", bwd_launch, "old")):
            want = predicted_faster(arch, op, shape, design=design) == "fused" and (arch, op) not in decisions.GPU_UNVERIFIED
            assert module.enabled(CUDA0, shape) is want, (arch, op, shape)
            assert decisions.choose(arch, op, shape)[1].startswith("cost model")


def test_auto_never_picks_a_kernel_that_has_not_run_on_a_gpu(monkeypatch):
    """sm_90's fused forward (the warp-specialized kernel) has not run on a GPU: even where the model
    predicts it faster (KAT-B fc2 just below the large class), auto stays unfused and says why."""
    _fake_gpu(monkeypatch, (9, 0))
    shape = (4000, 3072, 768)
    assert predicted_faster("sm_90a", "forward", shape, design="new") == "fused"
    assert fwd_launch.enabled(CUDA0, shape) is False
    assert "has not run on a GPU" in decisions.choose("sm_90a", "forward", shape)[1]


def test_the_table_is_not_constant_across_shapes(monkeypatch):
    """The cost model predicts the fused forward faster at KAT-T's fc1 on sm_89 (and slower at
    KAT-B's): the table must follow the shape, not one answer per arch."""
    _fake_gpu(monkeypatch, (8, 9))
    assert fwd_launch.enabled(CUDA0, (12608, 192, 768)) is True
    assert fwd_launch.enabled(CUDA0, (25216, 768, 3072)) is False


def test_env_still_forces_and_rejects_nonsense(monkeypatch):
    _fake_gpu(monkeypatch, (9, 0))
    monkeypatch.setenv(fwd_launch.ENV_FUSED_FWD, "1")
    monkeypatch.setenv(bwd_launch.ENV_FUSED_BWD, "1")
    assert fwd_launch.enabled(CUDA0, (25216, 768, 3072)) and bwd_launch.enabled(CUDA0, (25216, 768, 3072))
    _fake_gpu(monkeypatch, (8, 9))
    monkeypatch.setenv(fwd_launch.ENV_FUSED_FWD, "0")
    assert fwd_launch.enabled(CUDA0, (12608, 192, 768)) is False
    monkeypatch.setenv(fwd_launch.ENV_FUSED_FWD, "maybe")
    with pytest.raises(ValueError, match="FUSEDKAT_FUSED_FWD='maybe'"):
        fwd_launch.enabled(CUDA0, (12608, 192, 768))


def test_unknown_arch_runs_unfused_and_bad_op_is_an_error(monkeypatch):
    _fake_gpu(monkeypatch, (10, 0))
    assert fwd_launch.enabled(CUDA0, (25216, 768, 3072)) is False
    with pytest.raises(ValueError, match="op must be"):
        decisions.choose("sm_90a", "sideways", (1, 2, 3))


def test_info_shows_the_table_and_its_source(capsys):
    from fusedkat.cli import main

    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "sm_90a  forward  large unfused (measured on H100 2026-11-22)" in text
    assert "sm_86   backward large unfused (cost model)" in text


def test_info_names_the_source_on_a_faked_gpu(monkeypatch):
    from fusedkat.app import info

    _fake_gpu(monkeypatch, (9, 0))
    ops = {"rational_linear_forward": {"backend": "cute"}}
    g = info._gemm_paths(CUDA0, ops)
    assert g == {"forward": "unfused", "backward": "unfused", "forward_source": "measured on H100 2026-11-22",
                 "backward_source": "measured on H100 2026-11-22"}
    monkeypatch.setenv(bwd_launch.ENV_FUSED_BWD, "1")
    g = info._gemm_paths(CUDA0, ops)
    # "fused <kernel>": the sm_90 fused backward names its kernel (FUSEDKAT_BWD_KERNEL)
    assert g["backward"].split()[0] == "fused" and g["backward_source"] == "forced by FUSEDKAT_FUSED_BWD"


def test_cpu_results_files_are_not_gpu_evidence(tmp_path):
    """A results file without a GPU (e.g. bench.compile_time's JSON) next to the GPU ones leaves
    the table unchanged."""
    import shutil

    for p in decisions.RESULTS_DIR.glob("*.json"):
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "2099-01-01-cpu.json").write_text(json.dumps({"median_first_step_s": {"vit": 1.0, "kat": 2.0}}))
    assert decisions.build(tmp_path)["results"] == decisions.build()["results"]
    assert len(decisions.build(tmp_path)["results"]) == len(list(decisions.RESULTS_DIR.glob("*.json")))
