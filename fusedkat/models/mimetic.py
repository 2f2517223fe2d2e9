"""Mimetic initialisation of self-attention (Trockman & Kolter 2023; KAT paper sec. 5.1).

Pretrained attention layers show W_q W_k^T ~ alpha1 Z1 + beta1 I and W_v W_proj ~ alpha2 Z2 - beta2 I
(Z random with unit-variance rows; row-vector convention x W).  We draw A = alpha Z + sign beta I,
factor it as A = L R with L = U sqrt(S), R = sqrt(S) V (SVD), and set, in torch's ``x @ W.T``
convention:

* W_q^T = L_qk, W_k = R_qk: summed over heads, q k^T = x A_qk x^T exactly; head h (columns
  h*d_h..(h+1)*d_h of L) carries its slice of A's singular triplets, a rank-d_h piece of A;
* W_v^T = L_vo, W_proj^T = R_vo: the value/output path computes x A_vo exactly.

One A per (layer, path) costs two SVDs per block; the official code draws a separate full-size A
for every head and keeps its first d_h singular vectors (heads+1 SVDs per block: minutes for
KAT-Base on a small CPU) — same statistics per head, but the heads of one layer then do not add up
to a single mimetic matrix.
(The official code assigns W_v = L, W_proj = R, whose product is R L, not A; we follow the paper.)
Random numbers come from torch's RNG (optionally a ``torch.Generator``), so seeding torch makes the
init reproducible — the official code used numpy's global RNG.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

ALPHA_QK, BETA_QK = 0.7, 0.7
ALPHA_VO, BETA_VO = 0.4, 0.4


def ortho_like(dim: int, alpha: float, beta: float, sign: float = 1.0,
               generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(L, R), float64 (dim, dim), with L @ R = alpha Z + sign beta I, Z ~ U(-sqrt(3/dim), sqrt(3/dim))."""
    bound = (3.0 / dim) ** 0.5
    z = (torch.rand(dim, dim, dtype=torch.float64, generator=generator) * 2.0 - 1.0) * bound
    a = alpha * z + sign * beta * torch.eye(dim, dtype=torch.float64)
    # LAPACK's threaded SVD collapses when the cores are oversubscribed (measured on the 2-core CI
    # machines: 384x384 took 1.4-8 s with 2 threads, 0.2 s with 1), so factor single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        u, s, vh = torch.linalg.svd(a)
    finally:
        torch.set_num_threads(threads)
    root = s.sqrt()
    return u * root, root[:, None] * vh


@torch.no_grad()
def mimetic_init_(attn: nn.Module, generator: Optional[torch.Generator] = None,
                  alpha_qk: float = ALPHA_QK, beta_qk: float = BETA_QK,
                  alpha_vo: float = ALPHA_VO, beta_vo: float = BETA_VO) -> None:
    """Mimetic init of a timm ``Attention`` (fused ``qkv`` [3C, C] and ``proj`` [C, C]) in place.

    Biases are left alone (timm's init zeroes them).  No-op on the meta device.
    """
    qkv, proj = getattr(attn, "qkv", None), getattr(attn, "proj", None)
    if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear):
        raise TypeError(f"mimetic init needs an attention module with nn.Linear qkv and proj, got {type(attn).__name__}")
    c = proj.weight.shape[0]
    heads = int(getattr(attn, "num_heads"))
    if qkv.weight.shape != (3 * c, c) or c % heads != 0:
        raise ValueError(f"unexpected attention shapes: qkv {tuple(qkv.weight.shape)}, proj {tuple(proj.weight.shape)}, "
                         f"num_heads={heads}")
    if qkv.weight.is_meta:
        return
    left, right = ortho_like(c, alpha_qk, beta_qk, 1.0, generator)
    w = torch.empty(3 * c, c, dtype=torch.float64)
    w[:c] = left.T                                      # W_q^T = L_qk
    w[c:2 * c] = right                                  # W_k   = R_qk
    left, right = ortho_like(c, alpha_vo, beta_vo, -1.0, generator)
    w[2 * c:] = left.T                                  # W_v^T = L_vo
    qkv.weight.copy_(w)
    proj.weight.copy_(right.T)                          # W_proj^T = R_vo
