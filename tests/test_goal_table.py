"""bench.goal_table (the GPU suite's `goal` phase), its CPU-dry parts: the plan, the compositions'
environment, the budget, the ratios, a real run of tiny timm models on CPU, and the fold into the
results JSON (bench.gpu_results)."""
import json
import os
import subprocess

import pytest

pytest.importorskip("timm")
from bench import goal_table as gt  # noqa: E402
from bench import gpu_results  # noqa: E402


def test_plan_order_and_compositions():
    rows = gt.plan(["T", "S"], [64, 256], ["compiled", "eager"], list(gt.COMPOSITIONS))
    assert len(rows) == 2 * 2 * 2 * 4
    assert rows[0] == {"size": "T", "batch": 64, "mode": "compiled", "arch": "vit", "composition": None}
    assert [r["composition"] for r in rows[1:4]] == ["decomposed", "cute_unfused", "cute_fused"]
    assert rows[-1]["size"] == "S" and rows[-1]["batch"] == 256


def test_env_sets_unsets_and_restores(monkeypatch):
    monkeypatch.setenv("FUSEDKAT_BACKEND", "cute")
    monkeypatch.delenv("FUSEDKAT_FUSED_FWD", raising=False)
    with gt.env(gt.COMPOSITIONS["cute_fused"]):
        assert os.environ["FUSEDKAT_FUSED_FWD"] == "1" and "FUSEDKAT_BACKEND" not in os.environ
    assert os.environ["FUSEDKAT_BACKEND"] == "cute" and "FUSEDKAT_FUSED_FWD" not in os.environ
    with gt.env(gt.COMPOSITIONS["decomposed"]):
        from fusedkat.ops import dispatch

        assert dispatch.requested_backend() == "torch"


def test_ratios_pair_each_kat_row_with_its_vit():
    rows = [{"size": "T", "batch": 64, "mode": "eager", "arch": "vit", "composition": None, "ms": 10.0,
             "images_per_s": 6400.0, "peak_mem_bytes": 100, "infer_images_per_s": 20000.0},
            {"size": "T", "batch": 64, "mode": "eager", "arch": "kat", "composition": "decomposed", "ms": 12.5,
             "images_per_s": 5120.0, "peak_mem_bytes": 103, "infer_images_per_s": 16000.0},
            {"size": "T", "batch": 64, "mode": "compiled", "arch": "kat", "composition": "decomposed", "error": "x"}]
    gt.add_ratios(rows)
    assert rows[1]["vs_vit"] == {"images_per_s": 0.8, "peak_mem": 1.03, "infer_images_per_s": 0.8}
    assert "vs_vit" not in rows[2]


def test_budget_skips_rows_instead_of_overrunning():
    rows = gt.plan(["T"], [2], ["eager"], ["decomposed"])
    out = gt.goal_table(rows, budget_s=-1.0, device=None, steps=1, warmup=0, img_size=32, depth=1)
    assert out["rows"] == [] and out["skipped"] == rows


def test_real_tiny_run_on_cpu_and_fold_into_results(tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    out = res / "goal_table.json"
    assert gt.main(["--sizes", "T", "--batches", "2", "--modes", "eager", "--compositions", "cute_unfused,decomposed",
                    "--depth", "1", "--img-size", "32", "--steps", "1", "--warmup", "1", "--device", "cpu",
                    "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert "partial" not in d and not d["skipped"] and len(d["rows"]) == 3
    kat = [r for r in d["rows"] if r["arch"] == "kat"]
    assert all(r["loss_finite"] and r["ms"] > 0 and 0 < r["vs_vit"]["images_per_s"] < 10 for r in kat)
    assert all(r["infer_images_per_s"] > 0 for r in d["rows"])
    summary = gpu_results.summarize(str(res))
    assert summary["goal_table"]["rows"] == d["rows"]


def test_bad_arguments_fail_in_one_line(capsys):
    with pytest.raises(SystemExit):
        gt.main(["--modes", "fast"])
    assert "unknown mode ['fast']" in capsys.readouterr().err


def test_suite_has_the_goal_phase():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "scripts", "gpu_suite.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    text = open(script).read()
    assert "goal)" in text and "bench.goal_table" in text and "--profile" in text
