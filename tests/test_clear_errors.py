"""Bad input gets a one-line error naming the problem (issue 20): zero or bool group counts,
text/empty/folder checkpoints, integer tensors in a checkpoint (never cast silently)."""
from __future__ import annotations

import pytest
import torch

import fusedkat
from fusedkat.models import KATCheckpointError, checkpoint_format
from fusedkat.nn import GRKAN, GroupRational, KANMlp
from fusedkat.ops.rational_math import RationalSpec, check_int


@pytest.mark.parametrize("bad", [0, -1, True, False, 2.0, "8", None])
def test_num_groups_must_be_a_positive_int(bad):
    import timm

    makers = [lambda: GroupRational(bad), lambda: GRKAN(8, 8, num_groups=bad), lambda: KANMlp(8, num_groups=bad),
              lambda: fusedkat.models.vit_to_kat(timm.create_model("vit_tiny_patch16_224", num_classes=2), num_groups=bad)]
    for make in makers:
        with pytest.raises(ValueError, match=r"num_groups must be an int >= 1, got"):
            make()


def test_degrees_reject_bool_and_float_but_accept_numpy_ints():
    import numpy as np

    with pytest.raises(ValueError, match="numerator degree m"):
        RationalSpec(True, 4)
    with pytest.raises(ValueError, match="denominator degree n"):
        GroupRational(2, order=(5, 4.0))
    assert RationalSpec(np.int64(5), np.int32(4)).m == 5
    assert check_int(np.int64(3), "k") == 3 and type(check_int(np.int64(3), "k")) is int


def test_checkpoint_format_names_text_empty_and_folder(tmp_path):
    text, empty = tmp_path / "t.pth", tmp_path / "e.pth"
    text.write_text("<html>404 Not Found</html>")
    empty.write_bytes(b"")
    with pytest.raises(KATCheckpointError, match="is a text file"):
        checkpoint_format(str(text))
    with pytest.raises(KATCheckpointError, match="is empty"):
        checkpoint_format(str(empty))
    with pytest.raises(KATCheckpointError, match="is a folder"):
        checkpoint_format(str(tmp_path))
    binary = tmp_path / "b.pth"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(KATCheckpointError, match="not a checkpoint"):
        checkpoint_format(str(binary))
    good = tmp_path / "g.pth"
    torch.save({"a": torch.zeros(1)}, good)
    assert checkpoint_format(str(good)) == "torch-zip"


@pytest.mark.parametrize("content", [b"", b"hello world\n"])
def test_timm_pretrained_from_a_bad_file_is_a_clear_error(tmp_path, content):
    import timm

    f = tmp_path / "kat.pth"
    f.write_bytes(content)
    with pytest.raises(KATCheckpointError, match="is empty|is a text file") as e:
        timm.create_model("kat_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(f)))
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_integer_coefficients_in_a_checkpoint_are_rejected_not_cast(tmp_path):
    import timm

    m = timm.create_model("kat_tiny_patch16_224", num_classes=10)
    sd = m.state_dict()
    key = "blocks.3.mlp.act2.weight_numerator"
    sd[key] = (sd[key] * 100).long()
    f = tmp_path / "int.pth"
    torch.save(sd, f)
    with pytest.raises(KATCheckpointError, match=r"blocks\.3\.mlp\.act2\.weight_numerator \(dtype torch\.int64.*not cast"):
        timm.create_model("kat_tiny_patch16_224", pretrained=True, num_classes=10,
                          pretrained_cfg_overlay=dict(file=str(f), num_classes=10))


def test_convert_rejects_integer_vit_weights_and_bad_files(tmp_path, capsys):
    import timm

    from cli_inprocess import main

    vit = timm.create_model("vit_tiny_patch16_224", num_classes=4)
    sd = vit.state_dict()
    sd["blocks.0.mlp.fc1.weight"] = sd["blocks.0.mlp.fc1.weight"].round().long()
    src = tmp_path / "int.pth"
    torch.save(sd, src)
    assert main(["convert", str(src), str(tmp_path / "o.pth"), "--no-verify"]) == 1
    err = capsys.readouterr().err.strip()
    assert "not floating point" in err and "blocks.0.mlp.fc1.weight" in err and "\n" not in err
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert main(["convert", str(empty), str(tmp_path / "o.pth")]) == 1
    assert "is empty" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()
