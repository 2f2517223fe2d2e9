"""bench.gpu_results: folding a GPU results folder (scripts/gpu_suite.sh) into one small JSON."""
from __future__ import annotations

import json

import pytest

from bench import gpu_results

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1"
 skipped="0" tests="3"><testcase classname="tests.gpu.test_x" name="test_ok"/><testcase classname="tests.gpu.test_x"
 name="test_ok2"/><testcase classname="tests.gpu.test_x" name="test_bad"><failure message="x">boom</failure>
 </testcase></testsuite></testsuites>"""

HOST = """== rational_linear_forward: host 188.7 us/call, GPU stream 188.4 us/call
         88201 function calls in 0.099 seconds
      200    0.005    0.000    0.082    0.000 fwd_launch.py:242(rational_linear_forward)
== kernel time per call at rows=25216, K=768, N=3072 (torch.profiler, 20 calls)
rational_linear_forward: 374.1 us of GPU work per call (kernel_a: 370.5)
rational_linear_backward [unfused]: 390.2 us of GPU work per call (nvjet_a: 152.0, kernel_b: 60.1)
cublas_linear_backward (reference): 377.0 us of GPU work per call (nvjet_a: 151.0)
"""


def _bench_json(median_s: float) -> dict:
    stats = {"min": median_s * 0.9, "max": median_s * 1.2, "mean": median_s * 1.05, "stddev": median_s * 0.1,
             "rounds": 7, "median": median_s, "data": [median_s] * 7}
    return {"machine_info": {"cpu": {"brand_raw": "x"}, "python_version": "3.12.3"},
            "benchmarks": [{"name": "test_gemm_fwd[KAT-T-fc1-fused]", "stats": stats,
                            "extra_info": {"impl": "fused", "rows": 25216}}]}


@pytest.fixture
def results_dir(tmp_path):
    (tmp_path / "device.txt").write_text("2.11.0+cu130 NVIDIA H100 80GB HBM3 (9, 0)\n")
    (tmp_path / "junit_test_x.xml").write_text(JUNIT)
    (tmp_path / "bench_gemm_fwd.json").write_text(json.dumps(_bench_json(3.5e-4)))
    (tmp_path / "model_step.json").write_text("")  # a phase cut off by its timeout
    (tmp_path / "host_overhead.txt").write_text(HOST)
    return tmp_path


def test_summary_counts_tests_compacts_benchmarks_and_reports_cut_off_phases(results_dir):
    s = gpu_results.summarize(str(results_dir), note="from a test")
    assert s["device"].endswith("(9, 0)") and s["note"] == "from a test"
    assert s["gpu_tests"]["tests"] == 3 and s["gpu_tests"]["failures"] == 1
    assert s["gpu_tests"]["failed_names"] == ["tests.gpu.test_x::test_bad"] and s["gpu_tests"]["files"] == ["test_x"]
    row = s["gemm_fwd"]["test_gemm_fwd[KAT-T-fc1-fused]"]
    assert row["median_ms"] == pytest.approx(0.35) and row["rounds"] == 7 and "data" not in row
    assert row["extra_info"]["rows"] == 25216
    assert "gemm_bwd" not in s and any("model_step.json" in m for m in s["missing"])
    lines = HOST.splitlines()
    assert s["host_overhead"] == [lines[0], lines[3], lines[4], lines[5], lines[6]]


def test_cli_writes_the_file_and_rejects_a_missing_folder(results_dir, tmp_path, capsys):
    out = tmp_path / "res" / "r.json"
    assert gpu_results.main([str(results_dir), "--out", str(out), "--note", "n"]) == 0
    assert json.loads(out.read_text())["gpu_tests"]["tests"] == 3
    with pytest.raises(SystemExit) as e:
        gpu_results.main([str(tmp_path / "nope")])
    assert e.value.code == 2 and "no such folder" in capsys.readouterr().err


def test_host_overhead_labels_keep_kernels_with_a_common_prefix_apart():
    """dgrad and wgrad CuTe kernels share their first 60 characters; the GPU kernel-time table must
    still list them separately (in the first H100 run they were summed under one name)."""
    from bench.host_overhead import _labels

    dgrad, wgrad = "kernel_cutlass_" + "x" * 60 + "_a", "kernel_cutlass_" + "x" * 60 + "_b"
    labels = _labels([dgrad, "reduce", wgrad, dgrad])
    assert labels[dgrad] != labels[wgrad] and labels[wgrad].endswith("#2") and labels["reduce"] == "reduce"
