"""examples/sequence_kanify.py: the addition data is right, and the example runs end to end (few steps)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sequence_kanify.py"


def _load():
    spec = importlib.util.spec_from_file_location("example_sequence_kanify", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_addition_problems_encode_the_sum():
    sk = _load()
    for digits in (1, 2, 3):
        rows = sk.problems(200, digits, torch.Generator().manual_seed(digits))
        assert rows.shape == (200, 3 * digits + 4) and rows.dtype == torch.int64
        for r in rows.tolist():
            a = int("".join(map(str, r[:digits])))
            b = int("".join(map(str, r[digits + 1: 2 * digits + 1])))
            assert r[digits] == sk.PLUS and r[2 * digits + 1] == sk.EQ and r[-1] == sk.END
            answer = r[2 * digits + 2: 3 * digits + 3]  # least significant digit first
            assert int("".join(map(str, reversed(answer)))) == a + b
        # the logits that predict the answer are those one position earlier
        s = sk.answer_slice(digits)
        assert (s.stop - s.start, s.start + 1) == (digits + 2, 2 * digits + 2)


def test_held_out_problems_are_never_drawn():
    sk = _load()
    test = sk.problems(40, 1, torch.Generator().manual_seed(0))  # 40 of the 100 one-digit problems
    ids = sk.problem_ids(test, 1)
    assert torch.equal(ids, test[:, 0] * 10 + test[:, 2])
    train = sk.problems(2000, 1, torch.Generator().manual_seed(1), exclude=ids)
    assert not torch.isin(sk.problem_ids(train, 1), ids).any()
    assert len(set(sk.problem_ids(train, 1).tolist())) == 100 - len(set(ids.tolist()))


def test_example_runs(tmp_path):
    sk = _load()
    out = tmp_path / "run"
    res = sk.main(["--steps", "4", "--eval-every", "2", "--test-size", "40", "--dim", "32", "--heads", "2",
                   "--batch-size", "16", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert (out / "rationals.png").stat().st_size > 1000
    assert len(saved["kanify"]["converted"]) == 2 and not saved["kanify"]["skipped"]
    assert set(saved["results"]) == {"GELU MLP", "GR-KAN MLP (kanify)"} == set(res["results"])
    for r in saved["results"].values():
        assert 0.0 <= r["accuracy"] <= 1.0 and r["tokens_per_s"] > 0 and [h["step"] for h in r["history"]] == [2, 4]
    gelu, kan = saved["results"]["GELU MLP"], saved["results"]["GR-KAN MLP (kanify)"]
    assert kan["params"] - gelu["params"] == 2 * 2 * (6 + 8 * 4)  # two rationals per MLP, two MLPs
    with pytest.raises(SystemExit):
        sk.main(["--steps", "0", "--out", str(out)])
