"""The ``"fusedkat"`` backend, ``compile_passes.install()`` and the device-aware lowering, with real
inductor compiles of small KAT-style models (separate rational / dropout / linear modules)."""
from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn as nn
from torch._inductor.utils import run_and_get_code

import compile_passes
import fusedkat.ops.lowering as lowering
from compile_toys import KATToy, count_targets
from rational_reference import reference_rational

RL = torch.ops.fusedkat.rational_linear.default


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _both_caches_off():
    """Compile for real: the install() pass runs on inductor cache misses only."""
    import contextlib

    stack = contextlib.ExitStack()
    stack.enter_context(torch._inductor.config.patch(fx_graph_cache=False))
    stack.enter_context(torch._functorch.config.patch(enable_autograd_cache=False))
    return stack


def _train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor):
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), target)
    loss.backward()
    # a compiled model names its parameters "_orig_mod.<name>"
    return loss.detach(), {n.removeprefix("_orig_mod."): p.grad.detach().clone()
                           for n, p in model.named_parameters()}


def _reference_forward(model: KATToy, x: torch.Tensor) -> torch.Tensor:
    """float64 forward of KATToy from the independent rational reference (eval semantics)."""
    h = x.double()
    for blk in model.blocks:
        m = blk.mlp
        t = nn.functional.layer_norm(h, (h.shape[-1],), blk.norm.weight.double(), blk.norm.bias.double())
        for act, fc in ((m.act1, m.fc1), (m.act2, m.fc2)):
            t = reference_rational(t, act.weight_numerator.detach(), act.weight_denominator.detach(), act.form)
            t = t @ fc.weight.detach().double().t() + fc.bias.detach().double()
        h = h + t
    return h.mean(dim=1) @ model.head.weight.detach().double().t() + model.head.bias.detach().double()


#: The opaque fusedkat calls each CPU lowering leaves in inductor's code (fusedkat.ops.lowering).
_CPU_CALLS = {"kernels": {"rational_linear_cpu_kernel", "rational_linear_backward_cpu_kernel"},
              "inline": {"rescue_rational_", "rescue_rational_backward_"}}


@pytest.mark.parametrize("cpu_lowering", sorted(_CPU_CALLS))
def test_backend_fuses_decomposes_on_cpu_and_matches_eager(cpu_lowering, monkeypatch):
    monkeypatch.setenv("FUSEDKAT_CPU_LOWERING", cpu_lowering)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = KATToy(depth=2)
    eager = copy.deepcopy(model)
    x, target = torch.randn(4, 6, 16), torch.randint(0, 5, (4,))

    compiled = torch.compile(model, backend="fusedkat", fullgraph=True)
    with compile_passes.capture_graphs() as graphs:
        (loss, grads), codes = run_and_get_code(_train_step, compiled, x, target)

    # the Dynamo graph after the pass: every act->drop->fc pair became one rational_linear
    assert len(graphs) == 1 and graphs[0].fused == 4
    assert count_targets(graphs[0].graph, RL) == 4
    assert count_targets(graphs[0].graph, torch.ops.fusedkat.group_rational.default) == 0
    # on CPU the lowering turned the op either into its compiled-kernel twin ("kernels") or into
    # torch ops inside inductor kernels, with no opaque call left but the host-read large-|x|
    # rescues (torch_impl's "host" mode), one per rational ("inline")
    # the model's forward and backward, and under "kernels" the 4 compiled kernels (2 shapes x
    # forward/backward), which call no fusedkat op
    outer = [c for c in codes if "torch.ops.fusedkat." in c]
    assert len(outer) == 2 and len(codes) == (6 if cpu_lowering == "kernels" else 2)
    for code in outer:
        calls = re.findall(r"torch\.ops\.fusedkat\.(\w+)", code)
        assert set(calls) <= _CPU_CALLS[cpu_lowering], calls
    assert "fusedkat.rational_linear" in outer[0]  # ...and inductor's provenance comments name it
    ref_loss, ref_grads = _train_step(eager, x, target)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-5, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x).double(), _reference_forward(model, x), rtol=1e-4, atol=1e-5)


def test_lowering_keeps_the_op_opaque_where_the_fused_kernel_runs(monkeypatch):
    """Where dispatch would run the CuTe kernel, inductor must call the op, not inline torch ops.

    Without a GPU we stand in for "a kernel is available" by making the lowering's device check
    answer False; the op still runs (its eager torch path), so results must match too.
    """
    seen = []

    def kernel_available(device, op):
        seen.append((device.type, op))
        return False

    monkeypatch.setattr(lowering, "decompose_on", kernel_available)
    torch.manual_seed(1)
    model = KATToy(depth=1)
    eager = copy.deepcopy(model)
    x, target = torch.randn(3, 5, 16), torch.randint(0, 5, (3,))
    compiled = torch.compile(model, backend="fusedkat", fullgraph=True)
    with _both_caches_off():
        (loss, grads), codes = run_and_get_code(_train_step, compiled, x, target)
    assert ("cpu", "rational_linear_forward") in seen and ("cpu", "rational_linear_backward") in seen
    assert "torch.ops.fusedkat.rational_linear.default" in codes[0]
    assert "torch.ops.fusedkat.rational_linear_backward.default" in codes[1]
    ref_loss, ref_grads = _train_step(eager, x, target)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-5, msg=name)


def test_bf16_autocast_training_and_eval():
    torch.manual_seed(2)
    model = KATToy(depth=1)
    eager = copy.deepcopy(model)
    x, target = torch.randn(4, 8, 16), torch.randint(0, 5, (4,))
    compiled = torch.compile(model, backend="fusedkat", fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with compile_passes.capture_graphs() as graphs:
            loss, grads = _train_step(compiled, x, target)
        ref_loss, ref_grads = _train_step(eager, x, target)
    assert graphs and graphs[0].fused == 2
    assert loss.dtype == torch.float32  # cross_entropy autocasts to fp32
    # The fused op casts x to bf16 *before* F (nn.Linear-like autocast); eager rounds F(x) to bf16
    # instead: both are bf16-accurate, not bitwise equal.
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=2e-2)
    for name, g in ref_grads.items():
        scale = g.abs().max().item() + 1e-6
        assert (grads[name] - g).abs().max().item() <= 5e-2 * scale, name

    model.eval()
    eager.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(x)
        assert out.dtype == torch.bfloat16
        ref = _reference_forward(model, x)
    torch.testing.assert_close(out.double(), ref, rtol=5e-2, atol=5e-2)


def test_dynamic_batch_and_sequence_recompile_at_most_once():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.manual_seed(3)
    model = KATToy(depth=1).eval()
    counter = CompileCounterWithBackend("fusedkat")
    compiled = torch.compile(model, backend=counter, fullgraph=True)

    def run(b, n):
        x = torch.randn(b, n, 16)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)

    # dynamic=None: the first change of a size recompiles once with that size symbolic, then never again
    for b in (2, 3, 5, 8):
        run(b, 6)
    assert counter.frame_count == 2, counter.frame_count  # static, then dynamic batch
    for n in (9, 4, 8, 13):  # 4 == K/g and 8 == hidden/g: no specialisation on the group width
        run(3, n)
    assert counter.frame_count == 3, counter.frame_count  # + dynamic sequence length
    for b, n in ((7, 5), (1 + 1, 11), (4, 4)):
        run(b, n)
    assert counter.frame_count == 3, counter.frame_count
    assert all(count_targets(g.graph, RL) == 2 for g in counter.graphs)

    # mark_dynamic: one compile for every batch size
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("fusedkat")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    with torch.no_grad():
        for b in (2, 3, 6):
            x = torch.randn(b, 6, 16)
            torch._dynamo.mark_dynamic(x, 0)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    assert counter.frame_count == 1


@pytest.mark.parametrize("takes_lists", [True, False], ids=["list-config", "single-pass-config"])
def test_install_hooks_plain_torch_compile_and_keeps_user_passes(takes_lists, monkeypatch):
    """Newer torch takes a list in ``pre_grad_custom_pass``; older torch (2.11 on the GPU machines)
    one callable, where install() chains the user's pass and ours."""
    from torch._inductor.custom_graph_pass import CustomGraphPass

    from compile_passes import backend

    if takes_lists and not backend._config_takes_lists():
        pytest.skip(f"torch {torch.__version__} takes one pre-grad pass, not a list")
    monkeypatch.setattr(backend, "_config_takes_lists", lambda: takes_lists)

    calls = []

    class UserPass(CustomGraphPass):
        def __call__(self, graph):
            calls.append(len(graph.nodes))

        def uuid(self):
            return "user-pass"

    user = UserPass()
    old = torch._inductor.config.pre_grad_custom_pass
    torch._inductor.config.pre_grad_custom_pass = user
    try:
        compile_passes.install()
        compile_passes.install()  # idempotent
        value = torch._inductor.config.pre_grad_custom_pass
        assert isinstance(value, list) == takes_lists
        passes = backend.pass_list(value)
        assert passes[0] is user and len(passes) == 2 and compile_passes.is_installed()

        torch.manual_seed(4)
        model = KATToy(depth=1).eval()
        x = torch.randn(2, 5, 16)
        with _both_caches_off(), compile_passes.capture_graphs() as graphs, torch.no_grad():
            out = torch.compile(model, fullgraph=True)(x)  # default backend: inductor
        assert calls, "the user's pre-grad pass must still run"
        assert len(graphs) == 1 and graphs[0].fused == 2 and count_targets(graphs[0].graph, RL) == 2
        torch.testing.assert_close(out.double(), _reference_forward(model, x), rtol=1e-4, atol=1e-5)

        compile_passes.uninstall()
        assert not compile_passes.is_installed()
        assert torch._inductor.config.pre_grad_custom_pass == ([user] if takes_lists else user)
    finally:
        compile_passes.uninstall()
        torch._inductor.config.pre_grad_custom_pass = old


def test_backend_forwards_and_validates_inductor_options():
    model = KATToy(depth=1).eval()
    x = torch.randn(2, 3, 16)
    bad = torch.compile(model, backend="fusedkat", options={"not_an_inductor_option": 1})
    with pytest.raises(Exception, match="not_an_inductor_option"):
        with torch.no_grad():
            bad(x)

    torch._dynamo.reset()
    hits = []
    with _both_caches_off(), torch.no_grad():
        out = torch.compile(model, backend="fusedkat",
                            options={"pre_grad_custom_pass": lambda g: hits.append(1)})(x)
    assert hits, "an inductor option given to torch.compile must reach inductor"
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)


def test_activation_checkpointing_compiled():
    torch.manual_seed(5)
    model = KATToy(depth=2, checkpoint=True)
    plain = copy.deepcopy(model)
    plain.checkpoint = False
    x, target = torch.randn(3, 4, 16), torch.randint(0, 5, (3,))
    compiled = torch.compile(model, backend="fusedkat", fullgraph=True)
    with compile_passes.capture_graphs() as graphs:
        loss, grads = _train_step(compiled, x, target)
    assert graphs and sum(g.fused for g in graphs) >= 4  # fused inside the checkpointed regions too
    ref_loss, ref_grads = _train_step(plain, x, target)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-5, msg=name)
    # eager checkpointing with the custom ops as well
    eager_ck = copy.deepcopy(plain)
    eager_ck.checkpoint = True
    loss2, grads2 = _train_step(eager_ck, x, target)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads2[name], g, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_keeps_fused_op_where_the_kernel_runs():
    from fusedkat.ops import dispatch

    dev = torch.device("cuda")
    if dispatch.cute_unavailable_reason(dev, "rational_linear_forward") is not None:
        pytest.skip("no fused kernel on this GPU")
    torch.manual_seed(6)
    model = KATToy(depth=1).to(dev)
    eager = copy.deepcopy(model)
    x, target = torch.randn(4, 64, 16, device=dev), torch.randint(0, 5, (4,), device=dev)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        (loss, grads), codes = run_and_get_code(_train_step, torch.compile(model, backend="fusedkat"), x, target)
        ref_loss, _ = _train_step(eager, x, target)
    assert "torch.ops.fusedkat.rational_linear.default" in codes[0]
    torch.testing.assert_close(loss, ref_loss, rtol=3e-2, atol=3e-2)


def test_ops_return_dense_outputs_even_from_a_backend_that_does_not(monkeypatch):
    """The fake impls promise dense outputs and inductor asserts the strides of an opaque op's
    results.  The H100's fused backward returned column slices for d_denominator, which failed
    compiled KAT training there; here a torch backward returning the same kind of slices stands in
    for it (opaque lowering on CPU), and compiled gradients must still equal eager ones."""
    from fusedkat.nn import GRKAN
    from fusedkat.ops import torch_impl

    real = torch_impl.rational_linear_backward

    def strided_backward(*args):
        dx, d_num, d_den, d_w, d_b = real(*args)
        wide = torch.zeros(d_den.shape[0], d_den.shape[1] + 3, dtype=d_den.dtype)
        wide[:, 3:] = d_den
        return dx, d_num, wide[:, 3:], d_w, d_b  # a non-contiguous view, like per_group[:, m+1:]

    monkeypatch.setattr(torch_impl, "rational_linear_backward", strided_backward)
    monkeypatch.setattr(lowering, "decompose_on", lambda device, op: False)
    torch.manual_seed(5)
    layer = GRKAN(16, 24, num_groups=4)
    twin = copy.deepcopy(layer)
    x = torch.randn(3, 7, 16)

    def step(mod, fn):
        mod.zero_grad(set_to_none=True)
        fn(x).square().sum().backward()
        return {n: p.grad.clone() for n, p in mod.named_parameters()}

    torch._dynamo.reset()
    with _both_caches_off():
        compiled = step(layer, torch.compile(layer, backend="fusedkat", fullgraph=True))
    eager = step(twin, twin)
    assert eager["act.weight_denominator"].is_contiguous()
    for name, g in eager.items():
        torch.testing.assert_close(compiled[name], g, rtol=1e-5, atol=1e-6, msg=name)
