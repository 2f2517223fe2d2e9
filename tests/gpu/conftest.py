"""GPU tests: every test under tests/gpu/ is marked ``gpu`` and skipped cleanly without CUDA
(or on a GPU older than sm_80, or when the CuTe DSL cannot be imported).

Fixture ``poison``: fill the CUDA caching allocator's free blocks with NaN before a kernel runs,
so an output element the kernel forgot to write shows up as NaN instead of a stale valid value.
"""
from __future__ import annotations

import importlib.util
from typing import Callable, Optional

import pytest
import torch


def _skip_reason() -> Optional[str]:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (none available)"
    if torch.cuda.get_device_capability() < (8, 0):
        return f"needs sm_80 or newer (this GPU is sm_{''.join(map(str, torch.cuda.get_device_capability()))})"
    if importlib.util.find_spec("cutlass") is None:
        return "needs nvidia-cutlass-dsl (not installed)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _skip_reason()
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/") or "/gpu/" in item.nodeid:
            item.add_marker(pytest.mark.gpu)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def poison() -> Callable[..., None]:
    """``poison(*tensors_like)``: allocate NaN-filled blocks of the given tensors' sizes (and some
    larger ones) and free them, so the allocator hands that garbage to the next allocations."""

    def _poison(*likes: torch.Tensor, extra_bytes: int = 1 << 20) -> None:
        blocks = []
        for t in likes:
            nbytes = t.numel() * t.element_size()
            for size in (nbytes, nbytes + 512, extra_bytes):
                blocks.append(torch.full((max(1, size // 4),), float("nan"), device="cuda"))
        torch.cuda.synchronize()
        del blocks  # back to the caching allocator, still full of NaN

    return _poison
