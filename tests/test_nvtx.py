"""NVTX ranges of fusedkat, observed without Nsight Systems.

NVTX calls go to whatever tool library ``NVTX_INJECTION64_PATH`` names.  The test builds such a
library with the system C compiler from the source below — it implements the NVTX v3 injection
protocol (``InitializeInjectionNvtx2`` fills the CORE2 function table) and writes every domain
range/mark event, with its domain and message, to the file ``$NVTX_CAPTURE_LOG`` — and then runs
fusedkat in a subprocess with it loaded and checks the log: names, domain, nesting, that nothing
is emitted while ranges are off, and that ``torch.compile(fullgraph=True)`` still works with
ranges on.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fusedkat
from fusedkat import profiling

INJECTION_C = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The few NVTX v3 types this tool needs (nvtxDetail/nvtxTypes.h, nvToolsExt.h). */
typedef void (*NvtxFunctionPointer)(void);
typedef NvtxFunctionPointer** NvtxFunctionTable;
typedef struct {
    size_t struct_size;
    int (*GetModuleFunctionTable)(int module, NvtxFunctionTable* out_table, unsigned int* out_size);
} NvtxExportTableCallbacks;
typedef const void* (*NvtxGetExportTableFunc_t)(uint32_t exportTableId);
typedef struct {
    uint16_t version; uint16_t size; uint32_t category; int32_t colorType; uint32_t color;
    int32_t payloadType; int32_t reserved0; union { uint64_t u; int64_t i; double d; } payload;
    int32_t messageType; union { const char* ascii; const void* unicode; const char* registered; } message;
} Attributes;

enum { ETID_CALLBACKS = 1, MODULE_CORE2 = 5 };
enum { MarkEx = 1, RangeStartEx = 2, RangeEnd = 3, RangePushEx = 4, RangePop = 5,
       RegisterStringA = 10, DomainCreateA = 12, DomainDestroy = 14 };

static FILE* out;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t next_id = 1;

static const char* dom(const void* d) { return d ? (const char*)d : "<default>"; }
static const char* msg(const Attributes* a) {
    if (!a) return "";
    if (a->messageType == 1 || a->messageType == 3) return a->message.ascii ? a->message.ascii : "";
    return "<unsupported message type>";
}
static void logline(const char* kind, const void* d, uint64_t id, const char* m) {
    pthread_mutex_lock(&lock);
    if (out) { fprintf(out, "%s\t%s\t%lu\t%lu\t%s\n", kind, dom(d), (unsigned long)pthread_self(),
                       (unsigned long)id, m); fflush(out); }
    pthread_mutex_unlock(&lock);
}

static void* create_domain(const char* name) { return strdup(name ? name : ""); }
static void destroy_domain(void* d) { (void)d; }
static void* register_string(void* d, const char* s) { (void)d; return strdup(s ? s : ""); }
static int push(void* d, const Attributes* a) { logline("push", d, 0, msg(a)); return 0; }
static int pop(void* d) { logline("pop", d, 0, ""); return 0; }
static void mark(void* d, const Attributes* a) { logline("mark", d, 0, msg(a)); }
static uint64_t start(void* d, const Attributes* a) {
    pthread_mutex_lock(&lock); uint64_t id = next_id++; pthread_mutex_unlock(&lock);
    logline("start", d, id, msg(a)); return id;
}
static void end(void* d, uint64_t id) { logline("end", d, id, ""); }

int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_table) {
    const char* path = getenv("NVTX_CAPTURE_LOG");
    out = fopen(path ? path : "nvtx_capture.log", "a");
    const NvtxExportTableCallbacks* cb = (const NvtxExportTableCallbacks*)get_table(ETID_CALLBACKS);
    NvtxFunctionTable table = 0; unsigned int size = 0;
    if (!cb || !cb->GetModuleFunctionTable(MODULE_CORE2, &table, &size) || size <= DomainDestroy) return 0;
    *table[MarkEx] = (NvtxFunctionPointer)mark;
    *table[RangeStartEx] = (NvtxFunctionPointer)start;
    *table[RangeEnd] = (NvtxFunctionPointer)end;
    *table[RangePushEx] = (NvtxFunctionPointer)push;
    *table[RangePop] = (NvtxFunctionPointer)pop;
    *table[RegisterStringA] = (NvtxFunctionPointer)register_string;
    *table[DomainCreateA] = (NvtxFunctionPointer)create_domain;
    *table[DomainDestroy] = (NvtxFunctionPointer)destroy_domain;
    return 1;
}
"""

# Runs in the subprocess.  Phases are separated by marks in a "test" domain.
SCRIPT = r"""
import sys
import nvtx
import torch
import fusedkat
from fusedkat import profiling
from fusedkat.nn import GRKAN, KANMlp

def phase(name):
    nvtx.mark(message=name, domain="test")

torch.manual_seed(0)
model = torch.nn.Sequential(GRKAN(16, 32, num_groups=4), KANMlp(32, 64, num_groups=4))
x = torch.randn(2, 5, 16, requires_grad=True)
mode = sys.argv[1]
if mode == "env":
    phase("env")
    model(x).sum().backward()
    sys.exit(0)

phase("off")
model(x).sum().backward()
phase("on")
with profiling.nvtx_ranges():
    model(x).sum().backward()
phase("off-again")
model(x).sum().backward()
phase("nograd")
with profiling.nvtx_ranges(), torch.no_grad():
    model(x)
phase("compiled")
with profiling.nvtx_ranges():
    compiled = torch.compile(model, fullgraph=True, backend=mode)
    y = compiled(x)
    y.sum().backward()
ref = model(x)
assert torch.allclose(y, ref, rtol=1e-5, atol=1e-6), (y - ref).abs().max()
phase("done")
"""


@pytest.fixture(scope="module")
def injection_lib(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to build the NVTX capture library")
    d = tmp_path_factory.mktemp("nvtx")
    src, lib = d / "capture.c", d / "libnvtxcapture.so"
    src.write_text(INJECTION_C)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(src), "-lpthread"], check=True,
                   capture_output=True)
    return lib


def _run(lib: Path, tmp_path: Path, mode: str, extra_env: dict | None = None) -> list[list[str]]:
    log = tmp_path / f"nvtx_{mode}.log"
    env = dict(os.environ, NVTX_INJECTION64_PATH=str(lib), NVTX_CAPTURE_LOG=str(log),
               FUSEDKAT_BACKEND="torch", **(extra_env or {}))
    env.pop("FUSEDKAT_NVTX", None)
    env.update(extra_env or {})
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), mode], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert log.exists(), "the injection library was never loaded"
    return [line.rstrip("\n").split("\t") for line in log.read_text().splitlines()]


def _phases(events: list[list[str]]) -> dict[str, list[list[str]]]:
    """Events of the fusedkat domain grouped by the preceding phase mark."""
    phases: dict[str, list[list[str]]] = {}
    current = None
    for ev in events:
        kind, domain = ev[0], ev[1]
        if kind == "mark" and domain == "test":
            current = ev[4]
            phases[current] = []
        elif domain == profiling.DOMAIN and current is not None:
            phases[current].append(ev)
    return phases


def _check_nesting(events: list[list[str]]) -> list[tuple[int, str]]:
    """Push/pop balanced per thread and start/end matched; returns (depth, name) of each push."""
    stacks: dict[str, list[str]] = {}
    open_ids: dict[str, str] = {}
    pushes = []
    for kind, _, tid, rid, name in events:
        st = stacks.setdefault(tid, [])
        if kind == "push":
            pushes.append((len(st), name))
            st.append(name)
        elif kind == "pop":
            assert st, "pop without push"
            st.pop()
        elif kind == "start":
            open_ids[rid] = name
        elif kind == "end":
            assert rid in open_ids, f"end of unknown range {rid}"
            del open_ids[rid]
    assert all(not s for s in stacks.values()), f"unclosed ranges: {stacks}"
    assert not open_ids, f"unfinished start/end ranges: {open_ids}"
    return pushes


def test_ranges_names_nesting_and_compile(injection_lib, tmp_path):
    phases = _phases(_run(injection_lib, tmp_path, "aot_eager"))
    assert set(phases) >= {"off", "on", "off-again", "nograd", "compiled", "done"}
    assert phases["off"] == [] and phases["off-again"] == []

    on = phases["on"]
    pushes = _check_nesting(on)
    names = [n for _, n in pushes]
    # module forwards, outermost first, with qualified names, classes and input shapes
    assert pushes[0] == (0, "Sequential fwd 2x5x16")
    assert (1, "0:GRKAN fwd 2x5x16") in pushes
    assert (1, "1:KANMlp fwd 2x5x32") in pushes
    # op launches nested in the module that made them, with backend and argument shapes
    fwd_ops = [(d, n) for d, n in pushes if n.startswith("fusedkat::rational_linear_forward")]
    assert fwd_ops[0] == (2, "fusedkat::rational_linear_forward[torch] 2x5x16 1x6 4x4 32x16 32")
    assert len(fwd_ops) == 3  # GRKAN + the two halves of KANMlp
    bwd_ops = [n for n in names if n.startswith("fusedkat::rational_linear_backward[torch] ")]
    assert len(bwd_ops) == 3
    # backward ranges of the modules (start/end pairs) contain the backward ops of the module
    starts = {ev[4]: ev[3] for ev in on if ev[0] == "start"}
    assert set(starts) == {"Sequential bwd", "1:KANMlp bwd", "0:GRKAN bwd"}

    def ops_inside(range_name):
        rid, inside, found = starts[range_name], False, []
        for ev in on:
            if ev[0] == "start" and ev[3] == rid:
                inside = True
            elif ev[0] == "end" and ev[3] == rid:
                return found
            elif inside and ev[0] == "push":
                found.append(ev[4].split("] ")[1])
        raise AssertionError(f"{range_name} never ended")

    assert ops_inside("1:KANMlp bwd") == ["2x5x32 2x5x64 1x6 4x4 32x64", "2x5x64 2x5x32 1x6 4x4 64x32"]
    assert ops_inside("0:GRKAN bwd") == ["2x5x32 2x5x16 1x6 4x4 32x16"]
    assert len(ops_inside("Sequential bwd")) == 3
    # modules skipped: Dropout / Identity never get ranges
    assert not any("Dropout" in n or "Identity" in n for n in names)

    nograd = phases["nograd"]
    _check_nesting(nograd)
    assert not any(ev[0] == "start" for ev in nograd), "no backward ranges without autograd"
    assert any(ev[4].startswith("fusedkat::rational_linear_forward") for ev in nograd)

    # compiled with fullgraph=True while ranges were on: it compiled (the script checked the
    # output) and the opaque ops still report their launches at run time
    compiled = phases["compiled"]
    _check_nesting(compiled)
    cnames = [ev[4] for ev in compiled if ev[0] == "push"]
    assert cnames[0] == "Sequential (compiled) fwd 2x5x16"
    assert sum(n.startswith("fusedkat::rational_linear_forward") for n in cnames) == 3
    assert sum(n.startswith("fusedkat::rational_linear_backward") for n in cnames) == 3
    assert phases["done"] == []


def test_env_variable_enables_ranges(injection_lib, tmp_path):
    phases = _phases(_run(injection_lib, tmp_path, "env", {"FUSEDKAT_NVTX": "1"}))
    pushes = _check_nesting(phases["env"])
    assert pushes[0] == (0, "Sequential fwd 2x5x16")
    assert any(n.startswith("fusedkat::rational_linear_backward[torch]") for _, n in pushes)


def test_disabled_is_a_no_op_in_process():
    """Without the env variable nothing is installed: no global module hooks, no-op op ranges."""
    from torch.nn.modules import module as nn_module

    if profiling.is_enabled():
        pytest.skip("FUSEDKAT_NVTX is set in this environment")
    hooks = list(nn_module._global_forward_pre_hooks.values()) + list(nn_module._global_forward_hooks.values())
    assert profiling._pre_hook not in hooks and profiling._post_hook not in hooks
    x = torch.randn(3, 8)
    assert profiling.op_range("group_rational_forward", x.device, (x,)) is profiling._NULL
    with profiling.nvtx_ranges():
        hooks = list(nn_module._global_forward_pre_hooks.values())
        assert profiling._pre_hook in hooks
        assert profiling.op_range("group_rational_forward", x.device, (x,)) is not profiling._NULL
    hooks = list(nn_module._global_forward_pre_hooks.values())
    assert profiling._pre_hook not in hooks and not profiling.is_enabled()


def test_ranges_work_without_a_tool_attached():
    """With no injection library the nvtx domain is a dummy: ranges on must still run correctly."""
    from fusedkat.nn import GRKAN

    torch.manual_seed(0)
    layer = GRKAN(8, 4, num_groups=2)
    x = torch.randn(3, 8, requires_grad=True)
    ref = layer(x)
    with profiling.nvtx_ranges():
        y = layer(x)
        y.sum().backward()
    assert torch.equal(y, ref)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_profile_kat_script_ranges(injection_lib, tmp_path):
    """bench/profile_kat.py on a one-block KAT: prints the nsys command, emits step/module/op ranges."""
    log = tmp_path / "profile.log"
    env = dict(os.environ, NVTX_INJECTION64_PATH=str(injection_lib), NVTX_CAPTURE_LOG=str(log))
    env.pop("FUSEDKAT_NVTX", None)
    args = ["--depth", "1", "--img-size", "32", "--batch", "2", "--steps", "1", "--warmup", "0", "--device", "cpu"]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "bench.profile_kat", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    first = proc.stdout.splitlines()[1]
    assert first.startswith("nsys profile ") and first.endswith("-m bench.profile_kat " + " ".join(args))
    events = [line.split("\t") for line in log.read_text().splitlines()]
    events = [e for e in events if e[1] == profiling.DOMAIN]
    pushes = _check_nesting(events)
    assert pushes[0] == (0, "step 0")
    assert (1, "KAT fwd 2x3x32x32") in pushes
    assert (2, "blocks:Sequential fwd 2x5x192") in pushes
    assert (3, "blocks.0:Block fwd 2x5x192") in pushes
    assert (4, "blocks.0.mlp:KANMlp fwd 2x5x192") in pushes
    assert (5, "fusedkat::rational_linear_forward[torch] 2x5x192 1x6 8x4 768x192 768") in pushes
    starts = [e[4] for e in events if e[0] == "start"]
    assert "blocks.0.mlp:KANMlp bwd" in starts and "blocks.0:Block bwd" in starts
