"""fusedkat.kanify on plain torch and timm models: what is found, what is skipped and why, the
converted model's logits against the original, compile (fullgraph) and the fuse pass."""
from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

timm = pytest.importorskip("timm")

import fusedkat  # noqa: E402
from fusedkat.models.kanify import identify_activation  # noqa: E402
from fusedkat.nn import GroupRational, KanLinear  # noqa: E402
from kanify_helpers import GR, RL, assert_state_kept, compile_with_fuse_pass, count, spread_mlps  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _mlp(act: nn.Module, d=16, h=32, out=8, drop=0.0) -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(d, h), act, nn.Dropout(drop), nn.Linear(h, out))
    spread_mlps(m)
    return m.eval()


def test_kanify_is_a_lazy_attribute():
    assert fusedkat.kanify is fusedkat.models.kanify
    assert "kanify" in dir(fusedkat)


@pytest.mark.parametrize("act, target", [(nn.GELU(), "gelu"), (nn.GELU(approximate="tanh"), "gelu_tanh"),
                                         (timm.layers.QuickGELU(), "quick_gelu"), (nn.SiLU(), "silu"),
                                         (nn.ReLU(), "relu"), (nn.Tanh(), "tanh")])
def test_plain_mlp_converted_and_close(act, target):
    m = _mlp(act)
    x = 0.5 * torch.randn(64, 16, dtype=torch.float32)
    with torch.no_grad():
        assert m[0](x).abs().max() < 3  # pre-activations inside the fit interval [-3, 3]
    k, rep = fusedkat.kanify(m)
    assert [c.activation for c in rep.converted] == [target] and not rep.skipped
    c = rep.converted[0]
    assert (c.name, c.fc1, c.act, c.fc2, c.in_features, c.hidden_features, c.out_features) == ("", "0", "1", "3", 16, 32, 8)
    assert isinstance(k[0], KanLinear) and k[0].weight is not m[0].weight  # a deep copy by default
    assert isinstance(k[1], GroupRational) and k[1].fit.target == target
    assert isinstance(m[1], type(act))  # the original is untouched
    assert_state_kept(m, k)
    with torch.no_grad():
        y, yk = m(x), k(x)
        # the identity rational in front of fc1 is exact: fc1's output is bit-for-bit the same
        torch.testing.assert_close(k[0](x), m[0](x), rtol=1e-6, atol=1e-6)
    err = (yk - y).abs().max().item()
    # the report's fit error bounds the hidden error; fc2 has unit-variance weights over 32 inputs
    assert err <= 4 * c.fit_max * 32 ** 0.5 + 1e-6, (err, c.fit_max)
    assert c.fit_max < (0.06 if target == "relu" else 5e-3)


def test_unknown_activation_fitted_numerically_and_reported():
    m = _mlp(nn.Softsign())
    k, rep = fusedkat.kanify(m)
    c = rep.converted[0]
    assert c.activation == "Softsign (fitted)"
    # x / (1 + |x|) is itself a form-A rational: the numerical fit finds it
    assert c.fit_max < 1e-9
    x = torch.randn(32, 16)
    with torch.no_grad():
        torch.testing.assert_close(k(x), m(x), rtol=1e-5, atol=1e-5)
    # a step function has no good rational fit: the report says so (it does not hide it)
    _, rep = fusedkat.kanify(_mlp(nn.Hardtanh(-0.1, 0.1)))
    assert rep.converted[0].activation == "Hardtanh (fitted)" and rep.converted[0].fit_max > 1e-3


def test_identify_activation_by_values_not_class():
    class MyGelu(nn.Module):  # a class kanify has never heard of, computing tanh-GELU
        def forward(self, x):
            return 0.5 * x * (1 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))

    assert identify_activation(MyGelu()) == "gelu_tanh"
    assert identify_activation(nn.GELU()) == "gelu"  # erf GELU is not confused with the tanh one
    fn = identify_activation(nn.Softsign())
    x = np.linspace(-3, 3, 11)
    np.testing.assert_allclose(fn(x), x / (1 + np.abs(x)), rtol=1e-15)


def test_not_convertible_structures_are_reported():
    torch.manual_seed(0)
    cases = {
        "norm between": (nn.Sequential(nn.Linear(16, 32), nn.SiLU(), nn.LayerNorm(32), nn.Linear(32, 8)),
                         "feeds 2 (LayerNorm), not a linear layer"),
        "act at the end": (nn.Sequential(nn.Linear(16, 32), nn.GELU()), "the model's output"),
        "conv before": (nn.Sequential(nn.Conv1d(4, 8, 1), nn.GELU(), nn.Flatten(), nn.Linear(8, 8)),
                        "input comes from 0 (Conv1d)"),
    }
    for what, (model, reason) in cases.items():
        k, rep = fusedkat.kanify(model)
        assert not rep.converted, what
        assert len(rep.skipped) == 1 and reason in rep.skipped[0].reason, (what, rep.skipped)
        assert_state_kept(model, k)
        assert not any(isinstance(mod, GroupRational) for mod in k.modules()), what
    _, rep = fusedkat.kanify(nn.Sequential(nn.Linear(16, 36), nn.GELU(), nn.Linear(36, 8)))
    assert "hidden_features=36 not divisible by num_groups=8" in rep.skipped[0].reason
    _, rep = fusedkat.kanify(nn.Sequential(nn.Linear(16, 36), nn.GELU(), nn.Linear(36, 8)), num_groups=4)
    assert len(rep.converted) == 1


def test_gated_mlps_reported_not_convertible():
    for layer in (timm.layers.SwiGLU, timm.layers.SwiGLUPacked):
        vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, mlp_layer=layer, act_layer="silu")
        k, rep = fusedkat.kanify(vit)
        assert not rep.converted
        assert [s.path for s in rep.skipped] == ["blocks.0.mlp.act"]
        assert rep.skipped[0].reason.startswith("gated MLP"), rep.skipped[0].reason


def test_bad_arguments():
    m = _mlp(nn.GELU())
    with pytest.raises(TypeError, match="nn.Module"):
        fusedkat.kanify("model")
    with pytest.raises(ValueError, match="num_groups"):
        fusedkat.kanify(m, num_groups=0)
    with pytest.raises(ValueError, match="form"):
        fusedkat.kanify(m, form="C")
    with pytest.raises(ValueError, match="unknown target"):
        fusedkat.kanify(m, act_init="gleu")
    with pytest.raises(TypeError, match="include"):
        fusedkat.kanify(m, include=[3])


def _timm(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()
    spread_mlps(m)
    return m


TIMM = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, depth=2, embed_dim=64, num_heads=2), 32, 2),
    "deit": ("deit_tiny_patch16_224", dict(img_size=32, depth=1, embed_dim=64, num_heads=2), 32, 1),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=56, depths=(1, 1), num_heads=(1, 2), embed_dim=32), 56, 2),
    "convnext": ("convnext_atto", dict(depths=(1, 1, 1, 1), conv_mlp=False, ls_init_value=1.0), 32, 4),
}


@pytest.mark.parametrize("family", sorted(TIMM))
def test_timm_families_logits_compile_and_fusion(family):
    name, kw, size, n_mlps = TIMM[family]
    model = _timm(name, **kw)
    x = torch.randn(2, 3, size, size)
    k, rep = fusedkat.kanify(model)
    assert len(rep.converted) == n_mlps and not rep.skipped, str(rep)
    assert {c.activation for c in rep.converted} == {"gelu"}
    added = assert_state_kept(model, k)
    assert len(added) == 4 * n_mlps  # F1 and F2 of each MLP: numerator and denominator
    with torch.no_grad():
        y, yk = model(x), k(x)
    err = (yk - y).abs().max().item()
    assert err < 2e-2 * y.abs().max().item(), (err, y.abs().max().item())
    # control: swish rationals in place of the GELU fits are visibly worse
    k_swish, _ = fusedkat.kanify(model, act_init="swish")
    with torch.no_grad():
        assert (k_swish(x) - y).abs().max().item() > 5 * err

    compiled, fused, graphs = compile_with_fuse_pass(k)
    with torch.no_grad():
        yc = compiled(x)
    assert len(graphs) == 1  # fullgraph: one graph, no break
    assert fused == [n_mlps]  # every F2 -> fc2 pair fused (F1 -> fc1 is one op already)
    assert count(graphs[0], RL) == 2 * n_mlps and count(graphs[0], GR) == 0
    torch.testing.assert_close(yc, yk, rtol=1e-5, atol=1e-5)


def test_conv_mlp_convnext_is_reported():
    _, rep = fusedkat.kanify(timm.create_model("convnext_atto", depths=(1, 1, 1, 1), conv_mlp=True))
    assert not rep.converted and len(rep.skipped) == 4
    assert all("(Conv2d), not from a linear layer" in s.reason for s in rep.skipped)


def test_include_exclude_and_act_init():
    vit = _timm("vit_tiny_patch16_224", img_size=32, depth=3, embed_dim=64, num_heads=2, act_layer="quick_gelu")
    k, rep = fusedkat.kanify(vit, include="blocks.[12]*", exclude=["*.2.mlp"], act_init="swish", inplace=True)
    assert k is vit
    assert [c.name for c in rep.converted] == ["blocks.1.mlp"]
    assert {(s.path, s.reason) for s in rep.skipped} == {("blocks.0.mlp.act", "not matched by include"),
                                                          ("blocks.2.mlp.act", "matched by exclude")}
    c = rep.converted[0]
    assert (c.activation, c.init) == ("quick_gelu", "silu") and c.fit_max > 0.1  # vs the real activation
    assert isinstance(vit.blocks[1].mlp.act, GroupRational) and isinstance(vit.blocks[0].mlp.act, timm.layers.QuickGELU)
    assert "quick_gelu->silu" in str(rep) and rep.to_dict()["converted"][0]["fc2"] == "blocks.1.mlp.fc2"


def test_training_step_updates_rationals():
    model = _mlp(nn.GELU(), drop=0.1).train()
    k, _ = fusedkat.kanify(model)
    assert k.training
    opt = torch.optim.SGD(k.parameters(), lr=0.1)
    x, y = torch.randn(16, 16), torch.randn(16, 8)
    before = copy.deepcopy(k.state_dict())
    nn.functional.mse_loss(k(x), y).backward()
    opt.step()
    for key in ("0.rational.weight_numerator", "1.weight_denominator", "0.weight", "3.weight"):
        assert not torch.equal(before[key], k.state_dict()[key]), key


def test_chained_mlps_and_shared_activation():
    torch.manual_seed(0)
    gelu = nn.GELU()  # one instance used by two MLPs (a different parent each)
    m = nn.Sequential(nn.Sequential(nn.Linear(16, 32), gelu, nn.Linear(32, 16), nn.SiLU(), nn.Linear(16, 16)),
                      nn.Sequential(nn.Linear(16, 32), gelu, nn.Linear(32, 8))).eval()
    spread_mlps(m)
    k, rep = fusedkat.kanify(m)
    # 0.2 is fc2 of the first MLP and fc1 of the second: both conversions apply
    assert [(c.fc1, c.act, c.fc2) for c in rep.converted] == [("0.0", "0.1", "0.2"), ("0.2", "0.3", "0.4"),
                                                               ("1.0", "1.1", "1.2")]
    assert k[0][1] is not k[1][1] and isinstance(k[1][1], GroupRational)
    x = 0.5 * torch.randn(32, 16)
    with torch.no_grad():
        y, yk = m(x), k(x)
    assert (yk - y).abs().max().item() < 2e-2 * y.abs().max().item()


def test_kanify_does_not_import_transformers():
    code = ("import sys, torch, fusedkat; from torch import nn; "
            "fusedkat.kanify(nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))); "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
