"""``fusedkat export`` end to end on CPU: a real KAT-T architecture checkpoint and a ``fusedkat convert``
output, the printed check, the written file loaded independently, and the one-line errors.

The printed difference is checked against a comparison made here: the written program is loaded
with ``torch.export.load`` and compared with the model timm builds from the same checkpoint
(``pretrained_cfg_overlay=dict(file=...)``, not the CLI's loader).
"""
from __future__ import annotations

import re

import pytest
import torch

from fusedkat.cli import main


def _one_error_line(err: str, prog: str = "fusedkat export") -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def kat_tiny_file(tmp_path_factory):
    """A kat_tiny_patch16_224 state_dict (random weights, 10 classes), as the official files are laid out."""
    import timm

    import fusedkat.models  # noqa: F401

    torch.manual_seed(0)
    model = timm.create_model("kat_tiny_patch16_224", num_classes=10, mimetic_init=False)
    with torch.no_grad():
        model.head.weight.mul_(30.0)  # logits of order 1
    path = tmp_path_factory.mktemp("ckpt") / "kat_tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def _printed_diff(out: str) -> tuple[float, float]:
    m = re.search(r"max \|logit\(\w+\) - logit\(eager\)\| = ([0-9.e+-]+) \(([0-9.e+-]+) of the largest logit", out)
    assert m, out
    return float(m.group(1)), float(m.group(2))


def test_export_kat_tiny_pt2_with_custom_ops(kat_tiny_file, tmp_path, capsys):
    import timm

    import fusedkat.models  # noqa: F401

    out = tmp_path / "kat.pt2"
    args = ["export", str(kat_tiny_file), str(out), "--model", "kat_tiny_patch16_224", "--format", "pt2",
            "--keep-custom-ops", "--img-size", "32"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}: pt2" in text and "dynamic batch" in text and "fusedkat::rational_linear" in text
    abs_diff, rel_diff = _printed_diff(text)
    assert rel_diff <= 1e-4
    # independent check: timm's own loading of the checkpoint (pos-embed resampled to 32 px) vs the file
    ref = timm.create_model("kat_tiny_patch16_224", pretrained=True, num_classes=10, img_size=32,
                            pretrained_cfg_overlay=dict(file=str(kat_tiny_file), num_classes=10)).eval()
    program = torch.export.load(str(out))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want, got = ref(x), program.module()(x)
    assert want.abs().max() > 0.1
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()

    # no overwrite without --force (checked before any work), the file untouched
    before = out.read_bytes()
    assert main(args) == 1
    assert "already exists; pass --force" in _one_error_line(capsys.readouterr().err)
    assert out.read_bytes() == before


def test_export_convert_output_with_fixed_batch(tmp_path, capsys):
    import timm

    torch.manual_seed(1)
    vit = timm.create_model("test_vit", num_classes=6)  # timm's 6-block, 64-wide test ViT
    src, kat_file, out = tmp_path / "vit.pth", tmp_path / "kat.pth", tmp_path / "kat_b2.pt2"
    torch.save(vit.state_dict(), src)
    assert main(["convert", str(src), str(kat_file), "--model", "test_vit", "--form", "B", "--no-verify"]) == 0
    capsys.readouterr()
    assert main(["export", str(kat_file), str(out), "--model", "test_vit", "--format", "pt2", "--form", "B",
                 "--batch", "2", "--img-size", "32"]) == 0
    text = capsys.readouterr().out
    assert "batch 2," in text and "decomposed into standard ops" in text
    assert _printed_diff(text)[1] <= 1e-4
    # the file holds a fixed batch of 2, no fusedkat op
    program = torch.export.load(str(out))
    assert not [n for n in program.graph.nodes if "fusedkat" in str(n.target)]
    from fusedkat.models import vit_to_kat

    kat = vit_to_kat(timm.create_model("test_vit", num_classes=6, img_size=32), form="B")
    from fusedkat.models import checkpoint_filter_fn

    kat.load_state_dict(checkpoint_filter_fn(torch.load(kat_file, weights_only=True), kat))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want, got = kat.eval()(x), program.module()(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    with pytest.raises(Exception):
        program.module()(torch.randn(3, 3, 32, 32))


def test_export_errors_are_one_line(kat_tiny_file, tmp_path, capsys):
    ckpt = str(kat_tiny_file)
    base = ["--model", "kat_tiny_patch16_224", "--format", "pt2"]
    assert main(["export", ckpt, str(tmp_path / "no" / "m.pt2"), *base]) == 1
    assert "does not exist" in _one_error_line(capsys.readouterr().err)
    assert main(["export", ckpt, str(tmp_path / "m.pt2"), "--model", "kat_small_patch16_224", "--format", "pt2"]) == 1
    assert "is --model kat_small_patch16_224 the checkpoint's architecture" in _one_error_line(capsys.readouterr().err)
    assert main(["export", ckpt, str(tmp_path / "m.pt2"), "--model", "no_such_model", "--format", "pt2"]) == 1
    assert "unknown model" in _one_error_line(capsys.readouterr().err)
    assert main(["export", ckpt, str(tmp_path / "m.onnx"), "--model", "kat_tiny_patch16_224", "--format", "onnx",
                 "--keep-custom-ops"]) == 1
    assert "--format pt2 only" in _one_error_line(capsys.readouterr().err)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("<html>404</html>")
    assert main(["export", str(garbage), str(tmp_path / "m.pt2"), *base]) == 1
    assert "text file" in _one_error_line(capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["export", ckpt, str(tmp_path / "m.x"), "--model", "kat_tiny_patch16_224", "--format", "tflite"])
    assert not list(tmp_path.glob("m.*"))
