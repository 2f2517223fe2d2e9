"""Packaging contracts: installs, imports cleanly and quickly, without a GPU."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess:
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_import_is_clean_and_compiles_nothing():
    code = (
        "import sys, fusedkat, torch\n"
        "assert not any(m == 'cutlass' or m.startswith('cutlass.') for m in sys.modules), 'DSL imported at import time'\n"
        "assert hasattr(torch.ops.fusedkat, 'group_rational')\n"
        "print('ok')\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    assert r.stderr.strip() == "", f"import printed warnings/logs:\n{r.stderr}"


def test_all_three_packages_are_installed():
    for pkg in ("fusedkat", "cutlass_kernels", "compile_passes"):
        r = _run(f"import {pkg}; print({pkg}.__file__)")
        assert r.returncode == 0, r.stderr
    dist = importlib.metadata.distribution("fusedkat")
    requires = " ".join(dist.requires or [])
    for dep in ("torch", "timm", "scipy", "nvtx", "nvidia-cutlass-dsl", "pytest", "hypothesis", "pytest-benchmark"):
        assert dep in requires, dep
