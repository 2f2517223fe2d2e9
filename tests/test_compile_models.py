"""torch.compile(fullgraph=True) of the real timm KAT models (small configs: depth 1, 32px images: compile time).

No graph breaks (fullgraph), forward and backward, training and eval, fp32 and bf16 autocast; the
compiled loss and gradients match eager; timm's ``set_grad_checkpointing`` works compiled.
"""
from __future__ import annotations

import copy

import pytest
import torch

timm = pytest.importorskip("timm")
pytest.importorskip("fusedkat.models")

import compile_passes  # noqa: E402
from compile_toys import count_targets  # noqa: E402

RL = torch.ops.fusedkat.rational_linear.default
DEPTH = 1


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _small_kat(**kw) -> torch.nn.Module:
    import fusedkat.models  # noqa: F401  (registers the timm entry points)

    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=16, embed_dim=64, num_heads=2, depth=DEPTH, num_classes=10)
    args.update(kw)
    return timm.create_model("kat_tiny_patch16_224", **args)


def _step(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach(), {n.removeprefix("_orig_mod."): p.grad.detach().clone()
                           for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(got, want, rtol, atol):
    assert got.keys() == want.keys()
    for name, w in want.items():
        scale = w.abs().max().item()
        err = (got[name] - w).abs().max().item()
        assert err <= atol + rtol * scale, f"{name}: max err {err:.3g}, grad scale {scale:.3g}"


def test_kat_fullgraph_train_and_eval_match_eager():
    model = _small_kat()
    eager = copy.deepcopy(model)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    compiled = torch.compile(model, backend="fusedkat", fullgraph=True)
    with compile_passes.capture_graphs() as graphs:
        loss, grads = _step(compiled, x, y)
    # KANMlp already calls rational_linear: the graph has one per GR-KAN layer, no bare rational
    assert len(graphs) == 1
    assert count_targets(graphs[0].graph, RL) == 2 * DEPTH
    assert count_targets(graphs[0].graph, torch.ops.fusedkat.group_rational.default) == 0
    ref_loss, ref_grads = _step(eager, x, y)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    _assert_grads_close(grads, ref_grads, rtol=1e-4, atol=1e-6)
    assert any("act1.weight_denominator" in n for n in grads)  # rational coefficients are trained

    model.eval()
    eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-4, atol=1e-5)


def test_kat_bf16_autocast_compiled():
    model = _small_kat()
    eager = copy.deepcopy(model)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    compiled = torch.compile(model, backend="fusedkat", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = _step(compiled, x, y)
        ref_loss, ref_grads = _step(eager, x, y)
    torch.testing.assert_close(loss, ref_loss, rtol=3e-2, atol=3e-2)
    _assert_grads_close(grads, ref_grads, rtol=6e-2, atol=1e-4)


def test_kat_timm_grad_checkpointing_compiled():
    model = _small_kat()
    plain = copy.deepcopy(model)
    model.set_grad_checkpointing(True)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    compiled = torch.compile(model, backend="fusedkat", fullgraph=True)
    with compile_passes.capture_graphs() as graphs:
        loss, grads = _step(compiled, x, y)
    assert graphs  # compiled in one graph (fullgraph), checkpointed blocks as HOP subgraphs
    ref_loss, ref_grads = _step(plain, x, y)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    _assert_grads_close(grads, ref_grads, rtol=1e-4, atol=1e-6)
