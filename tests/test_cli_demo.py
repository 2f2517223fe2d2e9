"""``fusedkat demo`` end to end on CPU: a tiny eager run (structure, plots, memory), the real
``--quick`` run with torch.compile (it must learn), and its error paths."""
from __future__ import annotations

import json

import pytest
import torch

from cli_inprocess import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _vit_twin_params(dim=64, depth=4, hidden=256, patch=2, tokens=16, classes=10) -> int:
    """Parameter count of the demo's ViT twin, written out layer by layer (independent of timm)."""
    patch_embed = patch * patch * 1 * dim + dim
    pos_embed = tokens * dim
    block = (2 * dim) + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + (2 * dim) \
        + (dim * hidden + hidden) + (hidden * dim + dim)
    return patch_embed + pos_embed + depth * block + 2 * dim + dim * classes + classes


def _rational_params(depth=4, groups=8, m=5, n=4) -> int:
    """Two GroupRationals per block: a shared numerator (m+1) and one denominator (n) per group."""
    return depth * 2 * ((m + 1) + groups * n)


def test_demo_tiny_eager_writes_table_json_and_plots(tmp_path, capsys):
    js, out = tmp_path / "r.json", tmp_path / "plots"
    rc = main(["demo", "--no-compile", "--steps", "3", "--no-progress", "--json", str(js), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    r = json.loads(js.read_text())
    assert set(r) >= {"kat", "vit", "setup", "files"}
    assert r["vit"]["params"] == _vit_twin_params()
    assert r["kat"]["params"] == _vit_twin_params() + _rational_params()
    for name in ("kat", "vit"):
        m = r[name]
        assert m["steps"] == 3 and len(m["history"]) == 1
        assert 0.0 <= m["accuracy"] <= 1.0 and m["test_loss"] > 0
        assert m["images_per_s"] > 0  # steps 1 and 3 timed (step 2 is the memory-profiled one)
        # A step allocates at least every parameter's gradient (grads are freed between steps).
        assert m["peak_step_memory_bytes"] >= 4 * m["params"]
        assert m["peak_step_memory_bytes"] < 2**30
    for row in ("test accuracy", "train images/s", "peak step memory", "parameters"):
        assert row in text
    for f in ("curves", "rationals"):
        assert (tmp_path / "plots").joinpath(r["files"][f].split("/")[-1]).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_demo_quick_compiled_learns(tmp_path, capsys):
    """The README's ``fusedkat demo --quick --json`` with torch.compile (the default): KAT must
    learn digits (paper-style claim of the demo: around 90% or better), the ViT well above chance."""
    js = tmp_path / "quick.json"
    assert main(["demo", "--quick", "--no-progress", "--no-plots", "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    assert r["setup"]["train"]["compile"] is True
    assert r["kat"]["accuracy"] >= 0.85, r["kat"]
    assert r["vit"]["accuracy"] >= 0.5, r["vit"]
    for name in ("kat", "vit"):
        h = r[name]["history"]
        assert h[-1]["train_loss"] < 0.5 * h[0]["train_loss"]
        assert r[name]["first_step_s"] > 0 and r[name]["images_per_s"] > 0
    assert "KAT" in capsys.readouterr().out


def test_demo_errors(tmp_path, capsys):
    def err() -> str:
        lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("fusedkat demo: error: ")
        return lines[0]

    if not torch.cuda.is_available():
        assert main(["demo", "--device", "cuda", "--no-progress"]) == 1
        assert "CUDA" in err()
    assert main(["demo", "--json", str(tmp_path / "nope" / "r.json"), "--no-progress"]) == 1
    assert "does not exist" in err()
    assert main(["demo", "--batch-size", "100000", "--no-progress", "--no-plots"]) == 1
    assert "larger than the training set" in err()
