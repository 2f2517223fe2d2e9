"""Peak memory of one training step, measured the same way for every model.

What we report is the *extra* memory a step allocates on top of what was live when it started
(parameters and optimizer state excluded): activations saved for backward, gradients and temporaries.
- CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation at the start of the step.
- CPU: torch has no peak counter for its CPU allocator, so one step runs under ``torch.profiler`` with
  ``profile_memory=True`` and the allocator's alloc/free events are replayed in time order.
Both count tensor memory from torch's allocator (including inductor's buffers), not Python objects.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

import torch


def step_peak_bytes(step: Callable[[], object], device: torch.device) -> int:
    """Run ``step()`` once and return the peak bytes it allocated above the starting level."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    return _cpu_step_peak_bytes(step)


@contextlib.contextmanager
def _quiet_fd2():
    """Kineto's C++ logger prints start/stop lines straight to file descriptor 2 whatever its log
    level; hide them for the duration of the (already warmed-up, known-good) profiled step."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_step_peak_bytes(step: Callable[[], object]) -> int:
    import logging
    import warnings

    from torch.profiler import ProfilerActivity, profile

    # The profiler warns about blocks allocated before it started; that is expected here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.autograd.profiler").setLevel(logging.ERROR)
        with _quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
    # Raw kineto events: each "[memory]" record is one allocation (+nbytes) or free (-nbytes).
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return int(peak)
