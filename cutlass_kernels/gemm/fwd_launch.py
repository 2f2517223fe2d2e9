"""Host launcher of the fused forward ``y = F(x) W^T + bias`` (CUDA tensors in, y out).

:func:`rational_linear_forward` has the signature of
:func:`fusedkat.ops.torch_impl.rational_linear_forward`; ``cutlass_kernels.launch`` routes the
``fusedkat::rational_linear`` op here when :func:`unsupported_reason` is None.

* x ``[..., K]`` is flattened to ``[M, K]`` (a copy only if the rows are not K-contiguous with a
  16-byte aligned base and row stride -- a row-strided view like ``x[:, :K]`` is used in place), the
  weight is used as is when contiguous and of x's dtype; coefficients go to fp32, the bias to an
  fp32 vector (zeros when absent: one compiled variant serves both).
* On sm_90a the persistent warp-specialized kernel (:mod:`.fwd_sm90ws`; for K <= 384 with several
  N tiles its resident-panel variant :mod:`.fwd_sm90ws_panel`; config :func:`ws_candidates`, grid
  :func:`ws_ctas`) runs unless ``FUSEDKAT_FWD_KERNEL=sm90`` picks the
  first WGMMA kernel (benchmarks); ``auto`` still runs the unfused path on sm_90 (:func:`enabled`)
  until a GPU has measured the new kernel.
* The config (kernel class, tile, stages, group alignment) comes from :func:`heuristic` on
  ``(M, N, K, g)`` and the device; with ``FUSEDKAT_GEMM_AUTOTUNE=1`` (or ``autotune=True``) the
  candidates of :func:`candidates` are timed once per problem key and the winner is cached in
  memory and in ``<compile cache>/gemm_fwd_autotune.json``.
* Kernels come from :func:`cutlass_kernels.runtime.get_kernel` (memo, AOT disk cache, JIT) via the
  pointer entry of :mod:`.fwd_compile` -- the same function the build check compiles -- called
  through TVM-FFI when available (:mod:`cutlass_kernels.abi`).
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Optional

import torch

from fusedkat.files import atomic_write_text

from fusedkat.ops import rational_math as rm

from .. import abi

ENV_AUTOTUNE = "FUSEDKAT_GEMM_AUTOTUNE"
ENV_FUSED_FWD = "FUSEDKAT_FUSED_FWD"
#: Which sm_90a fused forward runs: ``sm90ws`` (default: the persistent warp-specialized kernel of
#: :mod:`.fwd_sm90ws`) or ``sm90`` (the first WGMMA kernel, kept for benchmarks).
ENV_FWD_KERNEL = "FUSEDKAT_FWD_KERNEL"
HOPPER_KERNELS = ("sm90ws", "sm90")
TARGET = "cutlass_kernels.gemm.fwd_compile:compile_variant"
WS_TARGET = "cutlass_kernels.gemm.fwd_compile:compile_ws_variant"
MAX_GROUPS = 64  # = common.MAX_GROUPS (not imported: that module imports the DSL)
_DT = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_TUNED: dict[str, dict] = {}
_TUNE_LOCK = threading.Lock()


def enabled(device: Optional[torch.device] = None, shape: Optional[tuple[int, int, int]] = None) -> bool:
    """Whether ``rational_linear``'s CUDA forward uses the fused GEMM at ``shape = (M, K, N)`` (read
    per call).

    ``FUSEDKAT_FUSED_FWD=1`` / ``0`` forces it on / off.  Unset or ``auto``: the decision table
    (:mod:`cutlass_kernels.decisions`): measured on sm_90 (the H100 run of 2026-11-22 profiled, at
    25216 x 768 -> 3072, 370 us of GPU time for the fused kernel against 171 + 30 us for cuBLAS plus
    the elementwise rational kernel: unfused), the cost model elsewhere (sm_80-89: unfused at the
    KAT shapes).  The prologue is ALU-bound: F costs ~15 FP32/ALU instructions per element and is
    recomputed for every N tile (the cutlass_kernels README, "Cost model of the fused prologue").
    """
    from .. import decisions

    return decisions.fused_enabled(ENV_FUSED_FWD, device, "forward", shape)


def hopper_kernel() -> str:
    """``$FUSEDKAT_FWD_KERNEL`` read now: ``sm90ws`` (unset) or ``sm90``; anything else is a ValueError."""
    value = os.environ.get(ENV_FWD_KERNEL, "").strip().lower() or HOPPER_KERNELS[0]
    if value not in HOPPER_KERNELS:
        raise ValueError(f"{ENV_FWD_KERNEL}={value!r}: expected one of {HOPPER_KERNELS}")
    return value


def ws_candidates(n_out: int, k: int) -> list[dict]:
    """Configs of the warp-specialized sm_90a kernel (registry ``fields``) for this N and K
    (empty when K % 64 != 0): the bN that pads no columns first (192 where N % 192 == 0), then 128;
    for K <= 384 with at least two N tiles the resident-panel variant comes first (F once per
    element per CTA and m-tile instead of once per N tile)."""
    if k % 64:
        return []
    from .ws_config import PANEL_MAX_K, pick_bn

    widths = (192, 128) if pick_bn(n_out) == 192 else (128, 192)
    plain = [{"kernel": "sm90ws", "bn": bn, "stages": 4, "ring": 3} for bn in widths]
    if k > PANEL_MAX_K:
        return plain
    panel = [{"kernel": "sm90ws", "bn": bn, "stages": 3, "ring": 3, "panel": True} for bn in widths]
    return panel + plain if n_out > widths[0] else plain + panel


def ws_ctas(m_rows: int, n_out: int, bn: int, sm_count: int) -> int:
    """Persistent grid of the sm90ws kernel: one CTA per SM, never more CTAs than tiles."""
    return max(1, min(sm_count, -(-m_rows // 128) * -(-n_out // bn)))


def kernel_arch(device: torch.device) -> Optional[str]:
    """Arch the kernels are compiled for on ``device``: sm_80/86/89 or sm_90a; None otherwise."""
    major, minor = abi.device_info(device)[0]
    if major == 9:
        return "sm_90a"
    if major == 8:
        return f"sm_{major}{minor}"
    return None


def unsupported_reason(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                       weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Optional[str]:
    """None if the fused kernel can run these arguments, else why not (then the unfused path runs)."""
    if not (x.is_cuda and weight.is_cuda):
        return "fused GEMM needs CUDA tensors"
    if x.dtype not in _DT:
        return f"fused GEMM takes bf16/fp16 activations, got {x.dtype}"
    if kernel_arch(x.device) is None:
        return "fused GEMM is built for sm_80..sm_90 (mma.sync / WGMMA)"
    k, n_out, g = x.shape[-1], weight.shape[0], denominator.shape[0]
    if k % 32 or n_out % 8:
        return f"fused GEMM needs K % 32 == 0 and N % 8 == 0, got K={k}, N={n_out}"
    if k % g or (k // g) % 8:
        return f"fused GEMM needs (K / groups) % 8 == 0, got K={k}, groups={g}"
    if g > MAX_GROUPS:
        return f"fused GEMM takes at most {MAX_GROUPS} groups, got {g}"
    m_rows = x.numel() // max(k, 1)
    if max(x.numel(), m_rows * n_out, weight.numel()) > 2**31 - 1:
        return "fused GEMM indexes with 32-bit offsets: tensors over 2^31 elements run unfused"
    return None


def candidates(arch: str, k: int, group_size: int) -> list[dict]:
    """Configs (registry ``fields``) that can run a problem with this K and K/g on ``arch``."""
    ga = 16 if group_size % 16 == 0 else 8
    out = []
    if arch == "sm_90a" and k % 64 == 0:
        for bn in (256, 128):
            out.append({"kernel": "sm90", "tile": (128, bn, 64), "atoms": (2, 1, 1), "stages": 4, "group_align": ga})
    sm80 = {"kernel": "sm80", "atoms": (4, 2, 1), "stages": 3, "group_align": ga}
    out.append({**sm80, "tile": (128, 128, 32)})
    # F once per CTA in smem instead of once per warp column in registers: for autotune to decide
    out.append({**sm80, "tile": (128, 128, 32), "prologue": "smem"})
    # cost model (A100: 64 FP32 vs 1024 tensor FMA / clk / SM, ~12.5 instructions per F): F costs
    # ~1.6x the MMA time at bN=128 once per CTA, ~0.8x at bN=256 -- the candidate to beat there
    out.append({**sm80, "tile": (128, 256, 32), "atoms": (2, 4, 1), "prologue": "smem"})
    out.append({**sm80, "tile": (128, 64, 32)})  # last: the smallest tile (heuristic's fallback)
    return out


def heuristic(m_rows: int, n_out: int, k: int, groups: int, arch: str, sm_count: int) -> dict:
    """Pick a config without timing: the widest tile that still gives every SM a tile.

    Wider N tiles amortise the prologue (each A element is transformed once per N-tile) and the A
    loads, so prefer 128x256 on Hopper and 128x128 on Ampere unless the grid would leave SMs idle.
    """
    cands = candidates(arch, k, k // groups)
    tiles_m = -(-m_rows // 128)
    for c in cands:
        if tiles_m * -(-n_out // c["tile"][1]) >= sm_count or c is cands[-1]:
            return c
    return cands[-1]


def _cache_file() -> Path:
    from ..cache import CompileCache

    return Path(CompileCache().root) / "gemm_fwd_autotune.json"


def _tune_key(arch: str, dtype: str, form: str, m: int, n: int, shape: tuple[int, int, int, int],
              family: str = "") -> str:
    return "|".join(map(str, (arch, dtype, form, m, n, *shape) + ((family,) if family else ())))


_TUNED_LOADED: list[bool] = []  # non-empty once the file was read (no file read per launch)


def _load_tuned() -> None:
    if _TUNED or _TUNED_LOADED:
        return
    _TUNED_LOADED.append(True)
    try:
        _TUNED.update(json.loads(_cache_file().read_text()))
    except (OSError, ValueError):
        pass


def _save_tuned() -> None:
    try:
        path = _cache_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomic (temporary file + rename): concurrent processes and Ctrl-C never leave half a file
        atomic_write_text(path, json.dumps(_TUNED, indent=1, sort_keys=True))
    except OSError:
        pass


def _fields(cfg: dict, dtype: str, form: str, m: int, n: int) -> dict:
    return {**cfg, "dtype": dtype, "form": form, "m": m, "n": n}


def _kernel(fields: dict, arch: str, ffi: bool) -> Any:
    from ..runtime import get_kernel
    from .variants import SOURCES, WS_SOURCES

    if fields.get("kernel") == "sm90ws":
        return get_kernel(WS_TARGET, fields, arch, WS_SOURCES, ffi=ffi)
    return get_kernel(TARGET, fields, arch, SOURCES, ffi=ffi)


def launch_arguments(x2: torch.Tensor, w: torch.Tensor, y: torch.Tensor, bias: torch.Tensor,
                     num: torch.Tensor, den: torch.Tensor, ffi: bool = False, ctas: Optional[int] = None) -> tuple:
    """The pointer-ABI arguments of :class:`~cutlass_kernels.gemm.fwd_compile.PointerEntry`, stream
    excluded: ``(pA, pB, pC, pBias, pNum, pDen, M, N/8, K/8, lda/8, groups, num_rows, group_size)``,
    plus ``ctas`` (the persistent grid) for the sm90ws entry
    (:class:`~cutlass_kernels.gemm.fwd_compile.PointerEntryWs`).

    x2 ``[M, K]`` (row stride a multiple of 8), w ``[N, K]``, y ``[M, N]`` in the MMA dtype; bias,
    num, den fp32.  Ints for TVM-FFI, DSL objects for the executor (:mod:`cutlass_kernels.abi`).
    Works on any device's tensors (only addresses and sizes are read), which is how CPU tests check
    this binding against the compiled signature."""
    m_rows, k = x2.shape
    n_out = w.shape[0]
    g = den.shape[0]
    ptrs = (abi.pointer(x2, 16, ffi), abi.pointer(w, 16, ffi), abi.pointer(y, 16, ffi), abi.pointer(bias, 16, ffi),
            abi.pointer(num, 4, ffi), abi.pointer(den, 4, ffi))
    ints = (m_rows, n_out // 8, k // 8, x2.stride(0) // 8, g, num.shape[0], k // g)
    return (*ptrs, *abi.int32s(ints if ctas is None else (*ints, ctas), ffi))


def _launch(fn: Any, x2: torch.Tensor, w: torch.Tensor, y: torch.Tensor, bias: torch.Tensor,
            num: torch.Tensor, den: torch.Tensor, ffi: bool, ctas: Optional[int] = None) -> None:
    fn(*launch_arguments(x2, w, y, bias, num, den, ffi, ctas), abi.stream(x2.device, ffi))


def _rows_ok(t: torch.Tensor) -> bool:
    """Rows K-contiguous with a 16-byte aligned base and row stride (e.g. ``x[:, :K]`` of a wider
    tensor): usable in place."""
    return (t.dim() == 2 and (t.stride(1) == 1 or t.shape[1] == 1) and t.stride(0) % 8 == 0
            and t.stride(0) >= t.shape[1] and t.data_ptr() % 16 == 0)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` if row-major contiguous with a 16-byte aligned base, else a contiguous copy (fresh
    allocations from the caching allocator are aligned far beyond 16 bytes)."""
    if t.is_contiguous() and t.data_ptr() % 16 == 0:
        return t
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


def _autotune(key: str, cands: list[dict], run_with: Any) -> dict:
    """Time each candidate (CUDA events, median of 10 after 3 warm-ups); keep the fastest."""
    best, best_ms = None, float("inf")
    for c in cands:
        try:
            run_with(c)  # compile + warm-up
            for _ in range(2):
                run_with(c)
            times = []
            for _ in range(10):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run_with(c)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            ms = sorted(times)[len(times) // 2]
        except Exception:  # a candidate that fails to compile or launch is simply not chosen
            continue
        if ms < best_ms:
            best, best_ms = c, ms
    if best is None:
        raise RuntimeError("fused GEMM autotune: no candidate config ran")
    with _TUNE_LOCK:
        _TUNED[key] = {**{f: list(v) if isinstance(v, tuple) else v for f, v in best.items()}, "ms": best_ms}
        _save_tuned()
    return best


def choose_config(x2: torch.Tensor, weight: torch.Tensor, denominator: torch.Tensor, form: str, m: int, n: int,
                  autotune: Optional[bool] = None, run_with: Any = None) -> dict:
    """The config for this problem: the autotuned one when cached/enabled, else :func:`heuristic`
    -- on sm_90a with ``FUSEDKAT_FWD_KERNEL`` unset or ``sm90ws`` (and K % 64 == 0) the first of
    :func:`ws_candidates`, autotune choosing among those and the older kernels' candidates."""
    arch = kernel_arch(x2.device)
    m_rows, k = x2.shape
    n_out, g = weight.shape[0], denominator.shape[0]
    if autotune is None:
        autotune = os.environ.get(ENV_AUTOTUNE, "0") not in ("0", "", "false")
    ws = ws_candidates(n_out, k) if arch == "sm_90a" and hopper_kernel() == "sm90ws" else []
    key = _tune_key(arch, _DT[x2.dtype], form, m, n, (m_rows, n_out, k, g), "sm90ws" if ws else "")
    with _TUNE_LOCK:
        _load_tuned()
        hit = _TUNED.get(key)
    if hit is not None:
        return {f: tuple(v) if isinstance(v, list) else v for f, v in hit.items() if f != "ms"}
    if autotune and run_with is not None:
        return _autotune(key, ws + candidates(arch, k, k // g), run_with)
    if ws:
        return ws[0]
    sm_count = abi.device_info(x2.device)[1]
    return heuristic(m_rows, n_out, k, g, arch, sm_count)


def rational_linear_forward(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                            weight: torch.Tensor, bias: Optional[torch.Tensor], form: str,
                            *, config: Optional[dict] = None, autotune: Optional[bool] = None,
                            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``linear(F(x), weight, bias)`` in one fused kernel.

    x ``[..., K]`` bf16/fp16 CUDA; numerator ``(1|g, m+1)``; denominator ``(g, n)``; weight ``(N, K)``
    (cast to x's dtype if needed); bias ``(N,)`` or None.  Returns ``[..., N]`` in x's dtype.
    ``config`` forces a config (fields of :func:`candidates`), e.g. for tests and benchmarks;
    ``out`` (contiguous ``[M, N]``, x's dtype, 16-byte aligned) receives the result instead of a
    fresh tensor (tests use it to check that every element, and nothing else, is written).
    """
    rm.check_form(form)
    reason = unsupported_reason(x, numerator, denominator, weight, bias)
    if reason is not None:
        raise ValueError(reason)
    return forward_unchecked(x, numerator, denominator, weight, bias, form, config=config, autotune=autotune, out=out)


_ZEROS: dict[tuple, torch.Tensor] = {}  # read-only fp32 zero bias per (device, N): no memset per launch


def _zero_bias(n_out: int, device: torch.device) -> torch.Tensor:
    key = (device.index, n_out)
    z = _ZEROS.get(key)
    if z is None:
        z = torch.zeros(n_out, dtype=torch.float32, device=device)
        # not cached from inside a CUDA graph capture: that memory belongs to the graph's pool and
        # may be reused once the graph is gone
        if not torch.cuda.is_current_stream_capturing():
            _ZEROS[key] = z
    return z


def forward_unchecked(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                      weight: torch.Tensor, bias: Optional[torch.Tensor], form: str,
                      *, config: Optional[dict] = None, autotune: Optional[bool] = None,
                      out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`rational_linear_forward` for arguments already validated (form checked and
    :func:`unsupported_reason` None): the dispatcher's path, which has just checked them."""
    k, n_out = x.shape[-1], weight.shape[0]
    m, n = numerator.shape[1] - 1, denominator.shape[1]
    x2 = x.reshape(-1, k)  # a view whenever the leading dims can be flattened
    if not _rows_ok(x2):
        x2 = _aligned(x2)
    if out is None:
        y = torch.empty((x2.shape[0], n_out), dtype=x.dtype, device=x.device)
    else:
        if (out.shape != (x2.shape[0], n_out) or out.dtype != x.dtype or out.device != x.device
                or not out.is_contiguous() or out.data_ptr() % 16):
            raise ValueError(f"out must be a contiguous, 16-byte aligned {(x2.shape[0], n_out)} {x.dtype} tensor "
                             f"on {x.device}, got {tuple(out.shape)} {out.dtype} on {out.device}")
        y = out
    if x2.shape[0] == 0:
        return y.reshape(*x.shape[:-1], n_out)
    w = _aligned(weight if weight.dtype == x.dtype else weight.detach().to(x.dtype))
    num, den = abi.as_f32(numerator), abi.as_f32(denominator)
    b = _aligned(abi.as_f32(bias)) if bias is not None else _zero_bias(n_out, x.device)
    arch = kernel_arch(x.device)
    dtype = _DT[x.dtype]
    ffi = abi.ffi_enabled()

    def run_with(cfg: dict) -> None:
        ctas = None
        if cfg.get("kernel") == "sm90ws":
            ctas = ws_ctas(x2.shape[0], n_out, cfg["bn"], abi.device_info(x.device)[1])
        _launch(_kernel(_fields(cfg, dtype, form, m, n), arch, ffi), x2, w, y, b, num, den, ffi, ctas)

    with abi.on_device(x.device):  # the kernels launch into the current device's context (kat#28)
        cfg = config if config is not None else choose_config(x2, w, den, form, m, n, autotune, run_with)
        run_with(cfg)
    return y.reshape(*x.shape[:-1], n_out)
