"""Deploying a KAT (issue 18): torch.export (fusedkat ops kept or decomposed), ONNX in onnxruntime,
AOTInductor packages, the checks that refuse what cannot be exported, torch.jit.script's error.

Every exported form is run on fresh random images and compared with (1) the eager model and (2) an
independent float64 reference of the whole model (the GR-KAN MLPs recomputed with
tests/rational_reference.py, explicit powers and a loop over groups), at batch 1 and 8 (the
programs are traced at batch 2, so both are untraced batch sizes of the dynamic dimension).
The models are tiny (one block, 16x16 images) so that exporting stays within seconds.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import fusedkat
from fusedkat.export import ExportError, export_model, export_program, fusedkat_ops_in, run_program
from rational_reference import reference_rational_linear

REPO = os.path.dirname(os.path.dirname(os.path.abspath(fusedkat.__file__)))
TOL = 1e-4  # relative to the largest logit (issue 18)


def tiny_kat(form: str, seed: int = 0) -> nn.Module:
    """A one-block KAT (16x16 images, 7 classes) with random, non-init rational coefficients."""
    from fusedkat.models import KAT
    from fusedkat.nn import GroupRational

    torch.manual_seed(seed)
    model = KAT(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=7,
                rational_form=form, num_groups=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, GroupRational):  # away from the fitted init, denominators of both signs
                m.weight_numerator.add_(0.2 * torch.randn_like(m.weight_numerator))
                m.weight_denominator.copy_(0.7 * torch.randn_like(m.weight_denominator))
        model.head.weight.mul_(20.0)  # logits of order 1, not 1e-2
    return model.eval()


class _ReferenceMlp(nn.Module):
    """KANMlp recomputed in float64 by the independent reference (no fusedkat op)."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, x):
        m = self.mlp
        h = reference_rational_linear(x, m.act1.weight_numerator, m.act1.weight_denominator, m.fc1.weight,
                                      m.fc1.bias, m.act1.form)
        return reference_rational_linear(h, m.act2.weight_numerator, m.act2.weight_denominator, m.fc2.weight,
                                         m.fc2.bias, m.act2.form)


def reference_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    ref = copy.deepcopy(model).double().eval()
    for block in ref.blocks:
        block.mlp = _ReferenceMlp(block.mlp)
    with torch.no_grad():
        return ref(x.double())


def images(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def assert_close_logits(got: torch.Tensor, model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        eager = model(x)
    ref = reference_logits(model, x)
    assert got.shape == eager.shape
    assert eager.abs().max() > 0.1  # a real comparison, not of near-zero outputs
    got = got.detach().double()
    assert (got - eager.double()).abs().max() <= TOL * eager.abs().max()
    assert (got - ref).abs().max() <= TOL * ref.abs().max()


def _python(code: str, *, with_repo: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if with_repo:
        env["PYTHONPATH"] = REPO
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd="/", timeout=600)


# ---------------------------------------------------------------------------------------------
# torch.export
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["A", "B"])
def test_export_decomposes_into_plain_aten_with_dynamic_batch(form):
    model = tiny_kat(form).train()  # exported in eval mode, the caller's mode restored
    program = export_program(model)
    assert model.training
    assert fusedkat_ops_in(program) == []
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "aten.abs.default" in targets and "aten.reciprocal.default" in targets
    model.eval()
    for batch, seed in ((1, 1), (8, 2)):
        x = images(batch, seed)
        assert_close_logits(run_program(program, x), model, x)


def test_export_keeps_custom_ops_when_asked():
    model = tiny_kat("A")
    program = export_program(model, keep_custom_ops=True)
    assert fusedkat_ops_in(program) == ["fusedkat::rational_linear"]
    x = images(8, 3)
    assert_close_logits(run_program(program, x), model, x)


def test_export_of_vit_to_kat_and_compiled_models():
    from timm.models.vision_transformer import VisionTransformer

    from fusedkat.models import vit_to_kat

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=5)
    kat = vit_to_kat(vit, form="B", num_groups=4).eval()
    x = images(8, 4)
    assert_close_logits(run_program(export_program(kat), x), kat, x)
    # a torch.compile wrapper is unwrapped (nothing compiles): the same function is exported
    compiled = torch.compile(tiny_kat("A"))
    program = export_program(compiled, keep_custom_ops=True)
    assert_close_logits(run_program(program, x), compiled._orig_mod, x)


def test_export_errors_name_the_layer():
    from fusedkat.nn import GroupRational

    bad = tiny_kat("A")
    with torch.no_grad():
        bad.blocks[0].mlp.act2.weight_denominator[1, 2] = float("nan")
    with pytest.raises(ExportError, match=r"layer 'blocks\.0\.mlp\.act2' \(GroupRational\): weight_denominator"):
        export_program(bad)

    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(4, 8))
    with pytest.raises(ExportError, match=r"layer '0'.*meta device"):
        export_program(meta, torch.randn(2, 1, 1, 4))

    class Misfit(nn.Module):  # 12 channels into a rational of 8 groups: fails while tracing
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 12)
            self.act = GroupRational(8, init="identity")

        def forward(self, x):
            return self.act(self.fc(x.flatten(1)))

    with pytest.raises(ExportError, match=r"torch\.export failed in layer act \(GroupRational\)"):
        export_program(Misfit(), torch.randn(2, 1, 4, 4))


def test_a_model_that_traces_differently_is_refused_and_nothing_written(tmp_path):
    class CallCounter(nn.Module):  # Python state: the traced program freezes one call's value
        def __init__(self):
            super().__init__()
            self.kat = tiny_kat("A")
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.kat(x) * self.calls

    out = tmp_path / "m.pt2"
    with pytest.raises(ExportError, match="differs from the eager model.*nothing written"):
        export_model(CallCounter(), out, format="pt2", img_size=16)
    assert not out.exists()


def test_unsupported_combinations_are_refused_before_work(tmp_path):
    model = tiny_kat("A")
    with pytest.raises(ExportError, match="pt2 format only"):
        export_model(model, tmp_path / "m.onnx", format="onnx", keep_custom_ops=True)
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(model, tmp_path / "m.tflite", format="tflite")
    from fusedkat.export import compile_aoti, to_onnx

    kept = export_program(model, keep_custom_ops=True)
    with pytest.raises(ExportError, match="runs without Python.*fusedkat::rational_linear"):
        compile_aoti(kept, str(tmp_path / "m.pt2"))
    with pytest.raises(ExportError, match="ONNX has no fusedkat::rational_linear"):
        to_onnx(kept, images(2, 0))
    existing = tmp_path / "exists.pt2"
    existing.write_bytes(b"keep me")
    from fusedkat.files import OutputError

    with pytest.raises(OutputError, match="already exists"):
        export_model(model, existing, format="pt2")
    assert existing.read_bytes() == b"keep me"


def test_jit_script_raises_one_error_pointing_to_torch_export():
    from fusedkat.nn import GroupRational, ScriptingNotSupportedError

    for module in (tiny_kat("A"), GroupRational(4)):
        with pytest.raises(ScriptingNotSupportedError, match=r"use torch\.export instead.*fusedkat\.export"):
            torch.jit.script(module)


# ---------------------------------------------------------------------------------------------
# the written artifacts, loaded the way a deployment would
# ---------------------------------------------------------------------------------------------
def test_pt2_runs_in_a_process_with_torch_only_and_kept_ops_with_fusedkat(tmp_path):
    model = tiny_kat("B")
    plain, kept = tmp_path / "plain.pt2", tmp_path / "kept.pt2"
    r = export_model(model, plain, format="pt2")
    assert r.fusedkat_ops == [] and r.dynamic_batch and r.max_rel_diff <= TOL
    r = export_model(model, kept, format="pt2", keep_custom_ops=True)
    assert r.fusedkat_ops == ["fusedkat::rational_linear"]
    x = images(8, 5)
    with torch.no_grad():
        torch.save({"x": x, "eager": model(x), "ref": reference_logits(model, x)}, tmp_path / "io.pt")
    check = f"""
        import sys, torch
        d = torch.load({str(tmp_path / 'io.pt')!r})
        {{imp}}
        y = torch.export.load({{path!r}}).module()(d["x"]).double()
        assert (y - d["eager"].double()).abs().max() <= {TOL} * d["eager"].abs().max()
        assert (y - d["ref"]).abs().max() <= {TOL} * d["ref"].abs().max()
        print("fusedkat" in sys.modules, "timm" in sys.modules)
    """
    res = _python(check.format(imp="", path=str(plain)), with_repo=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["False", "False"]  # neither fusedkat nor timm was needed
    res = _python(check.format(imp="import fusedkat", path=str(kept)), with_repo=True)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.fixture(scope="module", params=["A", "B"])
def onnx_export(request, tmp_path_factory):
    model = tiny_kat(request.param, seed=7)
    path = tmp_path_factory.mktemp("onnx") / f"kat_{request.param}.onnx"
    report = export_model(model, path, format="onnx")
    return model, path, report


def test_onnx_is_valid_standard_ops_and_matches_eager_in_onnxruntime(onnx_export):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, path, report = onnx_export
    assert report.format == "onnx" and report.max_rel_diff <= TOL and report.batches_checked == [1, 3]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    op_types = {n.op_type for n in proto.graph.node}
    assert {"Abs", "Mul", "Add"} <= op_types and op_types & {"Reciprocal", "Div"}
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node), "only standard ONNX ops"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch, seed in ((1, 11), (8, 12)):
        x = images(batch, seed)
        got = torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        assert_close_logits(got, model, x)


@pytest.mark.slow
def test_aoti_package_runs_without_the_python_model_code(tmp_path):
    model = tiny_kat("A", seed=3)
    path = tmp_path / "kat.pt2"
    report = export_model(model, path, format="aoti")
    assert report.max_rel_diff <= TOL and report.fusedkat_ops == []
    x8, x1 = images(8, 21), images(1, 22)
    with torch.no_grad():
        torch.save({"x": [x1, x8], "eager": [model(x1), model(x8)], "ref": [reference_logits(model, x1),
                    reference_logits(model, x8)]}, tmp_path / "io.pt")
    res = _python(f"""
        import sys, torch
        from torch._inductor import aoti_load_package
        d = torch.load({str(tmp_path / 'io.pt')!r})
        run = aoti_load_package({str(path)!r})
        for x, e, r in zip(d["x"], d["eager"], d["ref"]):
            y = run(x).double()
            assert y.shape == e.shape
            assert (y - e.double()).abs().max() <= {TOL} * e.abs().max()
            assert (y - r).abs().max() <= {TOL} * r.abs().max()
        print("fusedkat" in sys.modules, "timm" in sys.modules)
    """, with_repo=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["False", "False"]
