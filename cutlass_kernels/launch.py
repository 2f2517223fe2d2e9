"""Torch-facing launchers of the CuTe kernels; same signatures as :mod:`fusedkat.ops.torch_impl`.

``fusedkat.ops.custom_ops`` calls these when :mod:`fusedkat.ops.dispatch` picks ``"cute"`` (CUDA
tensors, DSL importable, supported arch).  Inputs here are already validated by the op layer;
float64 inputs (and tensors over 2^31 elements) are outside what the kernels are built for and run
through the torch implementation — documented, and the only fallback.

Every launcher is wrapped by :func:`cutlass_kernels.selfcheck.checked`: the first call per kernel
key is verified against the torch implementation (a kernel never run on a GPU is not trusted).

``rational_linear_*`` run the fused rational GEMMs of :mod:`cutlass_kernels.gemm` where the arch
policy picks them (``FUSEDKAT_FUSED_FWD`` / ``_BWD``) and they take the arguments, else the
elementwise kernels composed with torch (cuBLAS) matmuls (the "unfused" path).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from fusedkat.ops import torch_impl

from . import abi
from .config import dtype_name_of
from .rational_elementwise import TAIL, GroupRationalBwdConfig, GroupRationalConfig, max_vec
from .rational_variants import SOURCES, VECS
from .selfcheck import checked

_MODULE = "cutlass_kernels.rational_elementwise"
_INT32_MAX = 2**31 - 1
#: Resident threads aimed for per SM: enough 16-byte loads in flight to saturate HBM.
THREADS_PER_SM = 1024


@dataclass(frozen=True)
class LaunchPlan:
    """How a [rows, K] tensor with g groups is cut into vectors and threads (see rational_elementwise)."""

    vec: int      # elements per vector
    total: int    # vectors in the tensor
    kvecs: int    # vectors per row (K / vec)
    kvg: int      # vectors per group (K / g / vec)
    rows_per_round: int  # L: the launch has S = L * kvecs threads
    threads: int  # S

    @property
    def partial_shape(self) -> tuple[int, int, int]:
        """(L, g, kvg): how the backward's per-thread partial sums fold onto groups."""
        return self.rows_per_round, self.kvecs // self.kvg, self.kvg


def plan(numel: int, k: int, groups: int, dtype: str, alignment: int, sm_count: int) -> LaunchPlan:
    """Pick the widest compiled vector width that divides K/g and the pointers' common alignment
    (bytes), and the number of threads (a multiple of K/vec so each thread stays in one group)."""
    kg = k // groups
    elsize = 16 // max_vec(dtype)
    vec = next(v for v in VECS[dtype] if kg % v == 0 and alignment % (v * elsize) == 0)
    rows = numel // k
    kvecs = k // vec
    target = max(1, sm_count * THREADS_PER_SM)
    rows_per_round = max(1, min(rows, target // kvecs))
    return LaunchPlan(vec, numel // vec, kvecs, kg // vec, rows_per_round, rows_per_round * kvecs)


def _alignment(*tensors: torch.Tensor) -> int:
    a = 16
    for t in tensors:
        while t.data_ptr() % a:
            a //= 2
    return a


def _unsupported(x: torch.Tensor) -> bool:
    return x.dtype == torch.float64 or x.numel() > _INT32_MAX


def _coefficients(numerator: torch.Tensor, denominator: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 row-major copies (or the tensors themselves) of the coefficients, as the kernels read them."""
    return abi.as_f32(numerator), abi.as_f32(denominator)


def elementwise_arguments(vectors: tuple[torch.Tensor, ...], part: Optional[torch.Tensor], num: torch.Tensor,
                          den: torch.Tensor, p: LaunchPlan, ffi: bool, extra: tuple[int, ...] = ()) -> tuple:
    """The elementwise entries' arguments, stream excluded (see ``rational_elementwise``):
    ``(*vector pointers, [part pointer,] pNum, pDen, total, K/V, K/(gV), num_step, S, num_rows, g, *extra)``.

    ``vectors``: x/y (forward) or grad/x/dx[/F] (backward), aligned to ``V`` elements;
    ``part``: the backward's ``[m+1+n, S]`` fp32 partials; ``extra``: the F-emitting backward's
    ``(f_row_vecs, tail)``.  Ints under TVM-FFI, DSL objects otherwise (:mod:`cutlass_kernels.abi`);
    only addresses and sizes are read, so a CPU test can bind them."""
    align = p.vec * vectors[0].element_size()
    ptrs = [abi.pointer(t, align, ffi) for t in vectors]
    if part is not None:
        ptrs.append(abi.pointer(part, 4, ffi))
    ptrs += [abi.pointer(num, 4, ffi), abi.pointer(den, 4, ffi)]
    sizes = (p.total, p.kvecs, p.kvg, 0 if num.shape[0] == 1 else 1, p.threads, num.shape[0], den.shape[0], *extra)
    return (*ptrs, *abi.int32s(sizes, ffi))


def _arch(device: torch.device) -> str:
    from .arch import arch_from_capability

    return arch_from_capability(abi.device_info(device)[0])


def _sm_count(device: torch.device) -> int:
    return abi.device_info(device)[1]


@checked
def group_rational_forward(
    x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, form: str
) -> torch.Tensor:
    """F(x) per group on CUDA. x ``[..., K]`` fp32/bf16/fp16; numerator ``(1|g, m+1)``;
    denominator ``(g, n)``.  Returns a contiguous tensor of x's shape and dtype."""
    if _unsupported(x):
        return torch_impl.group_rational_forward(x, numerator, denominator, form)
    xc = x.contiguous()
    y = torch.empty_like(xc)
    if xc.numel() == 0:
        return y
    g, n = denominator.shape
    dtype = dtype_name_of(x.dtype)
    p = plan(xc.numel(), xc.shape[-1], g, dtype, _alignment(xc, y), _sm_count(x.device))
    cfg = GroupRationalConfig(dtype=dtype, form=form, m=numerator.shape[1] - 1, n=n, vec=p.vec)
    ffi = abi.ffi_enabled()
    kernel = _get(cfg, "compile_forward", x.device, ffi)
    num, den = _coefficients(numerator, denominator)
    with abi.on_device(x.device):  # launch on x's GPU, not on whichever is current
        kernel(*elementwise_arguments((xc, y), None, num, den, p, ffi), abi.stream(x.device, ffi))
    return y


@checked
def group_rational_backward(
    grad: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, form: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, d_numerator, d_denominator)`` of ``sum(grad * F(x))`` on CUDA.

    dx has x's shape/dtype; coefficient gradients are reduced deterministically (per-thread fp32
    partial sums, then a fixed-order device sum) and returned in the coefficients' dtypes.
    """
    if _unsupported(x):
        return torch_impl.group_rational_backward(grad, x, numerator, denominator, form)
    return _backward(grad, x, numerator, denominator, form)


def _backward(grad: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, form: str,
              f_out: Optional[torch.Tensor] = None, ones_tail: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The elementwise backward launch.  With ``f_out`` (``[rows, K (+ TAIL)]`` in x's dtype, rows
    K-contiguous) it also writes F(x) there, and with ``ones_tail`` the TAIL columns ``(1, 0, ...)``
    after each row (see :class:`~cutlass_kernels.rational_elementwise.GroupRationalBwdConfig`)."""
    xc = x.contiguous()
    gc = grad.to(x.dtype).contiguous()  # the kernel reads grad and x with one element type
    dx = torch.empty_like(xc)
    g, n = denominator.shape
    m1 = numerator.shape[1]
    if xc.numel() == 0:
        return dx, torch.zeros_like(numerator), torch.zeros_like(denominator)
    dtype = dtype_name_of(x.dtype)
    vectors = (gc, xc, dx) if f_out is None else (gc, xc, dx, f_out)
    align = _alignment(*vectors, *(() if f_out is None else (f_out[1:],)))  # F's row stride too
    p = plan(xc.numel(), xc.shape[-1], g, dtype, align, _sm_count(x.device))
    cfg = GroupRationalBwdConfig(dtype=dtype, form=form, m=m1 - 1, n=n, vec=p.vec, emit_f=f_out is not None)
    ffi = abi.ffi_enabled()
    kernel = _get(cfg, "compile_backward", x.device, ffi)
    num, den = _coefficients(numerator, denominator)
    part = torch.empty((m1 + n, p.threads), dtype=torch.float32, device=x.device)
    extra = () if f_out is None else (f_out.stride(0) // p.vec, int(ones_tail))
    with abi.on_device(x.device):
        kernel(*elementwise_arguments(vectors, part, num, den, p, ffi, extra), abi.stream(x.device, ffi))
    sums = part.view(m1 + n, *p.partial_shape).sum(dim=(1, 3))  # (m1+n, g), fixed order: deterministic
    d_num = sums[:m1].t()
    if numerator.shape[0] == 1:
        d_num = d_num.sum(dim=0, keepdim=True)
    d_den = sums[m1:].t()
    return dx, d_num.to(numerator.dtype).contiguous(), d_den.to(denominator.dtype).contiguous()


def _get(cfg: GroupRationalConfig, fn: str, device: torch.device, ffi: bool):
    from .runtime import get_kernel

    fields = {"dtype": cfg.dtype, "form": cfg.form, "m": cfg.m, "n": cfg.n, "vec": cfg.vec}
    if getattr(cfg, "emit_f", False):  # only then: the other variants keep their cache keys
        fields["emit_f"] = True
    return get_kernel(f"{_MODULE}:{fn}", fields, _arch(device), SOURCES, ffi=ffi)


def _forward_route() -> tuple:
    """The env knobs that pick the kernel behind ``rational_linear_forward`` (part of its self-check key)."""
    return os.environ.get("FUSEDKAT_FUSED_FWD", ""), os.environ.get("FUSEDKAT_FWD_KERNEL", "")


def _mkn(x: torch.Tensor, weight: torch.Tensor) -> tuple[int, int, int]:
    """``(M, K, N)`` of ``linear(F(x), weight)``: rows of x (leading dims flattened), K, N."""
    k = x.shape[-1]
    return (x.numel() // k if k else 0, k, weight.shape[0])


@checked(route=_forward_route)
def rational_linear_forward(
    x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, weight: torch.Tensor,
    bias: Optional[torch.Tensor], form: str,
) -> torch.Tensor:
    """``linear(F(x), weight, bias)``: the fused rational GEMM where ``fwd_launch.enabled`` picks it
    for this GPU (``FUSEDKAT_FUSED_FWD``; off by default on sm_90) and it takes these arguments, else
    the rational kernel then a torch (cuBLAS) matmul."""
    from .gemm import fwd_launch

    if fwd_launch.enabled(x.device, _mkn(x, weight)) and fwd_launch.unsupported_reason(x, numerator, denominator, weight, bias) is None:
        return fwd_launch.forward_unchecked(x, numerator, denominator, weight, bias, form)
    return torch.nn.functional.linear(group_rational_forward(x, numerator, denominator, form), weight, bias)


def _backward_route() -> tuple:
    """The env knobs that pick the kernel behind ``rational_linear_backward`` (part of its self-check key)."""
    return (os.environ.get("FUSEDKAT_FUSED_BWD", ""), os.environ.get("FUSEDKAT_BWD_KERNEL", ""),
            os.environ.get("FUSEDKAT_BWD_SM90", ""))


@checked(route=_backward_route)
def rational_linear_backward(
    grad_out: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
    weight: torch.Tensor, has_bias: bool, form: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, d_numerator, d_denominator, d_weight, d_bias)``; F(x) recomputed from x (never saved)."""
    # issue 7: the fused dgrad/wgrad GEMMs where bwd_launch.enabled() picks them for this GPU (or
    # FUSEDKAT_FUSED_BWD forces them) and they take these arguments; else the unfused backward below.
    from .gemm import bwd_launch

    if bwd_launch.enabled(x.device, _mkn(x, weight)) and bwd_launch.unsupported_reason(grad_out, x, numerator, denominator, weight) is None:
        return bwd_launch.rational_linear_backward(grad_out, x, numerator, denominator, weight, has_bias, form)
    k, n_out = x.shape[-1], weight.shape[0]
    rows = torch_impl.rows_of(x)
    go = grad_out.reshape(rows, n_out)
    if go.dtype == x.dtype and 0 < go.shape[0] * (k + TAIL) <= _INT32_MAX and x.dtype != torch.float64:
        return _unfused_backward(go, x, numerator, denominator, weight, form)
    f = group_rational_forward(x, numerator, denominator, form).reshape(rows, k)
    d_weight = (go.t() @ f.to(go.dtype)).to(weight.dtype)
    acc = torch.float64 if go.dtype == torch.float64 else torch.float32
    d_bias = go.sum(dim=0, dtype=acc).to(weight.dtype)
    g_in = (go @ weight.to(go.dtype)).reshape(x.shape)
    dx, d_num, d_den = group_rational_backward(g_in, x, numerator, denominator, form)
    return dx, d_num, d_den, d_weight, d_bias


def _unfused_backward(go: torch.Tensor, x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor,
                      weight: torch.Tensor, form: str
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The unfused backward in three launches: two cuBLAS GEMMs around one elementwise kernel.

    1. ``G = dY W`` (cuBLAS);
    2. the elementwise backward on (G, x): dx, the coefficient partials, and F(x) written into
       ``Fa = [F(x) | 1 0 ... 0]`` ``[M, K + TAIL]`` (x's dtype): F is not recomputed by a kernel of
       its own, and x is read once;
    3. ``dY^T Fa = [dW | db | 0 ...]`` (cuBLAS): the ones column makes the weight-gradient GEMM
       produce the bias gradient too, so dY is not read again by a column reduction (on an H100 that
       reduction took 76 us of the 477 us of GPU time at 25216 x 768 -> 3072, bench/results/).

    go ``[M, N]`` in x's dtype, ``M * (K + TAIL)`` within int32; returns the op's 5-tuple (d_bias always: the op's contract).  dW and
    db are rounded to x's dtype by the GEMM, then cast to the weight's dtype, as a plain
    ``nn.Linear`` backward under autocast does.
    """
    k = x.shape[-1]
    g_in = (go @ weight.to(go.dtype)).reshape(x.shape)
    f_aug = torch.empty((go.shape[0], k + TAIL), dtype=x.dtype, device=x.device)
    dx, d_num, d_den = _backward(g_in, x, numerator, denominator, form, f_out=f_aug, ones_tail=True)
    from .gemm.bwd_launch import wgrad_and_bias

    d_weight, d_bias = wgrad_and_bias(go, f_aug, k, weight.dtype)
    return dx, d_num, d_den, d_weight, d_bias
