"""The process side of ``fusedkat train``: torch.distributed from torchrun's environment, and a
Ctrl-C / SIGTERM flag that the training loop reads between optimizer steps."""
from __future__ import annotations

import os
import signal
import time
from typing import List

import torch

from .errors import CLIError


class DistEnv:
    """torch.distributed from torchrun's environment (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``), or one process."""

    def __init__(self, device_name: str) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device_name != "cpu"
        if device_name == "cuda" and not torch.cuda.is_available():
            raise CLIError("--device cuda was requested but torch sees no CUDA device")
        self.device = torch.device("cuda", self.local_rank) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        self.active = self.world > 1
        if self.active:
            import torch.distributed as dist

            dist.init_process_group("nccl" if use_cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: List[float]) -> List[float]:
        if not self.active:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class StopFlag:
    """SIGINT/SIGTERM set a flag that the loop reads between optimizer steps (a second Ctrl-C is a hard stop)."""

    def __init__(self) -> None:
        self.set = False
        self._first = 0.0
        self._old: dict = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        # Under torchrun a Ctrl-C reaches each worker twice (from the terminal and from the agent):
        # only a signal more than 2 s after the first one is a hard stop.
        if self.set and time.monotonic() - self._first > 2.0 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.set:
            self.set, self._first = True, time.monotonic()

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
