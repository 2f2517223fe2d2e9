"""Small KAT-style modules for the compile / DDP tests (owned by issue 4's tests).

They are written the way the official KAT code is — separate modules for the rational activation,
the dropout and the linear (``act1 -> drop1 -> fc1``) — so that the fuse pass has something
unmodified to work on.  The rational is called through the public op ``fusedkat.ops.group_rational``.
Coefficients are random (never the identity) so a wrong fusion cannot hide.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from fusedkat.ops import group_rational


class GroupRationalAct(nn.Module):
    """F applied channel-wise: x ``[..., K]``; numerator (1, m+1) shared, denominator (groups, n)."""

    def __init__(self, groups: int = 4, form: str = "A", seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        # Roughly gelu-like magnitudes, perturbed: F is far from both identity and zero.
        a = torch.tensor([0.02, 0.5, 0.4, 0.1, 0.01, 0.002]) + 0.05 * torch.randn(6, generator=gen)
        b = 0.3 * torch.randn(groups, 4, generator=gen)
        self.weight_numerator = nn.Parameter(a.reshape(1, 6))
        self.weight_denominator = nn.Parameter(b)
        self.form = form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_rational(x, self.weight_numerator, self.weight_denominator, form=self.form)


class KANMlpToy(nn.Module):
    """act1 -> drop1 -> fc1 -> act2 -> drop2 -> fc2 (the official KAT MLP's shape, without norm)."""

    def __init__(self, dim: int = 16, hidden: int = 32, drop: float = 0.0, form: str = "A",
                 bias: bool = True, groups: int = 4) -> None:
        super().__init__()
        self.act1 = GroupRationalAct(groups, form, seed=1)
        self.drop1 = nn.Dropout(drop)
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act2 = GroupRationalAct(groups, form, seed=2)
        self.drop2 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop2(self.act2(self.fc1(self.drop1(self.act1(x))))))


class KATBlockToy(nn.Module):
    """Pre-norm residual block: x + mlp(norm(x)); x ``[B, N, dim]``."""

    def __init__(self, dim: int = 16, hidden: int = 32, drop: float = 0.0, form: str = "A") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = KANMlpToy(dim, hidden, drop, form)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class KATToy(nn.Module):
    """A stack of toy blocks and a linear head on the mean token: ``[B, N, dim] -> [B, classes]``."""

    def __init__(self, depth: int = 2, dim: int = 16, hidden: int = 32, classes: int = 5,
                 drop: float = 0.0, checkpoint: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(KATBlockToy(dim, hidden, drop) for _ in range(depth))
        self.head = nn.Linear(dim, classes)
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            if self.checkpoint and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.head(x.mean(dim=1))


def count_targets(graph: torch.fx.Graph, target) -> int:
    """How many call nodes of ``graph`` call ``target``."""
    return sum(1 for n in graph.nodes if n.op.startswith("call_") and n.target is target)
