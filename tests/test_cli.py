"""The ``fusedkat`` console script end to end on CPU: info, fit, convert, error paths.

(The demo is in test_cli_demo.py, the examples in test_cli_examples.py.)
Numbers printed by the CLI are checked against independent float64 computations written here.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch

from cli_inprocess import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _one_error_line(err: str, prog: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith(f"{prog}: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_console_script_is_registered():
    eps = [e for e in entry_points(group="console_scripts") if e.name == "fusedkat"]
    assert eps and eps[0].value == "fusedkat.cli:main"
    import fusedkat.cli

    assert eps[0].load() is fusedkat.cli.main


def test_usage_errors_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bogus"])
    assert e.value.code == 2
    _one_error_line(capsys.readouterr().err, "fusedkat")
    with pytest.raises(SystemExit) as e:
        main(["demo", "--epochs", "0"])
    assert e.value.code == 2
    assert "positive integer" in _one_error_line(capsys.readouterr().err, "fusedkat demo")
    assert main([]) == 2  # no command: help, non-zero


def test_info_reports_versions_dispatch_and_cache(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "kcache"
    (cache / "entry").mkdir(parents=True)
    (cache / "entry" / "kernel.cubin").write_bytes(b"x" * 1000)
    monkeypatch.setenv("FUSEDKAT_CACHE_DIR", str(cache))
    out_json = tmp_path / "info.json"
    assert main(["info", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    d = json.loads(out_json.read_text())
    assert d["torch"] == torch.__version__
    assert d["kernel_cache"]["path"] == str(cache)
    assert (d["kernel_cache"]["files"], d["kernel_cache"]["bytes"]) == (1, 1000)
    assert set(d["ops"]) == {"group_rational_forward", "group_rational_backward",
                             "rational_linear_forward", "rational_linear_backward"}
    if not torch.cuda.is_available():
        assert d["device"]["type"] == "cpu"
        for v in d["ops"].values():  # no GPU: every op must run on the torch backend, with a reason
            assert v["backend"] == "torch" and v["why_not_cute"]
        assert d["rational_linear_gemms"] is None and "FUSEDKAT_FUSED_BWD" not in text
    assert torch.__version__ in text and str(cache) in text
    from cutlass_kernels import abi

    assert d["kernel_launches"].startswith("TVM-FFI" if abi.ffi_enabled() else "DSL executor")
    assert f"kernel launches     {d['kernel_launches']}" in text


def test_info_reports_the_kernel_calling_convention(capsys, monkeypatch):
    monkeypatch.setenv("FUSEDKAT_TVM_FFI", "0")
    assert main(["info"]) == 0
    assert "kernel launches     DSL executor" in capsys.readouterr().out
    monkeypatch.setenv("FUSEDKAT_TVM_FFI", "sometimes")
    assert main(["info"]) == 0
    assert "kernel launches     error: FUSEDKAT_TVM_FFI='sometimes'" in capsys.readouterr().out


def test_info_reports_the_cpu_lowering(capsys, monkeypatch):
    monkeypatch.delenv("FUSEDKAT_CPU_LOWERING", raising=False)
    assert main(["info"]) == 0
    assert "compiled on CPU     kernels (FUSEDKAT_CPU_LOWERING" in capsys.readouterr().out
    monkeypatch.setenv("FUSEDKAT_CPU_LOWERING", "inline")
    assert main(["info"]) == 0
    assert "compiled on CPU     inline (" in capsys.readouterr().out
    monkeypatch.setenv("FUSEDKAT_CPU_LOWERING", "often")
    assert main(["info"]) == 0
    assert "compiled on CPU     error: FUSEDKAT_CPU_LOWERING='often'" in capsys.readouterr().out


def test_info_reports_the_gemm_paths_where_the_kernels_run():
    from fusedkat.app.info import format_info

    d = {"fusedkat": "0", "python": "3", "torch": "2", "torch_cuda": "13.0", "cuda_available": True,
         "timm": "1", "nvidia_cutlass_dsl": "4.8.1", "backend_requested": "auto", "kernel_launches": "TVM-FFI",
         "apache_tvm_ffi": "0.1.15",
         "device": {"type": "cuda", "name": "NVIDIA H100", "capability": "sm_90", "memory_bytes": 80 * 2**30},
         "ops": {"rational_linear_forward": {"backend": "cute", "why_not_cute": None}},
         "rational_linear_gemms": {"forward": "unfused", "backward": "unfused",
                                   "forward_source": "measured on H100 2026-11-22",
                                   "backward_source": "forced by FUSEDKAT_FUSED_BWD"},
         "kernel_cache": {"path": "/c", "exists": False}}
    text = format_info(d)
    assert "kernel launches     TVM-FFI (FUSEDKAT_TVM_FFI; apache-tvm-ffi 0.1.15)" in text
    assert ("rational_linear     forward unfused (measured on H100 2026-11-22), "
            "backward unfused (forced by FUSEDKAT_FUSED_BWD)") in text
    assert "NVIDIA H100 (sm_90, 80.0 GiB)" in text


def _rational64(a, b, x, form):
    p = sum(ai * x**i for i, ai in enumerate(a))
    if form == "A":
        q = 1 + sum(abs(bj) * np.abs(x) ** (j + 1) for j, bj in enumerate(b))
    else:
        q = 1 + np.abs(sum(bj * x ** (j + 1) for j, bj in enumerate(b)))
    return p / q


def _silu(x):
    return x / (1 + np.exp(-x))


def _gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


@pytest.mark.parametrize("name,form,target", [("swish", "A", _silu), ("gelu", "B", _gelu)])
def test_fit_prints_coefficients_mse_and_gain(tmp_path, capsys, name, form, target):
    js, png = tmp_path / "fit.json", tmp_path / "fit.png"
    assert main(["fit", name, "--form", form, "--json", str(js), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    r = json.loads(js.read_text())
    a, b = np.array(r["numerator"]), np.array(r["denominator"])
    assert a.shape == (6,) and b.shape == (4,)
    # The MSE it reports is the MSE of these coefficients on 1000 points in [-3, 3].
    x = np.linspace(-3, 3, 1000)
    mse = float(np.mean((_rational64(a, b, x, form) - target(x)) ** 2))
    assert mse < 1e-4
    assert r["mse"] == pytest.approx(mse, rel=1e-5, abs=1e-12)
    # E[F^2] for x ~ N(0,1) by a dense trapezoid rule (robust to the |.| kinks of both forms),
    # independent of the library's quadrature.
    t = np.linspace(-12, 12, 480001)
    ef2 = float(np.trapezoid(_rational64(a, b, t, form) ** 2 * np.exp(-t * t / 2), t) / math.sqrt(2 * math.pi))
    assert r["second_moment"] == pytest.approx(ef2, rel=1e-5)
    assert r["gain_squared"] == pytest.approx(1 / ef2, rel=1e-5)
    assert r["gain"] == pytest.approx(1 / math.sqrt(ef2), rel=1e-5)
    for v in r["numerator"][:2]:
        assert f"{v:.8g}" in out
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_fit_errors(capsys):
    assert main(["fit", "nosuchact"]) == 1
    assert "unknown activation" in _one_error_line(capsys.readouterr().err, "fusedkat fit")
    assert main(["fit", "gelu", "--form", "C"]) == 1
    _one_error_line(capsys.readouterr().err, "fusedkat fit")
    assert main(["fit", "gelu", "--plot", "/no/such/dir/x.png"]) == 1
    _one_error_line(capsys.readouterr().err, "fusedkat fit")


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    """A randomly initialised timm ViT-Tiny with a 10-class head, saved as a plain state_dict file."""
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10).eval()
    path = tmp_path_factory.mktemp("vit") / "vit_tiny.pth"
    torch.save(vit.state_dict(), path)
    return vit, path


def test_convert_round_trip_loads_in_timm_and_matches_vit(vit_file, tmp_path, capsys):
    import timm

    import fusedkat.models  # noqa: F401  (registers kat_* in timm)

    vit, src = vit_file
    dst = tmp_path / "kat.pth"
    assert main(["convert", str(src), str(dst), "--model", "vit_tiny_patch16_224"]) == 0
    out = capsys.readouterr().out
    assert "kat_tiny_patch16_224" in out and f"file={str(dst)!r}, num_classes=10)" in out
    saved = torch.load(dst, weights_only=True)
    # Every ViT tensor is carried over unchanged; the MLP rationals are added in the official layout.
    for k, v in vit.state_dict().items():
        assert torch.equal(saved[k], v), k
    extra = sorted(set(saved) - set(vit.state_dict()))
    assert extra == sorted(f"blocks.{i}.mlp.act{j}.weight_{w}" for i in range(12) for j in (1, 2)
                           for w in ("denominator", "numerator"))
    assert saved["blocks.0.mlp.act1.weight_denominator"].shape == (8, 4)
    # timm loads the written file the way the CLI says, and computes (almost) the ViT's function.
    kat = timm.create_model("kat_tiny_patch16_224", pretrained=True, num_classes=10,
                            pretrained_cfg_overlay=dict(file=str(dst), num_classes=10)).eval()
    for k, v in saved.items():
        assert torch.equal(kat.state_dict()[k], v), k
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = vit(x), kat(x)
    assert (a - b).abs().max() <= 2e-2 * a.abs().max()
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_convert_errors(vit_file, tmp_path, capsys):
    _, src = vit_file
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "o.pth")]) == 1
    assert "not found" in _one_error_line(capsys.readouterr().err, "fusedkat convert")
    assert main(["convert", str(src), str(tmp_path / "o.pth"), "--model", "no_such_model_xyz"]) == 1
    assert "unknown timm model" in _one_error_line(capsys.readouterr().err, "fusedkat convert")
    # A ViT-Tiny file read as ViT-Small: wrong shapes, named.
    assert main(["convert", str(src), str(tmp_path / "o.pth"), "--model", "vit_small_patch16_224"]) == 1
    assert "does not match" in _one_error_line(capsys.readouterr().err, "fusedkat convert")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["convert", str(garbage), str(tmp_path / "o.pth")]) == 1
    assert "is a text file" in _one_error_line(capsys.readouterr().err, "fusedkat convert")
    assert not (tmp_path / "o.pth").exists()


def test_bench_without_suite_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "--bench-dir", str(tmp_path)]) == 1
    assert "benchmark suite not found" in _one_error_line(capsys.readouterr().err, "fusedkat bench")
    assert main(["bench", "--size", "huge"]) == 1
    _one_error_line(capsys.readouterr().err, "fusedkat bench")


def test_script_error_exit_status_in_a_subprocess(tmp_path):
    """What a shell user sees: non-zero status, one line on stderr, nothing on stdout."""
    env = dict(os.environ, FUSEDKAT_DEBUG="")
    r = subprocess.run([sys.executable, "-m", "fusedkat.cli", "convert", str(tmp_path / "x.pth"), str(tmp_path / "y.pth")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1
    _one_error_line(r.stderr, "fusedkat convert")


def test_bench_runs_the_suite_and_prints_the_report(tmp_path, capfd):
    """One small benchmark through the real pipeline: pytest bench (subprocess) -> bench.report."""
    js = tmp_path / "b.json"
    rc = main(["bench", "-k", "test_activation and fwd-relu", "--json", str(js), "--out-dir", str(tmp_path / "rep"),
               "--no-plots"])
    out = capfd.readouterr().out
    assert rc == 0
    data = json.loads(js.read_text())
    assert [b["group"] for b in data["benchmarks"]] == ["activation"]
    assert data["benchmarks"][0]["stats"]["median"] > 0
    assert "activation" in out and "relu" in out  # the report's table
    assert (tmp_path / "rep" / "report.md").is_file()
