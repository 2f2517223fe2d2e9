"""``fusedkat info``: versions, device, which backend each op dispatches to, kernel cache."""
from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Optional

import torch


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _dir_size(path: Path) -> tuple[int, int]:
    """(files, bytes) under ``path`` (0, 0 if it does not exist)."""
    files = size = 0
    if path.is_dir():
        for root, _, names in os.walk(path):
            for n in names:
                try:
                    size += os.path.getsize(os.path.join(root, n))
                    files += 1
                except OSError:  # a file removed while we walk (another process's cache write)
                    pass
    return files, size


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _kernel_cache() -> dict:
    try:
        from cutlass_kernels.cache import default_cache_dir  # plain module: does not import the DSL
    except ImportError as e:
        return {"path": None, "error": str(e)}
    path = default_cache_dir()
    files, size = _dir_size(path)
    return {"path": str(path), "exists": path.is_dir(), "files": files, "bytes": size}


def _ops_dispatch(device: torch.device) -> dict:
    """Which implementation ("torch" or "cute") each fusedkat op runs with on ``device``, and why."""
    from ..ops import dispatch

    out = {}
    for op in ("group_rational_forward", "group_rational_backward",
               "rational_linear_forward", "rational_linear_backward"):
        try:
            backend = dispatch.choose(device, op)
            reason = None if backend == "cute" else dispatch.cute_unavailable_reason(device, op)
        except Exception as e:  # forced backend that cannot run: report, don't crash `info`
            backend, reason = "error", str(e)
        out[op] = {"backend": backend, "why_not_cute": reason}
    return out


def _gemm_paths(device: torch.device, ops: dict) -> Optional[dict]:
    """On a GPU where rational_linear runs CuTe kernels: whether its forward and backward use the
    fused GEMMs or the unfused pair at the KAT-B fc1 shape, and why (FUSEDKAT_FUSED_FWD /
    FUSEDKAT_FUSED_BWD forcing it, else the decision table's source)."""
    if device.type != "cuda" or ops["rational_linear_forward"]["backend"] != "cute":
        return None
    from cutlass_kernels import abi, decisions
    from cutlass_kernels.gemm import bwd_launch, fwd_launch

    paths = {}
    for name, module, env in (("forward", fwd_launch, fwd_launch.ENV_FUSED_FWD),
                              ("backward", bwd_launch, bwd_launch.ENV_FUSED_BWD)):
        try:
            paths[name] = "fused" if module.enabled(device, decisions.DEFAULT_SHAPE) else "unfused"
            if name == "forward" and paths[name] == "fused" and fwd_launch.kernel_arch(device) == "sm_90a":
                paths[name] += f" {fwd_launch.hopper_kernel()}"  # which WGMMA kernel (FUSEDKAT_FWD_KERNEL)
            if name == "backward" and paths[name] == "fused":
                paths[name] += f" {bwd_launch.bwd_kernel(device)}"  # which kernel (FUSEDKAT_BWD_KERNEL)
            arch = decisions._arch_of(abi.device_info(device)[0])
            paths[f"{name}_source"] = (f"forced by {env}" if abi.forced(env) is not None
                                       else decisions.choose(arch, name, decisions.DEFAULT_SHAPE)[1]
                                       if arch in decisions.ARCHES else f"{arch}: not in the table")
        except ValueError as e:  # a bad FUSEDKAT_FUSED_FWD / _BWD / FWD_KERNEL / BWD_KERNEL: report it
            paths[name] = f"error: {e}"
    return paths


def _decision_table() -> dict:
    """``{arch: [{op, class, path, source}]}``: what ``auto`` picks per arch (cutlass_kernels.decisions)."""
    try:
        from cutlass_kernels import decisions

        return {arch: decisions.rows(arch) for arch in decisions.ARCHES}
    except Exception as e:  # a broken table must not crash `info`
        return {"error": str(e)}


def _calling_convention() -> str:
    """How CuTe kernels are launched here: TVM-FFI or the DSL executor (FUSEDKAT_TVM_FFI)."""
    try:
        from cutlass_kernels import abi  # imports torch only, not the DSL

        return "TVM-FFI" if abi.ffi_enabled() else (
            "DSL executor" + ("" if abi.ffi_available() else " (apache-tvm-ffi not installed)"))
    except (ImportError, ValueError, RuntimeError) as e:  # a bad FUSEDKAT_TVM_FFI: report it
        return f"error: {e}"


def collect() -> dict:
    """Everything ``fusedkat info`` prints, as a dict (also what ``--json`` writes)."""
    import fusedkat

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dev = {"type": device.type, "name": cpu_name(),
           "cpu_threads": torch.get_num_threads()}
    if cuda:
        cap = torch.cuda.get_device_capability(device)
        dev.update(name=torch.cuda.get_device_name(device), capability=f"sm_{cap[0]}{cap[1]}",
                   memory_bytes=torch.cuda.get_device_properties(device).total_memory)
    return {
        "fusedkat": fusedkat.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "timm": _version("timm"),
        "nvidia_cutlass_dsl": _version("nvidia-cutlass-dsl"),
        "apache_tvm_ffi": _version("apache-tvm-ffi"),
        "kernel_launches": _calling_convention(),
        "device": dev,
        "backend_requested": os.environ.get("FUSEDKAT_BACKEND", "auto"),
        "cpu_lowering": _cpu_lowering(),
        "ops": (ops := _ops_dispatch(device)),
        "rational_linear_gemms": _gemm_paths(device, ops),
        "gemm_decision_table": _decision_table(),
        "kernel_cache": _kernel_cache(),
    }


def _cpu_lowering() -> str:
    from fusedkat.ops import lowering

    try:
        return lowering.cpu_lowering()
    except ValueError as e:  # a bad FUSEDKAT_CPU_LOWERING: report it, don't crash `info`
        return f"error: {e}"


def format_info(d: dict) -> str:
    dev = d["device"]
    lines = [
        f"fusedkat            {d['fusedkat']}",
        f"python              {d['python']}",
        f"torch               {d['torch']} (built with CUDA {d['torch_cuda'] or 'none'}; "
        f"CUDA available: {'yes' if d['cuda_available'] else 'no'})",
        f"timm                {d['timm'] or 'not installed'}",
        f"nvidia-cutlass-dsl  {d['nvidia_cutlass_dsl'] or 'not installed'}",
        f"kernel launches     {d.get('kernel_launches', 'unknown')} (FUSEDKAT_TVM_FFI; apache-tvm-ffi "
        f"{d.get('apache_tvm_ffi') or 'not installed'})",
        f"device              {dev['type']}: {dev['name']}"
        + (f" ({dev['capability']}, {dev['memory_bytes'] / 2**30:.1f} GiB)" if dev["type"] == "cuda"
           else f" ({dev['cpu_threads']} torch threads)"),
        f"backend requested   {d['backend_requested']} (FUSEDKAT_BACKEND)",
        f"compiled on CPU     {d.get('cpu_lowering', 'kernels')} (FUSEDKAT_CPU_LOWERING: kernels = one "
        "inductor-compiled kernel per op and shape; inline = inlined into the model's graph)",
        "ops on this device:",
    ]
    for op, v in d["ops"].items():
        why = f"  ({v['why_not_cute']})" if v["why_not_cute"] else ""
        lines.append(f"  {op:<26}{v['backend']}{why}")
    if d.get("rational_linear_gemms"):
        g = d["rational_linear_gemms"]
        lines.append(f"rational_linear     forward {g['forward']} ({g.get('forward_source', 'FUSEDKAT_FUSED_FWD')}), "
                     f"backward {g['backward']} ({g.get('backward_source', 'FUSEDKAT_FUSED_BWD')})")
    table = d.get("gemm_decision_table")
    if table:
        lines.append("fused GEMM in auto  per arch, op and shape class at K=768, N=3072 (large: M >= 4096 rows; "
                     "FUSEDKAT_FUSED_FWD/BWD=1/0 force):")
        for arch, rows in table.items():
            if arch == "error":
                lines.append(f"  error: {rows}")
                continue
            for op in ("forward", "backward"):
                cells = ", ".join(f"{r['class']} {r['path']} ({r['source']})" for r in rows if r["op"] == op)
                lines.append(f"  {arch:<7} {op:<9}{cells}")
    kc = d["kernel_cache"]
    if kc.get("path") is None:
        lines.append(f"kernel cache        unavailable ({kc.get('error')})")
    else:
        state = f"{kc['files']} files, {kc['bytes'] / 2**20:.1f} MiB" if kc["exists"] else "empty (not created yet)"
        lines.append(f"kernel cache        {kc['path']}  [{state}]  (set FUSEDKAT_CACHE_DIR to move it)")
    return "\n".join(lines)
