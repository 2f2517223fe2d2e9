"""bench.report: tables, ratios and plots from pytest-benchmark JSON (synthetic and real)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a top-level package of the repository, not installed
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402


def _bench(group, name, median, **extra):
    return {"group": group, "name": name, "fullname": f"bench/x.py::{name}", "params": {},
            "extra_info": extra, "stats": {"median": median, "mean": median, "min": median, "rounds": 5}}


def _synthetic() -> dict:
    benches = []
    # rational: looped 4x slower than fusedkat_torch, vectorized 2x, at every config and pass
    for p in ("fwd", "fwd+bwd"):
        scale = 1.0 if p == "fwd" else 3.0
        for g, d in [(1, 512), (2, 512), (4, 512), (8, 512), (16, 512), (8, 128), (8, 2048)]:
            base = scale * d / 512 * 1e-3
            for impl, factor, mem in (("looped", 4.0, 40), ("vectorized", 2.0, 30), ("fusedkat_torch", 1.0, 10)):
                benches.append(_bench("rational", f"test_rational[{p}-{g}-{d}-{impl}]", base * factor, impl=impl,
                                      groups=g, dim=d, batch=4, shape=[4, 128, d], peak_mem_bytes=mem * 2**20,
                                      **{"pass": p}))
    for p in ("fwd", "fwd+bwd"):
        benches.append(_bench("activation", f"a-{p}-gelu", 0.002, impl="gelu", batch=4, shape=[4, 256, 512],
                              peak_mem_bytes=2**20, **{"pass": p}))
        benches.append(_bench("activation", f"a-{p}-grkan", 0.004, impl="grkan", batch=4, shape=[4, 256, 512],
                              peak_mem_bytes=2**21, **{"pass": p}))
        benches.append(_bench("grkan_layer", f"l-{p}-mlp", 0.010, impl="mlp", params=148224, batch=4,
                              shape=[4, 64, 192, 768], flops_formula=294912, **{"pass": p}))
        benches.append(_bench("grkan_layer", f"l-{p}-kan", 0.250, impl="kan_bspline", params=1474560, batch=4,
                              shape=[4, 64, 192, 768], flops_formula=1e8, **{"pass": p}))
    for arch, t in (("vit", 0.5), ("kat", 0.6)):
        for mode, f in (("eager", 1.0), ("compiled", 0.8)):
            benches.append(_bench("model_step", f"m-{arch}-{mode}", t * f, impl=f"{arch}_{mode}", model="T",
                                  batch=8, img_size=224, depth=12, params=5718328 if arch == "kat" else 5717416))
    benches.append(_bench("gemm_fwd", "test_gemm[a]", 0.003, impl="cute"))
    benches.append(_bench("gemm_fwd", "test_gemm[b]", 0.006, impl="torch"))
    return {"machine_info": {"fusedkat": {"device": "cpu", "size": "small", "cpu_model": "Test CPU",
                                          "torch_num_threads": 2, "malloc": "glibc defaults (dynamic mmap threshold)",
                                          "versions": {"torch": "2.x"}}},
            "datetime": "2026-11-22T08:00:00", "benchmarks": benches}


def _lines_starting(md: str, prefix: str) -> list[str]:
    return [l for l in md.splitlines() if l.startswith(prefix)]


def test_rational_tables_ratios_and_plots(tmp_path):
    path = tmp_path / "out.json"
    path.write_text(json.dumps(_synthetic()))
    assert report.main([str(path), "--out-dir", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "CPU Test CPU" in md and "glibc defaults" in md
    # groups sweep, fwd: one row per g, ms columns then speedups vs looped (4x) and vectorized (2x)
    fwd_g = md.split("### fwd, sweep over groups (D=512)")[1].split("###")[0]
    header = _lines_starting(fwd_g, "| groups")[0]
    assert "fusedkat_torch vs looped" in header and "fusedkat_torch vs vectorized" in header
    rows = _lines_starting(fwd_g, "| 1 |") + _lines_starting(fwd_g, "| 16 |")
    assert len(rows) == 2
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert cells[1:4] == ["4", "2", "1"]  # medians in ms
        assert cells[4:6] == ["4.00x", "2.00x"]
        assert cells[6:9] == ["40.0", "30.0", "10.0"]
    dim = md.split("### fwd+bwd, sweep over dim (g=8)")[1].split("###")[0]
    assert [l.split("|")[1].strip() for l in _lines_starting(dim, "| ") if l[2].isdigit()] == ["128", "512", "2048"]
    for name in ("rational_fwd.png", "rational_fwd_bwd.png", "activation.png"):
        png = (tmp_path / "r" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_other_sections(tmp_path):
    md = report.render(_synthetic())
    act = md.split("## activation")[1].split("##")[0]
    grkan = _lines_starting(act, "| grkan |")[0]
    assert "0.50x" in grkan  # throughput half of gelu's
    layer = md.split("## grkan_layer")[1].split("## ")[0]
    kan = _lines_starting(layer, "| kan_bspline |")[0]
    assert "1,474,560" in kan and "25.00x" in kan
    step = md.split("## model_step")[1].split("## ")[0]
    eager = _lines_starting(step, "| T | eager |")[0]
    assert "1.20x" in eager and "5,718,328" in eager
    gemm = md.split("## gemm_fwd")[1]
    assert "2.00x" in _lines_starting(gemm, "| test_gemm[b]")[0]


def test_bad_inputs(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing.json")]) == 2
    (tmp_path / "x.json").write_text("[1, 2]")
    assert report.main([str(tmp_path / "x.json")]) == 2
    (tmp_path / "y.json").write_text(json.dumps({"benchmarks": [{"name": "a", "group": "rational"}]}))
    assert report.main([str(tmp_path / "y.json")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "no 'benchmarks' list" in err and "--benchmark-disable" in err


def test_real_benchmark_json_renders(tmp_path):
    """A real (tiny) pytest-benchmark run of the activation suite, then the report on its JSON."""
    out = tmp_path / "real.json"
    env = dict(os.environ, FUSEDKAT_BENCH_SIZE="small")
    cmd = [sys.executable, "-m", "pytest", "bench/bench_activation.py", "-q", "-p", "no:cacheprovider",
           "-k", "gelu or grkan", f"--benchmark-json={out}", "--benchmark-max-time=0.01",
           "--benchmark-min-rounds=2", "--benchmark-warmup=off"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = report.load(out)
    assert {b["extra_info"]["impl"] for b in data["benchmarks"]} == {"gelu", "grkan"}
    assert all(b["stats"]["rounds"] >= 2 for b in data["benchmarks"])
    env_info = data["machine_info"]["fusedkat"]
    assert env_info["size"] == "small" and "malloc" in env_info and env_info["torch_num_threads"] >= 1
    assert all(b["extra_info"]["peak_mem_method"] for b in data["benchmarks"])
    md = report.render(data)
    assert "## activation" in md and _lines_starting(md.split("## activation")[1], "| grkan |")


def _gemm_bench(group: str, impl: str, median_s: float, **info) -> dict:
    return {"name": f"test[{group}-{impl}]", "group": group, "stats": {"median": median_s},
            "extra_info": {"impl": impl, **info}}


def test_gemm_suites_summaries_state_the_goal_ratios():
    """bench_gemm_fwd / bench_gemm_bwd's ``summarize``: per shape the goal ratios of issues 6 and 7,
    computed from the medians of one run; an implementation missing from the run prints '-'."""
    from bench import bench_gemm_bwd, bench_gemm_fwd

    bwd = {"benchmarks": [
        _gemm_bench("gemm_bwd_T_192x768", "cublas_linear_bwd", 1.0e-4),
        _gemm_bench("gemm_bwd_T_192x768", "unfused", 1.1e-4),
        _gemm_bench("gemm_bwd_T_192x768", "fused", 4.4e-4),
        _gemm_bench("layer_step_T_192x768", "linear_gelu", 2.0e-4, peak_mem_bytes=400),
        _gemm_bench("layer_step_T_192x768", "grkan", 3.0e-4, peak_mem_bytes=300),
        _gemm_bench("gemm_bwd_B_768x3072", "cublas_linear_bwd", 5.0e-4),
        _gemm_bench("gemm_bwd_B_768x3072", "unfused", 6.0e-4),
    ]}
    rows = {line.split(" | ")[0]: line.split(" | ") for line in bench_gemm_bwd.summarize(bwd).splitlines()}
    t = rows["| T_192x768"]
    assert t[1:6] == ["0.100", "0.110", "0.440", "-", "-"]  # the sm_90-only variants not in this run
    assert t[6:11] == ["1.10", "4.40", "4.00", "1.50", "0.75 |"]
    b = rows["| B_768x3072"]
    assert b[3] == "-" and b[6] == "1.20" and b[7] == "-" and b[9] == "-"

    fwd = {"benchmarks": [
        _gemm_bench("gemm_fwd_peak", "peak", 1.0, flops=600e12),
        _gemm_bench("gemm_fwd_T_192x768", "cublas_linear", 1.0e-4, flops=2e9),
        _gemm_bench("gemm_fwd_T_192x768", "unfused", 1.5e-4, flops=2e9),
        _gemm_bench("gemm_fwd_T_192x768", "fused", 3.0e-4, flops=2e9),
    ]}
    text = bench_gemm_fwd.summarize(fwd)
    assert text.startswith("measured bf16 peak (torch.mm): 600 TFLOP/s")
    line = next(ln for ln in text.splitlines() if ln.startswith("| T_192x768"))
    assert line.split(" | ")[-3:] == ["3.00", "0.50", "- |"]
