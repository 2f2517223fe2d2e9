"""``fusedkat train`` / ``fusedkat eval`` on a real image folder, on the CPU, with real timm and torch.distributed.

The folder is made at test time: scikit-learn's bundled 8x8 digits, upscaled to 32x32 and written as
PNG files in one folder per class (train/ and val/).  The model is a 2-block KAT (embed 64, 2 heads)
at 32 px, so a run takes seconds.  Runs that must be bit-exact (resume) are separate processes with one
thread each (``OMP_NUM_THREADS=1``), so thread scheduling cannot change summation orders.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fusedkat.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "kat_tiny_patch16_224", "--model-kwargs", "depth=2", "embed_dim=64", "num_heads=2",
        "--img-size", "32"]
PLAIN = ["--no-compile", "--workers", "0", "--no-progress", "--warmup-epochs", "1"]
# No random augmentation, mixup, label smoothing or drop-path: a deterministic function of the data.
NO_RANDOM = ["--no-aug", "--mixup", "0", "--cutmix", "0", "--smoothing", "0", "--drop-path", "0"]
FINAL = re.compile(r"final: (top-1 [\d.]+%  top-5 [\d.]+%  loss [\d.]+  \(\d+ images\))")


def _write_digits(root: Path, per_train: int, per_val: int) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    for c in range(10):
        idx = np.flatnonzero(d.target == c)
        rng.shuffle(idx)
        for split, ids in (("train", idx[:per_train]), ("val", idx[per_train:per_train + per_val])):
            folder = root / split / f"digit{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in ids:
                img = Image.fromarray((d.images[i] * (255 / 16)).astype(np.uint8)).resize((32, 32), Image.NEAREST)
                img.save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """400 training and 100 validation images, 10 classes."""
    return _write_digits(tmp_path_factory.mktemp("digits"), 40, 10)


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory) -> Path:
    """80 training and 30 validation images (5 optimizer steps per epoch at global batch 16)."""
    return _write_digits(tmp_path_factory.mktemp("small_digits"), 8, 3)


@pytest.fixture(autouse=True)
def _one_thread():
    """In-process runs use one thread too (as the subprocesses): faster on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusedkat", *args], env=_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """One real 3-epoch run: (output folder, its stdout)."""
    out = tmp_path_factory.mktemp("run") / "out"
    r = _cli("train", "--data-dir", str(digits), *TINY, *PLAIN, *NO_RANDOM, "--epochs", "3", "--batch-size", "16",
             "--lr", "2e-3", "--output", str(out))
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def test_training_lowers_the_loss_and_writes_its_files(trained):
    out, stdout = trained
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"], hist
    assert hist[-1]["val_loss"] < hist[0]["val_loss"], hist
    assert hist[-1]["top1"] > 30.0, hist  # chance is 10%
    assert {"top5", "lr", "images_per_s"} <= set(hist[-1])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "config.json").read_text())["global_batch"] == 16
    ck = _ckpt(out / "last.pth")
    assert ck["format"] == "fusedkat-train/1" and ck["epoch"] == 3 and ck["step_in_epoch"] == 0
    assert ck["global_step"] == 3 * (400 // 16)
    assert {"optimizer", "scheduler", "rng", "config", "classes", "ema", "scaler"} <= set(ck)
    assert (out / "best.pth").exists()
    assert FINAL.search(stdout), stdout


def test_eval_reproduces_the_accuracy_printed_at_the_end_of_training(capsys, trained, digits, tmp_path):
    out, stdout = trained
    printed = FINAL.search(stdout).group(1)
    assert main(["eval", "--checkpoint", str(out / "last.pth"), "--data-dir", str(digits / "val"), "--workers", "0",
                 "--json", str(tmp_path / "m.json")]) == 0
    got = capsys.readouterr().out
    assert printed in got, (printed, got)
    assert "crop_pct 0.875" in got and "bicubic" in got  # the KAT pretrained_cfg preprocessing
    # The same weights as a plain state_dict in the official layout ({"state_dict": ...} wrapper, as
    # the official files): --model names the architecture.
    sd = _ckpt(out / "last.pth")["model"]
    torch.save({"state_dict": sd}, tmp_path / "official.pth")
    m = json.loads((tmp_path / "m.json").read_text())
    assert main(["eval", "--checkpoint", str(tmp_path / "official.pth"), "--data-dir", str(digits / "val"),
                 *TINY, "--workers", "0"]) == 0
    got = capsys.readouterr().out
    assert f"top-1 {m['top1']:.2f}%" in got and f"loss {m['val_loss']:.4f}" in got, got


@pytest.mark.slow
def test_sigint_mid_epoch_then_resume_equals_an_uninterrupted_run(capsys, digits, tmp_path):
    """The full default recipe (RandAugment, random erasing, mixup/CutMix, smoothing, drop-path) plus
    EMA: interrupted by a real SIGINT in epoch 2, resumed, the final weights, EMA and per-epoch losses
    are bit-identical to an uninterrupted run's."""
    args = ["train", "--data-dir", str(digits), *TINY, *PLAIN, "--epochs", "3", "--batch-size", "8",
            "--model-ema", "--model-ema-decay", "0.99"]
    assert main(args + ["--output", str(tmp_path / "ref")]) == 0  # in this process (one thread, as the others)
    out = tmp_path / "cut"
    p = subprocess.Popen([sys.executable, "-m", "fusedkat", *args, "--output", str(out)], env=_env(), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:  # wait for the end of epoch 1, then interrupt epoch 2 (50 steps, > 1 s)
        if line.startswith("epoch 1/3"):
            break
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    msg = [ln for ln in err.splitlines() if ln.strip()]
    assert len(msg) == 1 and "interrupted at epoch" in msg[0] and "--resume" in msg[0], err
    cut = _ckpt(out / "last.pth")
    # mid-epoch (epoch 2, or epoch 3 if the signal came during epoch 2's validation on a loaded machine)
    assert cut["epoch"] in (1, 2) and 0 < cut["step_in_epoch"] < 50, (cut["epoch"], cut["step_in_epoch"])
    capsys.readouterr()
    assert main(args + ["--output", str(out), "--resume", str(out / "last.pth")]) == 0
    assert f"step {cut['step_in_epoch']}/50" in capsys.readouterr().out
    a, b = _ckpt(tmp_path / "ref" / "last.pth"), _ckpt(out / "last.pth")
    for part in ("model", "ema"):
        diff = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert not diff, (part, diff[:5])
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert [h["top1"] for h in a["history"]] == [h["top1"] for h in b["history"]]
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    # eval --use-ema reproduces the EMA top-1 of the last epoch
    assert main(["eval", "--checkpoint", str(out / "last.pth"), "--data-dir", str(digits / "val"), "--workers", "0",
                 "--use-ema"]) == 0
    got = capsys.readouterr().out
    assert f"top-1 {b['history'][-1]['ema_top1']:.2f}%" in got and "(EMA weights)" in got, got


def _weights_gap(a: dict, b: dict) -> tuple[float, float]:
    d = torch.cat([(a[k].double() - b[k].double()).abs().flatten() for k in a])
    return float(d.max()), float(d.quantile(0.99))


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process_with_the_same_global_batch(small_digits, tmp_path):
    """2 gloo processes x batch 8 vs 1 process x batch 16 (random augmentation, mixup and drop-path
    off: their streams are per rank).  AdamW moves every weight by about lr per step whatever the
    gradient's size, so weights whose gradient is ~0 can differ by up to ~lr from float summation order;
    the bulk must agree to float precision.  A run with another seed (other batches) is far off."""
    common = ["train", "--data-dir", str(small_digits), *TINY, *PLAIN, *NO_RANDOM, "--epochs", "2", "--lr", "2e-3"]
    assert main(common + ["--batch-size", "16", "--output", str(tmp_path / "one")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "fusedkat",
           *common]
    two = subprocess.run(cmd + ["--batch-size", "8", "--output", str(tmp_path / "two")], env=_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stdout and "global batch 16" in two.stdout
    a, b = _ckpt(tmp_path / "one" / "last.pth"), _ckpt(tmp_path / "two" / "last.pth")
    assert a["global_step"] == b["global_step"] == 10
    worst, p99 = _weights_gap(a["model"], b["model"])
    assert worst < 2e-3 and p99 < 1e-5, (worst, p99)
    assert [h["top1"] for h in a["history"]] == [h["top1"] for h in b["history"]]
    np.testing.assert_allclose([h["train_loss"] for h in a["history"]], [h["train_loss"] for h in b["history"]],
                               rtol=1e-5)
    # Negative control: another seed, on a copy with one corrupt image left out (--bad-images skip:
    # rank 0 checks the images and tells rank 1 which to drop, or the ranks' epochs would differ).
    import shutil

    data = Path(shutil.copytree(small_digits, tmp_path / "data"))
    (data / "train" / "digit0" / "broken.png").write_bytes(b"not an image")
    cmd[cmd.index(str(small_digits))] = str(data)
    other = subprocess.run(cmd + ["--batch-size", "8", "--seed", "1", "--bad-images", "skip",
                                  "--output", str(tmp_path / "other")],
                           env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert other.returncode == 0, other.stderr[-3000:]
    assert other.stdout.count("skipped 1 corrupt training images") == 1, other.stdout
    c = _ckpt(tmp_path / "other" / "last.pth")
    assert c["global_step"] == 2 * ((80 // 2) // 8)  # 80 usable images of 81
    worst, p99 = _weights_gap(a["model"], c["model"])
    assert p99 > 1e-3, (worst, p99)


# ---- bad input: one line, non-zero exit, before any training ---------------------------------------------


def _error(capsys, *argv: str) -> str:
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert rc != 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fusedkat {argv[0]}: error: "), err
    return lines[0]


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data-dir", str(data), *TINY, *PLAIN, *NO_RANDOM, "--epochs", "1", "--batch-size", "16",
            "--output", str(out), *extra]


def test_bad_data_folders(capsys, tmp_path):
    out = tmp_path / "out"
    assert "does not exist" in _error(capsys, *_train_args(tmp_path / "nope", out))
    (tmp_path / "flat").mkdir()
    assert "no train/ sub-folder" in _error(capsys, *_train_args(tmp_path / "flat", out))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    assert "has no class folders" in _error(capsys, *_train_args(tmp_path / "empty", out))
    _write_digits(tmp_path / "d", 2, 1)
    (tmp_path / "d" / "train" / "zz_empty").mkdir()
    (tmp_path / "d" / "train" / "zz_empty" / "notes.txt").write_text("no images here")
    assert "zz_empty' has no images" in _error(capsys, *_train_args(tmp_path / "d", out))
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_corrupt_images_error_or_are_skipped_with_a_count(capsys, tmp_path):
    from fusedkat.app.imagedata import scan_folder

    data = _write_digits(tmp_path / "d", 3, 2)
    bad = data / "train" / "digit3" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    line = _error(capsys, *_train_args(data, tmp_path / "out"))
    assert "corrupt image" in line and "broken.png" in line and "--bad-images skip" in line
    scan = scan_folder(str(data / "train"), bad_images="skip")
    assert scan.skipped == [str(bad)] and len(scan.samples) == 30
    # with --bad-images skip training runs, and says how many it left out
    assert main(_train_args(data, tmp_path / "out2", "--bad-images", "skip", "--batch-size", "8")) == 0
    assert "skipped 1 corrupt training images" in capsys.readouterr().out


def test_unwritable_output_and_previous_run(capsys, trained, digits, tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    assert "exists and is not a folder" in _error(capsys, *_train_args(digits, f))
    assert "cannot create output folder" in _error(capsys, *_train_args(digits, f / "sub"))
    out, _ = trained
    line = _error(capsys, *_train_args(digits, out))
    assert "holds a previous run" in line and "--force" in line and "--resume" in line


def test_resume_refuses_another_model_or_config(capsys, trained, digits, tmp_path):
    out, _ = trained
    last = str(out / "last.pth")
    base = ["train", "--data-dir", str(digits), *PLAIN, *NO_RANDOM, "--epochs", "3", "--batch-size", "16",
            "--lr", "2e-3", "--output", str(out), "--resume", last]
    other_model = ["--model", "kat_tiny_patch16_224", "--model-kwargs", "depth=1", "embed_dim=64", "num_heads=2",
                   "--img-size", "32"]
    assert "is a checkpoint of 'kat_tiny_patch16_224'" in _error(capsys, *base, *other_model)
    line = _error(capsys, *base[:-6], "--batch-size", "8", "--lr", "2e-3", "--output", str(out), "--resume", last,
                  *TINY)
    assert "different config" in line and "batch_size: 16 -> 8" in line
    torch.save({"state_dict": {}}, tmp_path / "plain.pth")
    assert "not a fusedkat train checkpoint" in _error(capsys, *base[:-1], str(tmp_path / "plain.pth"), *TINY)
    assert "checkpoint file not found" in _error(capsys, *base[:-1], str(tmp_path / "none.pth"), *TINY)
    # eval: a train checkpoint of another model / data with other classes / wrong official layout
    val = str(digits / "val")
    assert "is a checkpoint of" in _error(capsys, "eval", "--checkpoint", last, "--data-dir", val,
                                          "--model", "kat_small_patch16_224")
    sd = _ckpt(out / "last.pth")["model"]
    torch.save({k: v for k, v in sd.items() if "blocks.1." not in k}, tmp_path / "cut.pth")
    line = _error(capsys, "eval", "--checkpoint", str(tmp_path / "cut.pth"), "--data-dir", val, *TINY)
    assert "does not fit" in line and "blocks.1." in line


def test_train_from_a_vit_checkpoint(capsys, small_digits, tmp_path):
    """--init-from-vit end to end (a full-size KAT-T at 32 px: 5 tokens, so seconds on a CPU), and a ViT
    that does not fit the KAT (2 blocks vs 12) is one line before training."""
    import timm

    torch.save(timm.create_model("vit_tiny_patch16_224").state_dict(), tmp_path / "vit.pth")
    vit = ["--init-from-vit", str(tmp_path / "vit.pth")]
    args = ["train", "--data-dir", str(small_digits), "--model", "kat_tiny_patch16_224", "--img-size", "32",
            *PLAIN, *NO_RANDOM, "--epochs", "1", "--batch-size", "16"]
    assert main(args + vit + ["--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "initialised from ViT" in out and "new head" in out and "final: top-1" in out
    line = _error(capsys, *args, *vit, "--model-kwargs", "depth=2", "--output", str(tmp_path / "out2"))
    assert "does not fit" in line and "blocks.2." in line


def test_init_from_vit_uses_the_vit_to_kat_transfer(tmp_path):
    """A timm ViT file -> the KAT's attention/embedding weights are the ViT's, fc1/fc2 copied, new head
    (10 classes), position embedding resampled from 14x14 to 2x2 patches by timm."""
    import timm

    from fusedkat.app.imagetrain import build_model, init_from_vit

    torch.manual_seed(3)
    vit = timm.create_model("vit_tiny_patch16_224")
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    kat = build_model("kat_tiny_patch16_224", 10, img_size=32)
    head_before = kat.head.weight.detach().clone()
    with open(os.devnull, "w") as devnull:
        init_from_vit(kat, str(tmp_path / "vit.pth"), "vit_tiny_patch16_224", devnull)
    assert torch.equal(kat.blocks[3].attn.qkv.weight, vit.blocks[3].attn.qkv.weight)
    assert torch.equal(kat.blocks[5].mlp.fc1.weight, vit.blocks[5].mlp.fc1.weight)
    assert torch.equal(kat.cls_token, vit.cls_token) and kat.pos_embed.shape == (1, 5, 192)
    assert torch.equal(kat.head.weight, head_before)
