"""fusedkat.nn: GroupRational, GRKAN, KANMlp against independent float64 references."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fusedkat
from fusedkat.init import fit_rational, second_moment
from fusedkat.nn import GRKAN, GroupRational, KANMlp


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core CI: intra-op threads only spin
    yield
    torch.set_num_threads(n)


def ref_group_rational(x, num, den, form):
    """Independent float64 F: explicit powers, explicit per-channel group index."""
    x = x.double()
    k = x.shape[-1]
    g = den.shape[0]
    group = torch.arange(k) // (k // g)
    a = num.double().reshape(-1)
    b = den.double()[group]  # (K, n)
    p = sum(a[i] * x**i for i in range(a.shape[0]))
    if form == "A":
        q = 1 + sum(b[:, j - 1].abs() * x.abs() ** j for j in range(1, b.shape[1] + 1))
    else:
        q = 1 + sum(b[:, j - 1] * x**j for j in range(1, b.shape[1] + 1)).abs()
    return p / q


def _randomise(module, scale=0.3):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


@pytest.mark.parametrize("form", ["A", "B"])
def test_group_rational_layout_and_forward(form):
    torch.manual_seed(0)
    m = GroupRational(4, init="gelu", form=form)
    assert dict((k, tuple(v.shape)) for k, v in m.state_dict().items()) == {
        "weight_numerator": (1, 6), "weight_denominator": (4, 4)}
    fit = fit_rational("gelu", form=form)
    torch.testing.assert_close(m.weight_numerator.double()[0], torch.tensor(fit.numerator), atol=1e-7, rtol=0)
    assert torch.equal(m.weight_denominator[0], m.weight_denominator[3])  # every group starts equal
    _randomise(m)
    x = torch.randn(3, 5, 32) * 2
    torch.testing.assert_close(m(x).double(), ref_group_rational(x, m.weight_numerator, m.weight_denominator, form),
                               atol=1e-5, rtol=1e-5)


def test_group_rational_identity_and_reset():
    m = GroupRational(8, init="identity")
    x = torch.randn(4, 64)
    assert torch.equal(m(x), x)
    _randomise(m)
    assert not torch.equal(m(x), x)
    m.reset_parameters()
    assert torch.equal(m(x), x)


def test_group_rational_gradients_match_reference():
    torch.manual_seed(1)
    m = GroupRational(2, init="swish", order=(3, 2)).double()
    _randomise(m)
    x = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 8, dtype=torch.float64)
    (m(x) * w).sum().backward()
    num = m.weight_numerator.detach().clone().requires_grad_(True)
    den = m.weight_denominator.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    (ref_group_rational(x2, num, den, "A") * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(m.weight_numerator.grad, num.grad)
    torch.testing.assert_close(m.weight_denominator.grad, den.grad)


def test_group_rational_bad_arguments():
    with pytest.raises(ValueError, match="num_groups"):
        GroupRational(0)
    with pytest.raises(ValueError, match="form"):
        GroupRational(8, form="C")
    with pytest.raises(ValueError, match="unknown target"):
        GroupRational(8, init="not_an_activation")
    with pytest.raises(ValueError, match="degrees"):
        GroupRational(8, init=fit_rational("gelu"), order=(3, 2))
    with pytest.raises(ValueError, match="form"):
        GroupRational(8, init=fit_rational("gelu", form="B"), form="A")
    with pytest.raises(ValueError, match="divisible"):
        GroupRational(8)(torch.randn(2, 12))


@pytest.mark.parametrize("form", ["A", "B"])
def test_grkan_forward_backward_against_reference(form):
    torch.manual_seed(2)
    layer = GRKAN(32, 24, num_groups=4, init="swish", form=form)
    _randomise(layer.act, 0.1)
    x = torch.randn(5, 7, 32, requires_grad=True)
    y = layer(x)
    assert y.shape == (5, 7, 24)
    act = layer.act
    ref = torch.nn.functional.linear(ref_group_rational(x, act.weight_numerator, act.weight_denominator, form),
                                     layer.fc.weight.double(), layer.fc.bias.double())
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)
    y.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_grkan_init_statistics():
    torch.manual_seed(3)
    layer = GRKAN(512, 1024, init="gelu", input_variance=2.0)
    fit = fit_rational("gelu")
    expected = 2.0 / (512 * second_moment(fit.numerator, fit.denominator))
    assert layer.fc.weight.var().item() == pytest.approx(expected, rel=0.02)
    assert torch.count_nonzero(layer.fc.bias) == 0
    with pytest.raises(ValueError, match="divisible"):
        GRKAN(30, 8, num_groups=8)


def test_kanmlp_keys_order_and_reference_forward():
    torch.manual_seed(4)
    mlp = KANMlp(in_features=32, hidden_features=64, act_layer=nn.GELU, bias=True, drop=0.0)
    assert [n for n, _ in mlp.named_children()] == ["fc1", "act1", "drop1", "norm", "act2", "drop2", "fc2"]
    shapes = {k: tuple(v.shape) for k, v in mlp.state_dict().items()}
    assert shapes == {"fc1.weight": (64, 32), "fc1.bias": (64,), "act1.weight_numerator": (1, 6),
                      "act1.weight_denominator": (8, 4), "act2.weight_numerator": (1, 6),
                      "act2.weight_denominator": (8, 4), "fc2.weight": (32, 64), "fc2.bias": (32,)}
    assert mlp.act1.fit.target == "identity" and mlp.act2.fit.target == "silu"
    # official order: act1 -> drop1 -> fc1 -> act2 -> drop2 -> fc2
    _randomise(mlp.act1, 0.1)
    _randomise(mlp.act2, 0.1)
    with torch.no_grad():
        mlp.fc1.bias.normal_()
        mlp.fc2.bias.normal_()
    x = torch.randn(2, 9, 32)
    h = torch.nn.functional.linear(ref_group_rational(x, mlp.act1.weight_numerator, mlp.act1.weight_denominator, "A"),
                                   mlp.fc1.weight.double(), mlp.fc1.bias.double())
    ref = torch.nn.functional.linear(ref_group_rational(h, mlp.act2.weight_numerator, mlp.act2.weight_denominator, "A"),
                                     mlp.fc2.weight.double(), mlp.fc2.bias.double())
    torch.testing.assert_close(mlp(x).double(), ref, atol=1e-5, rtol=1e-5)


def test_kanmlp_init_is_variance_preserving():
    torch.manual_seed(5)
    mlp = KANMlp(256, 1024, act_init="swish")
    swish = fit_rational("swish")
    assert mlp.fc1.weight.var().item() == pytest.approx(1 / 256, rel=0.03)  # identity: E[F^2] = 1
    assert mlp.fc2.weight.var().item() == pytest.approx(
        1 / (1024 * second_moment(swish.numerator, swish.denominator)), rel=0.03)
    # the official gain^2 for swish is 2.8178 (= 1 / E[F^2] of its fit); ours is the same to 1%
    assert 1 / second_moment(swish.numerator, swish.denominator) == pytest.approx(2.8178, rel=0.01)


def test_kanmlp_uses_fused_op_unless_dropout_active(monkeypatch):
    calls = []
    real = fusedkat.ops.rational_linear

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fusedkat.ops, "rational_linear", spy)
    x = torch.randn(2, 3, 16)
    mlp = KANMlp(16, 32, drop=0.25)
    mlp.train()
    torch.manual_seed(0)
    y_train = mlp(x)
    assert calls == []  # dropout between F and the linear: separate ops
    mlp.eval()
    y_eval = mlp(x)
    assert len(calls) == 2 and not torch.allclose(y_train, y_eval)
    calls.clear()
    KANMlp(16, 32, drop=0.0).train()(x)
    assert len(calls) == 2


def test_kanmlp_dropout_path_matches_manual():
    torch.manual_seed(6)
    mlp = KANMlp(16, 32, drop=(0.5, 0.0)).train()
    x = torch.randn(4, 16)
    torch.manual_seed(11)
    y = mlp(x)
    torch.manual_seed(11)
    h = mlp.fc1(torch.nn.functional.dropout(mlp.act1(x), 0.5, True))
    ref = mlp.fc2(mlp.act2(h))
    torch.testing.assert_close(y, ref)


def test_kanmlp_timm_kwargs_and_errors():
    mlp = KANMlp(in_features=16, hidden_features=32, out_features=8, act_layer=nn.GELU,
                 norm_layer=nn.LayerNorm, bias=(True, False), drop=0.0, device="cpu", dtype=torch.float64)
    assert isinstance(mlp.norm, nn.LayerNorm) and mlp.fc2.bias is None
    assert mlp.fc1.weight.dtype == torch.float64 and mlp.act1.weight_numerator.dtype == torch.float64
    assert mlp(torch.randn(3, 16, dtype=torch.float64)).shape == (3, 8)
    with pytest.raises(ValueError, match="use_conv"):
        KANMlp(16, 32, use_conv=True)
    with pytest.raises(TypeError, match="unexpected"):
        KANMlp(16, 32, foo=1)
    with pytest.raises(ValueError, match="divisible"):
        KANMlp(16, 36)


def test_kanmlp_as_timm_block_mlp_layer():
    from timm.models.vision_transformer import Block

    torch.manual_seed(7)
    block = Block(dim=32, num_heads=4, mlp_ratio=4.0, mlp_layer=KANMlp)
    assert isinstance(block.mlp, KANMlp) and block.mlp.fc1.out_features == 128
    x = torch.randn(2, 5, 32, requires_grad=True)
    block(x).sum().backward()
    assert block.mlp.act2.weight_denominator.grad is not None
    assert math.isfinite(x.grad.abs().sum().item())
