"""KAT models in timm: registry, parameter counts, layout, init, checkpoints, ViT -> KAT."""
from __future__ import annotations

import io

import pytest
import timm
import torch
from torch import nn

import fusedkat  # noqa: F401  registers the kat_* models
from fusedkat.init import fit_rational
from fusedkat.models import KAT, KATCheckpointError, vit_to_kat
from fusedkat.nn import KANMlp

SMALL = dict(img_size=32, patch_size=8, depth=2)  # fast variants of the registered architectures


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core CI: intra-op threads only spin
    yield
    torch.set_num_threads(n)


def ref_group_rational(x, num, den):
    """Independent float64 form-A F (the official kernels' function)."""
    x = x.double()
    k, g = x.shape[-1], den.shape[0]
    b = den.double()[torch.arange(k) // (k // g)]
    a = num.double().reshape(-1)
    p = sum(a[i] * x**i for i in range(a.shape[0]))
    q = 1 + sum(b[:, j - 1].abs() * x.abs() ** j for j in range(1, b.shape[1] + 1))
    return p / q


class RefKAN(nn.Module):
    """The official KAN forward (act1 -> fc1 -> act2 -> fc2) in float64, from a state_dict."""

    def __init__(self, sd, prefix):
        super().__init__()
        self.t = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}

    def forward(self, x):
        t = self.t
        h = nn.functional.linear(ref_group_rational(x, t["act1.weight_numerator"], t["act1.weight_denominator"]),
                                 t["fc1.weight"].double(), t["fc1.bias"].double())
        y = nn.functional.linear(ref_group_rational(h, t["act2.weight_numerator"], t["act2.weight_denominator"]),
                                 t["fc2.weight"].double(), t["fc2.bias"].double())
        return y.to(x.dtype)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_and_pretrained_cfgs():
    names = set(timm.list_models("kat_*"))
    for size in ("tiny", "small", "base"):
        assert {f"kat_{size}_patch16_224", f"kat_{size}_gelu_patch16_224", f"kat_{size}_swish_patch16_224"} <= names
    tags = set(timm.list_pretrained("kat_*"))
    assert {"kat_tiny_patch16_224", "kat_tiny_patch16_224.vitft", "kat_base_patch16_224.vitft"} <= tags
    cfg = timm.models.get_pretrained_cfg("kat_tiny_patch16_224.vitft")
    assert cfg.hf_hub_id == "adamdad/kat_tiny_patch16_224.vitft"
    assert cfg.url.endswith("kat_tiny_patch16_224-finetune_64f124d003803e4a7e1aba1ba23500ace359b544e8a5f0110993f25052e402fb.pth")
    assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.875 and cfg.interpolation == "bicubic"
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)


@pytest.mark.parametrize("size,vit_name,official", [
    ("tiny", "vit_tiny_patch16_224", 5_718_328),
    ("small", "vit_small_patch16_224", None),
    ("base", "vit_base_patch16_224", None),
])
def test_parameter_counts(size, vit_name, official):
    kat = timm.create_model(f"kat_{size}_patch16_224", device="meta")
    vit = timm.create_model(vit_name, device="meta")
    # KAT = ViT + per block two rationals of (1*6 + 8*4) coefficients
    assert n_params(kat) == n_params(vit) + 12 * 2 * (6 + 8 * 4)
    if official is not None:
        assert n_params(kat) == official
    assert n_params(kat) == {"tiny": 5_718_328, "small": 22_051_576, "base": 86_568_568}[size]


def test_state_dict_layout_is_official():
    kat = timm.create_model("kat_tiny_patch16_224", device="meta")
    vit = timm.create_model("vit_tiny_patch16_224", device="meta")
    expected = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    for i in range(12):
        for a in ("act1", "act2"):
            expected[f"blocks.{i}.mlp.{a}.weight_numerator"] = (1, 6)
            expected[f"blocks.{i}.mlp.{a}.weight_denominator"] = (8, 4)
    assert {k: tuple(v.shape) for k, v in kat.state_dict().items()} == expected
    assert expected["pos_embed"] == (1, 197, 192)


def test_real_tiny_model_runs_and_initialises_rationals():
    torch.manual_seed(0)
    model = timm.create_model("kat_tiny_patch16_224")
    assert isinstance(model, KAT) and n_params(model) == 5_718_328
    swish, gelu = fit_rational("swish"), fit_rational("gelu")
    for block in model.blocks:
        assert isinstance(block.mlp, KANMlp) and block.mlp.act1.form == "A"
        assert torch.equal(block.mlp.act1.weight_numerator[0], torch.tensor([0.0, 1, 0, 0, 0, 0]))
        assert torch.count_nonzero(block.mlp.act1.weight_denominator) == 0
        torch.testing.assert_close(block.mlp.act2.weight_numerator[0].double(), torch.tensor(swish.numerator),
                                   atol=1e-7, rtol=0)
    gm = timm.create_model("kat_tiny_gelu_patch16_224", **SMALL)
    torch.testing.assert_close(gm.blocks[0].mlp.act2.weight_denominator[5].double(), torch.tensor(gelu.denominator),
                               atol=1e-7, rtol=0)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_form_and_groups_kwargs():
    m = timm.create_model("kat_tiny_patch16_224", rational_form="B", num_groups=4, **SMALL)
    assert m.blocks[1].mlp.act2.form == "B" and m.blocks[1].mlp.act2.weight_denominator.shape == (4, 4)
    with pytest.raises(ValueError, match="form"):
        timm.create_model("kat_tiny_patch16_224", rational_form="C", **SMALL)


def test_mimetic_attention_init():
    torch.manual_seed(1)
    model = timm.create_model("kat_small_patch16_224", **SMALL)
    d = 384
    for block in model.blocks:
        w = block.attn.qkv.weight.double()
        wq, wk, wv = w[:d], w[d:2 * d], w[2 * d:]
        qk = wq.T @ wk  # x Wq^T Wk x^T summed over heads: alpha1 Z1 + beta1 I
        vo = wv.T @ block.attn.proj.weight.double().T  # x Wv^T Wproj^T: alpha2 Z2 - beta2 I
        for m, alpha, beta in ((qk, 0.7, 0.7), (vo, 0.4, -0.4)):
            off = m - torch.diag(torch.diagonal(m))
            assert torch.diagonal(m).mean().item() == pytest.approx(beta, abs=0.01)
            # Z ~ U(-sqrt(3/d), sqrt(3/d)): std 1/sqrt(d)
            assert off.std().item() == pytest.approx(alpha / d**0.5, rel=0.05)
    # without mimetic init: timm's trunc_normal(0.02) attention, no identity structure
    plain = timm.create_model("kat_small_patch16_224", mimetic_init=False, **SMALL)
    w = plain.blocks[0].attn.qkv.weight.double()
    assert abs(torch.diagonal(w[:d].T @ w[d:2 * d]).mean().item()) < 0.05


def test_seeded_reproducibility():
    def build(seed):
        torch.manual_seed(seed)
        return timm.create_model("kat_tiny_patch16_224", **SMALL).state_dict()

    a, b, c = build(3), build(3), build(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])
    assert not torch.equal(a["blocks.0.mlp.fc2.weight"], c["blocks.0.mlp.fc2.weight"])


def test_save_load_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(5)
    m1 = timm.create_model("kat_tiny_patch16_224", **SMALL).eval()
    with torch.no_grad():
        for blk in m1.blocks:  # make the rationals non-default so the round trip carries them
            blk.mlp.act2.weight_denominator.add_(torch.randn_like(blk.mlp.act2.weight_denominator) * 0.1)
    path = tmp_path / "kat.pth"
    torch.save(m1.state_dict(), path)
    torch.manual_seed(6)
    m2 = timm.create_model("kat_tiny_patch16_224", **SMALL).eval()
    m2.load_state_dict(torch.load(path, weights_only=True))
    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m1(x), m2(x))


def official_format_state_dict(seed=0, **cfg):
    """A checkpoint as the official code writes it: timm ViT keys + act{1,2} coefficients, built
    from a plain timm ViT (not from our model) with random weights and random rationals."""
    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", **(cfg or SMALL))
    sd = {k: v.clone() for k, v in vit.state_dict().items()}
    for k in list(sd):
        if k.endswith("mlp.fc1.weight"):
            p = k[: -len("fc1.weight")]
            sd[p + "act1.weight_numerator"] = torch.tensor([[0.0, 1.0, 0, 0, 0, 0]]) + 0.05 * torch.randn(1, 6)
            sd[p + "act1.weight_denominator"] = 0.05 * torch.randn(8, 4)
            sd[p + "act2.weight_numerator"] = torch.tensor([[0.0, 0.5, 0.25, 0.053, 0.0058, 0.00028]]) + 0.02 * torch.randn(1, 6)
            sd[p + "act2.weight_denominator"] = torch.tensor([0.0, 0.1065, 0.0, 0.00055]) + 0.05 * torch.randn(8, 4)
        if "norm" in k or k.endswith("bias"):
            sd[k] = sd[k] + 0.1 * torch.randn_like(sd[k])
    return sd


@pytest.mark.parametrize("wrapper", ["model", "state_dict", None])
def test_official_format_checkpoint_loads_and_reproduces_function(tmp_path, wrapper):
    sd = official_format_state_dict()
    path = tmp_path / "kat_official.pth"
    torch.save({wrapper: sd, "epoch": 300} if wrapper else sd, path)
    model = timm.create_model("kat_tiny_patch16_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)), **SMALL).eval()
    loaded = model.state_dict()
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    # reference: a plain timm ViT with the same weights and the official KAN forward (form A) in float64
    ref = timm.create_model("vit_tiny_patch16_224", **SMALL).eval()
    ref.load_state_dict({k: v for k, v in sd.items() if "act1" not in k and "act2" not in k})
    for i, blk in enumerate(ref.blocks):
        blk.mlp = RefKAN(sd, f"blocks.{i}.mlp.")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-4)


def test_checkpoint_with_other_num_classes_drops_head(tmp_path):
    path = tmp_path / "kat.pth"
    torch.save(official_format_state_dict(), path)
    model = timm.create_model("kat_tiny_patch16_224", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path)), **SMALL)
    assert model.head.weight.shape == (10, 192)


def _load(path):
    return timm.create_model("kat_tiny_patch16_224", pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(path)), **SMALL)


def test_mismatched_checkpoints_fail_clearly(tmp_path):
    good = official_format_state_dict()
    path = tmp_path / "bad.pth"

    sd = dict(good)
    sd["blocks.1.mlp.act2.weight_denominator"] = torch.zeros(4, 4)
    torch.save(sd, path)
    with pytest.raises(KATCheckpointError, match=r"blocks\.1\.mlp\.act2\.weight_denominator: checkpoint \(4, 4\) vs model \(8, 4\)"):
        _load(path)

    sd = dict(good)
    del sd["blocks.0.mlp.act1.weight_numerator"]
    sd["blocks.0.mlp.extra"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(KATCheckpointError) as info:
        _load(path)
    msg = str(info.value)
    assert "missing keys (1): ['blocks.0.mlp.act1.weight_numerator']" in msg
    assert "unexpected keys (1): ['blocks.0.mlp.extra']" in msg

    sd = dict(good)
    sd["blocks.0.attn.qkv.weight"] = sd["blocks.0.attn.qkv.weight"].clone()
    sd["blocks.0.attn.qkv.weight"][3, 4] = float("nan")
    torch.save(sd, path)
    with pytest.raises(KATCheckpointError, match=r"blocks\.0\.attn\.qkv\.weight \(non-finite values\)"):
        _load(path)


def test_unreadable_and_missing_checkpoint_files(tmp_path):
    buf = io.BytesIO()
    torch.save(official_format_state_dict(), buf)
    path = tmp_path / "truncated.pth"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(KATCheckpointError, match="could not load KAT checkpoint"):
        _load(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        _load(tmp_path / "nope.pth")


def _spread_fc1(vit):
    """Random timm init gives fc1 pre-activations of ~0.02: GELU would be tested only near 0.
    Rescale fc1 so they are ~N(0, 1) and the fit over [-3, 3] matters."""
    with torch.no_grad():
        for blk in vit.blocks:
            blk.mlp.fc1.weight.normal_(0, blk.mlp.fc1.in_features ** -0.5)
            blk.mlp.fc2.weight.normal_(0, blk.mlp.fc2.in_features ** -0.5)


@pytest.mark.parametrize("form", ["A", "B"])
def test_vit_to_kat_logits_agree(form):
    torch.manual_seed(8)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **SMALL).eval()
    _spread_fc1(vit)
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    kat = vit_to_kat(vit, form=form).eval()
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())  # the ViT is untouched
    sd = kat.state_dict()
    assert all(torch.equal(sd[k], before[k]) for k in before)  # every ViT weight copied 1:1
    assert sd["blocks.0.mlp.act2.weight_denominator"].shape == (8, 4)
    assert kat.blocks[0].mlp.act2.fit.target == "gelu" and kat.blocks[0].mlp.act2.form == form
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        y_vit, y_kat = vit(x), kat(x)
    err = (y_kat - y_vit).abs().max().item()
    assert err < 5e-3 * y_vit.abs().max().item(), err
    # control: a swish rational in place of the GELU fit is visibly worse
    for blk in kat.blocks:
        blk.mlp.act2.fit = fit_rational("swish", form=form)
        blk.mlp.act2.init_weights()
    with torch.no_grad():
        assert (kat(x) - y_vit).abs().max().item() > 10 * err


def test_vit_to_kat_other_configurations():
    torch.manual_seed(9)
    vit = timm.create_model("vit_small_patch16_224", num_classes=7, global_pool="avg", class_token=False,
                            reg_tokens=2, act_layer="silu", init_values=0.1, img_size=32, patch_size=8,
                            depth=1).eval()
    _spread_fc1(vit)
    kat = vit_to_kat(vit).eval()
    assert kat.blocks[0].mlp.act2.fit.target == "silu"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(kat(x), vit(x), atol=1e-4, rtol=1e-3)
    with pytest.raises(TypeError, match="VisionTransformer"):
        vit_to_kat(nn.Linear(3, 3))
    glu = timm.create_model("vit_tiny_patch16_224", mlp_layer=timm.layers.SwiGLUPacked, act_layer="silu",
                            mlp_ratio=4, **SMALL)
    with pytest.raises(TypeError, match="Mlp"):
        vit_to_kat(glu)


def test_activation_target_mapping():
    from fusedkat.models import activation_target

    assert activation_target(nn.GELU()) == "gelu"
    assert activation_target(nn.GELU(approximate="tanh")) == "gelu_tanh"
    assert activation_target(nn.SiLU()) == "silu" and activation_target(nn.ReLU()) == "relu"
    assert activation_target(timm.layers.QuickGELU()) == "quick_gelu"
    fn = activation_target(nn.Softsign())  # not tabulated: the module itself becomes the target
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)
    torch.testing.assert_close(torch.from_numpy(fn(x.numpy())), nn.functional.softsign(x))
    fit = fit_rational(fn, form="A")
    # x / (1 + |x|) is itself a form-A rational (a_1 = 1, |b_1| = 1): the fit must find it
    assert fit.mse < 1e-12 and fit.target == "Softsign"


def test_fix_init_rescales_after_mimetic_init():
    torch.manual_seed(0)
    a = timm.create_model("kat_tiny_patch16_224", **SMALL)
    torch.manual_seed(0)
    b = timm.create_model("kat_tiny_patch16_224", fix_init=True, **SMALL)
    for i, (ba, bb) in enumerate(zip(a.blocks, b.blocks)):
        scale = (2.0 * (i + 1)) ** 0.5
        torch.testing.assert_close(bb.attn.proj.weight, ba.attn.proj.weight / scale)
        torch.testing.assert_close(bb.mlp.fc2.weight, ba.mlp.fc2.weight / scale)
        torch.testing.assert_close(bb.attn.qkv.weight, ba.attn.qkv.weight)


def test_meta_build_then_materialise_and_init():
    model = timm.create_model("kat_small_patch16_224", device="meta", **SMALL)
    model = model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    blk = model.blocks[1]
    assert torch.equal(blk.mlp.act1.weight_numerator[0], torch.tensor([0.0, 1, 0, 0, 0, 0]))
    torch.testing.assert_close(blk.mlp.act2.weight_numerator[0].double(), torch.tensor(fit_rational("swish").numerator),
                               atol=1e-7, rtol=0)
    w = blk.attn.qkv.weight.double()
    assert torch.diagonal(w[:384].T @ w[384:768]).mean().item() == pytest.approx(0.7, abs=0.01)
    assert all(torch.isfinite(p).all() for p in model.parameters())
