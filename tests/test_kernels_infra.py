"""Unit tests of the cutlass_kernels plumbing that need no GPU: config keys, arch names and
detection, the disk compile cache (including concurrent processes), cubin/SASS parsing, the
variant registry, launch planning and the dispatch probe's decisions."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from cutlass_kernels import arch as karch
from cutlass_kernels import cache as kcache
from cutlass_kernels import registry, sass
from cutlass_kernels.config import KernelConfig, dtype_name_of
from cutlass_kernels.rational_elementwise import GroupRationalBwdConfig, GroupRationalConfig


# ------------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------------
def test_config_key_equal_for_equal_configs_and_differs_per_field():
    base = GroupRationalConfig(dtype="bf16", form="A", vec=8)
    assert base.cache_key() == GroupRationalConfig(dtype="bf16", form="A", vec=8).cache_key()
    keys = {base.cache_key()}
    for change in ({"dtype": "fp16"}, {"form": "B"}, {"vec": 4}, {"m": 3}, {"n": 2}, {"unroll": 2}, {"threads": 128}):
        keys.add(dataclasses.replace(base, **change).cache_key())
    assert len(keys) == 8
    # same fields, different family (forward vs backward) -> different key
    assert GroupRationalBwdConfig(dtype="bf16", form="A", vec=8, unroll=4).cache_key() != base.cache_key()


_KEY_CODE = """
import dataclasses, typing
from cutlass_kernels.config import KernelConfig
@dataclasses.dataclass(frozen=True)
class C(KernelConfig):
    family: typing.ClassVar[str] = "probe_fwd"
    dtype: str = "bf16"
    tile: tuple = (128, 64)
print(C(dtype="fp16", tile=(64, 32)).cache_key())
"""


def test_config_key_is_stable_across_processes():
    # only cutlass_kernels.config is imported in the child (no torch): keys must not depend on
    # hash randomisation, object ids or import order
    exec_ns: dict = {}
    exec(compile(_KEY_CODE.replace("print(", "exec_ns_key = ("), "<key>", "exec"), exec_ns)
    outs = {subprocess.run([sys.executable, "-c", _KEY_CODE], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout.strip() for seed in (1, 2)}
    assert outs == {exec_ns["exec_ns_key"]}


def test_config_is_frozen_hashable_and_rejects_bad_fields():
    cfg = GroupRationalConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.vec = 4  # type: ignore[misc]
    assert {cfg: 1}[GroupRationalConfig()] == 1
    with pytest.raises(ValueError, match="dtype"):
        GroupRationalConfig(dtype="fp64")
    with pytest.raises(ValueError, match="form"):
        GroupRationalConfig(form="C")
    with pytest.raises(ValueError, match="16 bytes"):
        GroupRationalConfig(dtype="fp32", vec=8)

    @dataclasses.dataclass(frozen=True)
    class Bad(KernelConfig):
        family = "bad"
        thing: object = None

    with pytest.raises(TypeError, match="primitive"):
        Bad(thing=[1, 2])


def test_dtype_names():
    assert dtype_name_of(torch.bfloat16) == "bf16" and dtype_name_of(torch.float32) == "fp32"
    with pytest.raises(ValueError):
        dtype_name_of(torch.float64)


# ------------------------------------------------------------------------------------------------
# arch
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling,canonical", [("sm_80", "sm_80"), ("sm80", "sm_80"), ("86", "sm_86"),
                                                ("sm_90", "sm_90a"), ("SM_90A", "sm_90a"), ("sm_100a", "sm_100a")])
def test_normalize_arch(spelling, canonical):
    assert karch.normalize_arch(spelling) == canonical


@pytest.mark.parametrize("bad", ["", "hopper", "sm_", "sm_9x"])
def test_normalize_arch_rejects(bad):
    with pytest.raises(ValueError):
        karch.normalize_arch(bad)


def test_arch_from_capability_and_back():
    assert karch.arch_from_capability((8, 0)) == "sm_80"
    assert karch.arch_from_capability((9, 0)) == "sm_90a"
    assert karch.capability_of("sm_90a") == (9, 0)


def test_detect_arch_override_env_and_no_device(monkeypatch):
    monkeypatch.delenv(karch.ENV_ARCH, raising=False)
    assert karch.detect_arch(override="sm90") == "sm_90a"
    monkeypatch.setenv(karch.ENV_ARCH, "sm_86")
    assert karch.detect_arch() == "sm_86"
    assert karch.detect_arch(override="sm_80") == "sm_80"  # explicit beats the environment
    monkeypatch.delenv(karch.ENV_ARCH)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="FUSEDKAT_ARCH"):
        karch.detect_arch()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert karch.detect_arch() == "sm_90a"


# ------------------------------------------------------------------------------------------------
# disk cache
# ------------------------------------------------------------------------------------------------
def test_cache_dir_option(monkeypatch, tmp_path):
    monkeypatch.setenv(kcache.ENV_CACHE_DIR, str(tmp_path / "c"))
    assert kcache.default_cache_dir() == tmp_path / "c"
    assert kcache.CompileCache().root == tmp_path / "c"
    monkeypatch.delenv(kcache.ENV_CACHE_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kcache.default_cache_dir() == tmp_path / "xdg" / "fusedkat" / "cute"


def test_cache_builds_once_then_hits(tmp_path):
    c = kcache.CompileCache(tmp_path)
    calls = []

    def build(d: Path) -> dict:
        calls.append(d)
        (d / "kernel.cubin").write_bytes(b"\x7fELF fake")
        return {"registers": 40}

    path, meta, hit = c.get_or_build("k1", build)
    assert (hit, meta, len(calls)) == (False, {"registers": 40}, 1)
    assert (path / "kernel.cubin").read_bytes() == b"\x7fELF fake"
    path2, meta2, hit2 = c.get_or_build("k1", build)
    assert (hit2, meta2, path2, len(calls)) == (True, meta, path, 1)
    _, _, hit3 = c.get_or_build("k2", build)
    assert not hit3 and len(calls) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_cache_failed_build_publishes_nothing(tmp_path):
    c = kcache.CompileCache(tmp_path)

    def boom(d: Path) -> dict:
        (d / "partial").write_text("x")
        raise RuntimeError("compile failed")

    with pytest.raises(RuntimeError, match="compile failed"):
        c.get_or_build("k", boom)
    assert c.lookup("k") is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    _, meta, hit = c.get_or_build("k", lambda d: {"ok": 1})
    assert (meta, hit) == ({"ok": 1}, False)


_WORKER_CODE = """
import json, sys, time
from pathlib import Path
from cutlass_kernels.cache import CompileCache
root, counter, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
while time.time() < start:  # line the processes up so they really race
    time.sleep(0.001)
def build(d):
    with open(counter, "a") as fh:
        fh.write("built\\n")
    time.sleep(0.5)  # a slow "compile": the others must wait for it, not build again
    (d / "kernel.cubin").write_bytes(b"x" * 1000)
    return {"builder": str(d)}
path, meta, hit = CompileCache(root).get_or_build("shared-key", build)
print(json.dumps({"meta": meta, "hit": hit, "size": (path / "kernel.cubin").stat().st_size}))
"""


def test_cache_concurrent_processes_build_once(tmp_path):
    counter = tmp_path / "count.txt"
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER_CODE, str(tmp_path / "cache"), str(counter), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert counter.read_text().count("built") == 1
    assert sorted(r["hit"] for r in results) == [False, True, True, True]
    assert len({json.dumps(r["meta"]) for r in results}) == 1
    assert all(r["size"] == 1000 for r in results)


def test_source_fingerprint_tracks_edits(tmp_path, monkeypatch):
    mod = tmp_path / "fk_fp_probe_mod.py"
    mod.write_text("A = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fp1 = kcache.source_fingerprint(["fk_fp_probe_mod"])
    assert fp1 == kcache.source_fingerprint(["fk_fp_probe_mod"])
    mod.write_text("A = 2\n")
    assert kcache.source_fingerprint(["fk_fp_probe_mod"]) != fp1
    with pytest.raises(ModuleNotFoundError):
        kcache.source_fingerprint(["fk_no_such_module_xyz"])


def test_dsl_version_is_the_installed_one():
    import importlib.metadata

    assert kcache.dsl_version() == importlib.metadata.version("nvidia-cutlass-dsl")


# ------------------------------------------------------------------------------------------------
# SASS parsing
# ------------------------------------------------------------------------------------------------
SASS_SAMPLE = textwrap.dedent("""
        Function : kernel_x
        /*0000*/                   IMAD.MOV.U32 R1, RZ, RZ, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/              @!P0 LDG.E R8, desc[UR4][R6.64] ;
        /*0030*/                   HMMA.16816.F32.BF16 R12, R4, R8, R12 ;
        /*0040*/                   HMMA.16816.F32.BF16 R16, R4, R10, R16 ;
        /*0050*/               @P1 BRA 0x60 ;
        /*0060*/                   MUFU.RCP R3, R2 ;
        /*0070*/                   STG.E.128 desc[UR4][R2.64], R4 ;
        /*0080*/                   EXIT ;
""")


def test_opcode_counts():
    assert sass.opcode_counts(SASS_SAMPLE) == {"BRA": 1, "EXIT": 1, "HMMA": 2, "IMAD": 1, "LDG": 2, "MUFU": 1, "STG": 1}
    full = sass.full_opcode_counts(SASS_SAMPLE)
    assert full["LDG.E.128"] == 1 and full["LDG.E"] == 1 and full["HMMA.16816.F32.BF16"] == 2


def test_sass_expectations_prefix_match():
    full = sass.full_opcode_counts(SASS_SAMPLE)
    assert registry.sass_expectation_failures([("HMMA", 2), ("LDG.E.128", 1), ("MUFU.RCP", 1)], full) == []
    fails = registry.sass_expectation_failures([("HGMMA", 1), ("HMMA", 3), ("LDG.E.64", 1)], full)
    assert fails == ["expected >= 1 HGMMA, found 0", "expected >= 3 HMMA, found 2", "expected >= 1 LDG.E.64, found 0"]


def test_cuobjdump_is_found():
    assert sass.find_tool("cuobjdump") is not None, "pip install nvidia-cuda-cuobjdump"


# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------
def test_registry_lists_rational_variants():
    variants, skipped = registry.all_variants()
    names = [v.name for v in variants]
    assert len(names) == len(set(names))
    rational = [v for v in variants if v.name.startswith("group_rational_")]
    # fwd + bwd + bwdf (backward writing F(x)) x 2 forms x (bf16: 3, fp16: 3, fp32: 2 vector widths)
    assert len(rational) == 3 * 2 * (3 + 3 + 2)
    assert sum(dict(v.kwargs).get("emit_f", False) for v in rational) == 2 * (3 + 3 + 2)
    for v in variants:
        assert "rational" in v.name
        if v.target.startswith("cutlass_kernels.gemm"):
            assert "gemm" in v.name
        assert {"sm_80", "sm_90a"} <= set(v.arches) or v.target.startswith("cutlass_kernels.gemm")
    for s in skipped:
        assert s.startswith("cutlass_kernels.gemm")


def test_registry_skips_missing_modules_and_rejects_duplicates(tmp_path, monkeypatch):
    (tmp_path / "fk_dup_variants.py").write_text(textwrap.dedent("""
        from cutlass_kernels.registry import make_variant
        def variants():
            return [make_variant("x_rational", "m:f"), make_variant("x_rational", "m:g")]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    variants, skipped = registry.all_variants(["fk_missing_variants_mod"])
    assert (variants, skipped) == ([], ["fk_missing_variants_mod"])
    with pytest.raises(ValueError, match="duplicate"):
        registry.all_variants(["fk_dup_variants"])
    with pytest.raises(ValueError, match="module:function"):
        registry.make_variant("x", "no_colon")


# ------------------------------------------------------------------------------------------------
# launch planning (pure arithmetic; runs on CPU)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows,k,g,dtype,align,vec", [
    (197, 768, 8, "bf16", 16, 8), (5, 64, 16, "bf16", 16, 4), (3, 96, 16, "fp16", 16, 1),
    (7, 3072, 1, "fp32", 16, 4), (7, 192, 16, "fp32", 16, 4), (7, 768, 8, "bf16", 8, 4),
    (7, 768, 8, "bf16", 2, 1), (1, 100, 4, "fp32", 16, 1),
])
def test_plan_vector_width_and_threads(rows, k, g, dtype, align, vec):
    from cutlass_kernels.launch import plan

    p = plan(rows * k, k, g, dtype, align, sm_count=132)
    assert p.vec == vec
    assert (k // g) % p.vec == 0 and p.total * p.vec == rows * k
    assert p.threads % p.kvecs == 0  # every thread stays in one column block, hence one group
    assert 1 <= p.rows_per_round <= rows
    L, groups, kvg = p.partial_shape
    assert L * groups * kvg == p.threads and groups == g


# ------------------------------------------------------------------------------------------------
# dispatch decisions
# ------------------------------------------------------------------------------------------------
def test_probe_decisions():
    from cutlass_kernels import dispatch_probe as dp

    cuda = torch.device("cuda")
    assert "CUDA devices only" in dp.unavailable_reason(torch.device("cpu"), "group_rational_forward")
    assert "no CuTe kernel" in dp.unavailable_reason(cuda, "something_else", capability=(9, 0))
    assert "older than sm_80" in dp.unavailable_reason(cuda, "group_rational_forward", capability=(7, 5))
    for op in dp.OPS:  # the DSL imports here, so only the arch could stop it
        assert dp.unavailable_reason(cuda, op, capability=(9, 0)) is None
        assert dp.unavailable_reason(cuda, op, capability=(8, 0)) is None
    if not torch.cuda.is_available():
        assert dp.unavailable_reason(cuda, "group_rational_forward") == "CUDA is not available"


def test_dispatch_uses_probe_and_forcing(monkeypatch):
    from fusedkat.ops import dispatch

    import cutlass_kernels.dispatch_probe  # noqa: F401  (registers the probe)

    assert dispatch._cute_unavailable_reason is cutlass_kernels.dispatch_probe.unavailable_reason
    assert dispatch.choose(torch.device("cpu"), "group_rational_forward") == "torch"
    # a CUDA device with a supported arch -> cute (device query faked: no GPU here)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cuda = torch.device("cuda", 0)
    assert dispatch.choose(cuda, "group_rational_backward") == "cute"
    with dispatch.use_backend("torch"):
        assert dispatch.choose(cuda, "group_rational_backward") == "torch"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert dispatch.choose(cuda, "rational_linear_forward") == "torch"
    with dispatch.use_backend("cute"), pytest.raises(RuntimeError, match="older than sm_80"):
        dispatch.choose(cuda, "rational_linear_forward")


def test_launch_arguments_accept_tensors_that_require_grad():
    """Autograd hands the custom ops' CUDA launchers leaves with requires_grad=True, which DLPack
    refused (an H100 run of the GPU suite failed on that before the fix).  Every launcher now passes
    pointers: only addresses and sizes are read, whatever the tensors' autograd state."""
    pytest.importorskip("cutlass")
    from cutlass_kernels import launch
    from cutlass_kernels.gemm import bwd_launch

    t = torch.randn(64, 32, requires_grad=True)
    ws = torch.empty(8, 4, 10)
    for ffi in (True, False):
        assert len(bwd_launch.launch_arguments(t, t, t, t, ws, t, t, ffi)) == 14
    num, den = launch._coefficients(torch.randn(1, 6, requires_grad=True), torch.randn(4, 4, requires_grad=True))
    p = launch.plan(t.numel(), 32, 4, "fp32", 16, 1)
    for ffi in (True, False):
        args = launch.elementwise_arguments((t, t), None, num, den, p, ffi)
        assert len(args) == 11
    ints = launch.elementwise_arguments((t, t), None, num, den, p, True)
    assert ints[:4] == (t.data_ptr(), t.data_ptr(), num.data_ptr(), den.data_ptr())


#: the elementwise host entries: forward, backward, and the backward that also writes F(x)
KINDS = ("forward", "backward", "backward_f")


def _elementwise_entry(tmp_path, kind: str, ffi: bool):
    """An elementwise host entry compiled for sm_80 with placeholders, AOT-exported and loaded back."""
    import shutil

    pytest.importorskip("cutlass")
    if ffi:
        pytest.importorskip("tvm_ffi")
    if shutil.which("g++") is None:
        pytest.skip("no g++ for the AOT link")
    from cutlass_kernels import runtime

    target = f"cutlass_kernels.rational_elementwise:compile_{'forward' if kind == 'forward' else 'backward'}"
    fields = {"dtype": "bf16", "form": "A", "m": 5, "n": 4, "vec": 8}
    if kind == "backward_f":
        fields["emit_f"] = True
    prefix = f"fk_ew_{KINDS.index(kind)}{int(ffi)}"
    runtime._export(runtime._compile(target, fields, "sm_80", ffi), prefix, tmp_path, ffi)
    return runtime._load(tmp_path, prefix, ffi)


def _elementwise_problem(kind: str):
    """``(vectors, part, num, den, plan, extra)``: the arguments of ``elementwise_arguments``."""
    from cutlass_kernels import launch
    from cutlass_kernels.rational_elementwise import TAIL

    rows, k, g = 197, 384, 8
    vecs = tuple(torch.zeros(rows, k, dtype=torch.bfloat16) for _ in range(2 if kind == "forward" else 3))
    extra = ()
    if kind == "backward_f":  # F(x) with the ones-column tail: row stride (K + TAIL) / V vectors
        vecs += (torch.zeros(rows, k + TAIL, dtype=torch.bfloat16),)
        extra = ((k + TAIL) // 8, 1)
    num, den = torch.zeros(g, 6), torch.zeros(g, 4)
    p = launch.plan(rows * k, k, g, "bf16", 16, 132)
    part = None if kind == "forward" else torch.zeros(10, p.threads)
    return vecs, part, num, den, p, extra


@pytest.mark.parametrize("kind", KINDS)
def test_elementwise_arguments_bind_to_the_compiled_entry(tmp_path, kind):
    """The elementwise launchers' arguments reach the compiled pointer-ABI entry in the intended
    slots (the DSL's own marshalling, no GPU), and the TVM-FFI convention passes the same values."""
    import ctypes

    import cuda.bindings.driver as cuda

    from cutlass_kernels import launch

    entry = _elementwise_entry(tmp_path, kind, ffi=False)
    vecs, part, num, den, p, extra = _elementwise_problem(kind)
    args = launch.elementwise_arguments(vecs, part, num, den, p, False, extra)
    exe, _ = entry.generate_execution_args(*args, cuda.CUstream(0))
    values = [ctypes.cast(a, ctypes.POINTER(ctypes.c_uint64)).contents.value for a in exe]
    n_ptr = len(vecs) + (part is not None) + 2
    tensors = (*vecs, *([part] if part is not None else []), num, den)
    assert values[:n_ptr] == [t.data_ptr() for t in tensors]
    assert len(values) == n_ptr + 7 + len(extra) + 1  # + the stream
    ints = [v & 0xFFFFFFFF for v in values[n_ptr:n_ptr + 7 + len(extra)]]
    assert ints == [p.total, p.kvecs, p.kvg, 1, p.threads, 8, 8, *extra]
    assert launch.elementwise_arguments(vecs, part, num, den, p, True, extra) == (*values[:n_ptr], *ints)


@pytest.mark.skipif(torch.cuda.is_available(), reason="calls the entry with host addresses: CPU-only machines")
@pytest.mark.parametrize("kind", KINDS)
def test_elementwise_tvm_ffi_entry_accepts_the_launch_arguments(tmp_path, kind):
    """The TVM-FFI entry type-checks the launcher's ints and gets as far as CUDA (absent here);
    a missing stream fails the checks."""
    from cutlass_kernels import launch

    fn = _elementwise_entry(tmp_path, kind, ffi=True)
    vecs, part, num, den, p, extra = _elementwise_problem(kind)
    args = launch.elementwise_arguments(vecs, part, num, den, p, True, extra)
    with pytest.raises(RuntimeError, match="(?i)cuda"):
        fn(*args, 0)
    with pytest.raises(TypeError, match=f"Expects {len(args) + 1} parameters"):
        fn(*args)


def test_tvm_ffi_switch(monkeypatch):
    from cutlass_kernels import abi

    monkeypatch.setenv(abi.ENV_FFI, "0")
    assert abi.ffi_enabled() is False
    monkeypatch.setenv(abi.ENV_FFI, "auto")
    assert abi.ffi_enabled() is abi.ffi_available()
    monkeypatch.setenv(abi.ENV_FFI, "maybe")
    with pytest.raises(ValueError, match="expected 1, 0 or auto"):
        abi.ffi_enabled()
    monkeypatch.setenv(abi.ENV_FFI, "1")
    monkeypatch.setattr(abi, "_FFI_IMPORTABLE", [False])
    with pytest.raises(RuntimeError, match="apache-tvm-ffi"):
        abi.ffi_enabled()


@pytest.mark.skipif(torch.cuda.is_available(), reason="calls the entry with host addresses: CPU-only machines")
def test_get_kernel_returns_a_tvm_ffi_callable_through_the_disk_cache(tmp_path, monkeypatch):
    """``get_kernel(ffi=True)`` through the AOT disk cache, on a miss and then as a fresh process
    sees it (memo cleared, loaded from disk): the callable takes the launcher's ints and type-checks
    them in C before CUDA is touched.  (With the cache off the DSL's JIT-compiled TVM-FFI function
    is only initialised on a GPU machine, so that path is not checkable here.)"""
    import shutil

    pytest.importorskip("cutlass")
    pytest.importorskip("tvm_ffi")
    if shutil.which("g++") is None:
        pytest.skip("no g++ for the AOT link")
    from cutlass_kernels import launch, runtime

    monkeypatch.setenv("FUSEDKAT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(runtime.ENV_AOT, raising=False)
    fields = {"dtype": "bf16", "form": "A", "m": 5, "n": 4, "vec": 8}
    vecs, part, num, den, p, _ = _elementwise_problem("forward")
    args = launch.elementwise_arguments(vecs, part, num, den, p, True)
    for _ in range(2):
        runtime.clear_memo()
        fn = runtime.get_kernel("cutlass_kernels.rational_elementwise:compile_forward", fields, "sm_80",
                                launch.SOURCES, ffi=True)
        with pytest.raises(RuntimeError, match="(?i)cuda"):
            fn(*args, 0)
        with pytest.raises(TypeError, match="Expects"):
            fn(*args)
    runtime.clear_memo()
    assert sum((p / "kernel.so").exists() for p in tmp_path.iterdir()) == 1
