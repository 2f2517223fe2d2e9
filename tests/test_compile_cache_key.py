"""Inductor's caches key on the Dynamo graph, where the fusedkat ops are opaque: without fusedkat's
key in them, a graph compiled by another version of the decompositions (say, one without the
large-|x| rescue) was served unchanged (issue 20: nothing silent).  The key pass puts the hash of
the decompositions' source files into the cache keys."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import fusedkat  # noqa: F401
from fusedkat.ops import lowering


def test_registration_installs_the_key_pass():
    import torch._inductor.config as config

    lowering.register_inductor_decompositions()
    key_pass = config.post_grad_custom_post_pass
    assert repr(key_pass) == "fusedkat.ops.lowering.DecompositionKeyPass()"
    assert key_pass.uuid() == lowering.decomposition_key()


def test_the_key_follows_the_sources(tmp_path, monkeypatch):
    keys = []
    for version in ("v = 1\n", "v = 2\n"):
        src = tmp_path / version[4] / "torch_impl.py"  # torch's file hashes are cached by path
        src.parent.mkdir()
        src.write_text(version)
        monkeypatch.setattr(lowering, "decomposition_sources", lambda src=src: (str(src),))
        keys.append(lowering.decomposition_key())
    assert keys[0] != keys[1]
    assert keys[0][1] == keys[1][1] == lowering.lowering_state()


def test_the_real_sources_exist_and_include_the_math():
    names = {os.path.basename(p) for p in lowering.decomposition_sources()}
    assert {"torch_impl.py", "rational_math.py", "lowering.py", "custom_ops.py"} <= names
    assert all(os.path.isfile(p) for p in lowering.decomposition_sources())


_CHILD = textwrap.dedent("""
    import sys, torch
    import fusedkat
    from fusedkat.ops import lowering
    src, content, patched = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    open(src, "w").write(content)
    lowering.decomposition_sources = lambda: (src,)
    if patched:  # a different decomposition, as another fusedkat version would trace
        lowering._group_rational = lambda x, *a, **k: x * 0
    torch.manual_seed(0)
    x, a, b = torch.randn(8, 16), torch.randn(1, 6), torch.randn(8, 4)
    f = torch.compile(lambda x, a, b: fusedkat.group_rational(x, a, b), fullgraph=True)
    print("RESULT", f(x, a, b).abs().sum().item())
""")


def _compiled_sum(tmp_path, cache, content: str, patched: bool) -> float:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "src.py"), content, "1" if patched else "0"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return float(next(l for l in out.stdout.splitlines() if l.startswith("RESULT")).split()[1])


def test_a_changed_decomposition_is_not_served_from_the_cache(tmp_path):
    """Three cold interpreters sharing one inductor cache: the same sources reuse the compiled graph
    (the cache is in play: the in-memory patch is not seen), changed sources recompile it."""
    cache = tmp_path / "cache"
    first = _compiled_sum(tmp_path, cache, "v1", patched=False)
    assert first > 0
    assert _compiled_sum(tmp_path, cache, "v1", patched=True) == first  # hit: same key
    assert _compiled_sum(tmp_path, cache, "v2", patched=True) == 0.0  # miss: traced anew
