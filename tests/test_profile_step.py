"""bench.profile_step: time per kernel class of a KAT step and its ViT twin, on CPU with real timm models."""
import json

import pytest
import torch

pytest.importorskip("timm")
from bench import profile_step as ps  # noqa: E402


def test_classify_by_enclosing_op_then_own_name():
    assert ps.classify("aten::mul", ["fusedkat::rational_linear", "aten::linear"]) == "rational_fwd"
    assert ps.classify("aten::mm", ["fusedkat::rational_linear_backward"]) == "rational_bwd"
    assert ps.classify("aten::abs", ["fusedkat::group_rational_backward", "fusedkat::group_rational"]) == "rational_bwd"
    assert ps.classify("aten::mm", ["aten::linear"]) == "gemm"
    assert ps.classify("aten::add_", ["Optimizer.step#AdamW.step"]) == "optimizer"
    assert ps.classify("aten::mul", ["aten::native_layer_norm", "aten::layer_norm"]) == "norms"
    assert ps.classify("aten::bmm", ["aten::_scaled_dot_product_flash_attention_for_cpu"]) == "attention"
    assert ps.classify("triton_red_fused_sum_0", []) == "reductions"
    assert ps.classify("nvjet_sm90_tst_192x192", []) == "gemm"
    assert ps.classify("aten::gelu", []) == "other"


def test_kat_and_vit_step_breakdown_on_cpu(tmp_path):
    out = tmp_path / "p.json"
    assert ps.main(["--batch", "2", "--img-size", "32", "--depth", "1", "--steps", "1", "--device", "cpu",
                    "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    kat, vit = r["kat"]["classes"], r["vit"]["classes"]
    assert set(kat) == set(vit) == set(ps.CLASSES)
    assert kat["rational_fwd"] > 0 and kat["rational_bwd"] > 0  # the GR-KAN ops are found and named
    assert vit["rational_fwd"] == vit["rational_bwd"] == 0  # ViT has none
    for c in ("gemm", "attention", "norms", "optimizer"):
        assert kat[c] > 0 and vit[c] > 0, c
    assert r["kat"]["total_ms"] == pytest.approx(sum(kat.values()), abs=0.01)
    assert "rational_bwd" in ps.format_pair(r)
