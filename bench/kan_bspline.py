"""A B-spline KAN layer in the style of efficient-kan: the "vanilla KAN" baseline of the paper's
ViT+KAN (Table 2), written here for the benchmarks (not part of the library).

``y = W_base @ silu(x) + W_spline @ B(x)``: every input-output pair has its own spline of order K
over G intervals (G + K basis functions, Cox-de Boor recursion on a uniform grid extended by K knots
on each side) scaled by its own ``spline_scaler``.  Parameters: base weight ``(out, in)``, spline
weight ``(out, in, G+K)``, spline scaler ``(out, in)`` -> ``(G + K + 2) * in * out`` (the paper's
Table 2 counts ``(G + K + 3) * in * out + out`` for the original pykan layer).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BSplineKANLinear(nn.Module):
    """``[..., in_features] -> [..., out_features]``; grid_range should cover the inputs."""

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, spline_order: int = 3,
                 grid_range: tuple[float, float] = (-3.0, 3.0)) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.spline_order = grid_size, spline_order
        lo, hi = grid_range
        h = (hi - lo) / grid_size
        knots = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float32) * h + lo
        self.register_buffer("grid", knots.expand(in_features, -1).contiguous())  # (in, G + 2K + 1)
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, grid_size + spline_order))
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5))
        with torch.no_grad():
            self.spline_weight.normal_(0.0, 0.1 / grid_size)

    def b_splines(self, x: Tensor) -> Tensor:
        """``(M, in) -> (M, in, G + K)``: the B-spline basis functions of order K at x."""
        g = self.grid.to(x.dtype)
        xe = x.unsqueeze(-1)
        bases = ((xe >= g[:, :-1]) & (xe < g[:, 1:])).to(x.dtype)
        for k in range(1, self.spline_order + 1):
            left = (xe - g[:, : -(k + 1)]) / (g[:, k:-1] - g[:, : -(k + 1)]) * bases[..., :-1]
            right = (g[:, k + 1 :] - xe) / (g[:, k + 1 :] - g[:, 1:-k]) * bases[..., 1:]
            bases = left + right
        return bases

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        base = F.linear(F.silu(x2), self.base_weight)
        scaled = (self.spline_weight * self.spline_scaler.unsqueeze(-1)).reshape(self.out_features, -1)
        spline = F.linear(self.b_splines(x2).reshape(x2.shape[0], -1), scaled)
        return (base + spline).reshape(*lead, self.out_features)
