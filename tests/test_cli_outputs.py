"""Outputs of every command: checked before the work starts (one-line error naming the path),
written atomically (Ctrl-C mid-write keeps the previous file), and ``convert`` refuses to
overwrite without ``--force`` (issue 20)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cli_inprocess import main


def _one_error_line(err: str, prog: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith(f"{prog}: error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def vit_src(tmp_path_factory):
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10).eval()
    path = tmp_path_factory.mktemp("vit") / "vit_tiny.pth"
    torch.save(vit.state_dict(), path)
    return path


def test_convert_refuses_to_overwrite_without_force(vit_src, tmp_path, capsys):
    dst = tmp_path / "kat.pth"
    dst.write_bytes(b"precious")
    assert main(["convert", str(vit_src), str(dst), "--no-verify"]) == 1
    msg = _one_error_line(capsys.readouterr().err, "fusedkat convert")
    assert "already exists" in msg and "--force" in msg and str(dst) in msg
    assert dst.read_bytes() == b"precious"
    assert main(["convert", str(vit_src), str(dst), "--no-verify", "--force"]) == 0
    sd = torch.load(dst, weights_only=True)
    assert "blocks.0.mlp.act2.weight_denominator" in sd
    assert [p.name for p in tmp_path.iterdir()] == ["kat.pth"]  # no temporary file left


@pytest.mark.parametrize("bad", ["folder", "missing_folder", "parent_is_file"])
def test_convert_unwritable_destination_fails_before_the_conversion(vit_src, tmp_path, capsys, bad):
    if bad == "folder":
        dst = tmp_path
    elif bad == "missing_folder":
        dst = tmp_path / "no" / "kat.pth"
    else:
        (tmp_path / "f").write_text("x")
        dst = tmp_path / "f" / "kat.pth"
    t0 = time.perf_counter()
    assert main(["convert", str(vit_src), str(dst)]) == 1
    msg = _one_error_line(capsys.readouterr().err, "fusedkat convert")
    assert str(dst) in msg
    assert time.perf_counter() - t0 < 5  # before loading/converting the model (which takes longer)


def test_demo_checks_json_and_out_before_training(tmp_path, capsys):
    t0 = time.perf_counter()
    assert main(["demo", "--no-compile", "--steps", "1", "--out", str(tmp_path / "plots"), "--json", str(tmp_path)]) == 1
    assert "--json file" in _one_error_line(capsys.readouterr().err, "fusedkat demo")
    assert not (tmp_path / "plots").exists()  # nothing created when a check fails
    f = tmp_path / "a_file"
    f.write_text("x")
    assert main(["demo", "--no-compile", "--steps", "1", "--out", str(f)]) == 1
    assert "--out folder" in _one_error_line(capsys.readouterr().err, "fusedkat demo")
    assert main(["demo", "--no-compile", "--steps", "1", "--no-plots", "--json", str(tmp_path / "x" / "r.json")]) == 1
    assert "does not exist" in _one_error_line(capsys.readouterr().err, "fusedkat demo")
    assert time.perf_counter() - t0 < 10  # no training ran


def test_fit_and_info_check_their_outputs(tmp_path, capsys):
    assert main(["fit", "gelu", "--json", str(tmp_path / "no" / "r.json")]) == 1
    assert "does not exist" in _one_error_line(capsys.readouterr().err, "fusedkat fit")
    assert main(["fit", "gelu", "--plot", str(tmp_path)]) == 1
    assert "is a folder" in _one_error_line(capsys.readouterr().err, "fusedkat fit")
    assert main(["info", "--json", str(tmp_path)]) == 1
    assert "is a folder" in _one_error_line(capsys.readouterr().err, "fusedkat info")
    out = capsys.readouterr()
    assert out.out == ""  # failed before collecting / printing anything


def test_bench_checks_json_and_out_dir_before_running(tmp_path, capsys):
    assert main(["bench", "--json", str(tmp_path / "no" / "b.json")]) == 1
    assert "does not exist" in _one_error_line(capsys.readouterr().err, "fusedkat bench")
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["bench", "--out-dir", str(f)]) == 1
    assert "not a folder" in _one_error_line(capsys.readouterr().err, "fusedkat bench")


def test_fit_json_written_atomically(tmp_path, capsys):
    js = tmp_path / "fit.json"
    assert main(["fit", "gelu", "--json", str(js)]) == 0
    assert js.read_text().startswith("{") and [p.name for p in tmp_path.iterdir()] == ["fit.json"]


def test_sigint_during_convert_write_keeps_the_previous_file(vit_src, tmp_path):
    """A real ``fusedkat convert --force`` over a valid file, SIGINT sent the moment its temporary
    file appears (i.e. while torch.save writes): the old file must survive intact, no temporary
    file may remain, and the command says "interrupted" in one line."""
    dst = tmp_path / "kat.pth"
    old = b"PK\x03\x04 a previous, valid file" * 10000
    interrupted = 0
    for _attempt in range(3):
        dst.write_bytes(old)
        proc = subprocess.Popen([sys.executable, "-m", "fusedkat.cli", "convert", str(vit_src), str(dst),
                                 "--force", "--no-verify"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=dict(os.environ, FUSEDKAT_DEBUG=""))
        deadline = time.monotonic() + 240
        sent = False
        while proc.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(".kat.pth.") for p in tmp_path.iterdir()):
                proc.send_signal(signal.SIGINT)
                sent = True
                break
            time.sleep(0.0005)
        out, err = proc.communicate(timeout=240)
        assert [p.name for p in tmp_path.iterdir()] == ["kat.pth"], "temporary file left behind"
        if proc.returncode == 130:
            interrupted += 1
            assert dst.read_bytes() == old
            assert err.strip().splitlines()[-1] == "fusedkat convert: interrupted", err
            assert "Traceback" not in err
        else:  # the write finished before the signal landed: the new file is complete
            assert proc.returncode == 0 and sent is not None, err
            torch.load(dst, weights_only=True)
        if interrupted:
            break
    assert interrupted >= 1, "SIGINT never landed during the write in 3 attempts"
