"""DistributedDataParallel over two real CPU processes (gloo), eager and torch.compile'd.

Two ranks each train on half of a batch; after a few SGD steps their parameters must equal those of
one process trained on the whole batch (DDP averages gradients; the loss is a mean, so the
gradients are the same).  Also with activation checkpointing inside the model.
"""
from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from compile_toys import KATToy

WORLD = 2
STEPS = 3
BATCH = 8  # split 4 + 4
LR = 0.2
# (name, compiled, activation checkpointing)
RUNS = [("eager", False, False), ("compiled", True, False), ("eager_checkpoint", False, True)]


def _data():
    g = torch.Generator().manual_seed(123)
    xs = [torch.randn(BATCH, 6, 16, generator=g) for _ in range(STEPS)]
    ys = [torch.randint(0, 5, (BATCH,), generator=g) for _ in range(STEPS)]
    return xs, ys


def _model(checkpoint: bool) -> KATToy:
    torch.manual_seed(7)
    return KATToy(depth=1, checkpoint=checkpoint)


def _train(model: torch.nn.Module, xs, ys, rows: slice) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    for x, y in zip(xs, ys):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x[rows]), y[rows])
        loss.backward()
        opt.step()


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        xs, ys = _data()
        per = BATCH // WORLD
        rows = slice(rank * per, (rank + 1) * per)
        for name, compiled, ckpt in RUNS:
            model = _model(ckpt)
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            runner = torch.compile(ddp, backend="fusedkat") if compiled else ddp
            _train(runner, xs, ys, rows)
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                       os.path.join(out_dir, f"{name}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_ddp_two_processes_match_one_process_on_the_whole_batch(tmp_path):
    # Children are spawned (fresh interpreters) and import this module by name: keep tests/ on their path.
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    xs, ys = _data()
    for name, compiled, ckpt in RUNS:
        single = _model(ckpt)
        before = {k: v.clone() for k, v in single.state_dict().items()}
        _train(single, xs, ys, slice(None))
        want = single.state_dict()
        tol = dict(rtol=2e-4, atol=2e-5) if compiled else dict(rtol=1e-5, atol=1e-6)
        for rank in range(WORLD):
            got = torch.load(tmp_path / f"{name}_rank{rank}.pt")
            assert got.keys() == want.keys()
            for k in want:
                torch.testing.assert_close(got[k], want[k], **tol, msg=f"{name} rank {rank} {k}")
        # the training moved the rational coefficients (so they took part in the comparison)
        k = "blocks.0.mlp.act1.weight_denominator"
        assert (want[k] - before[k]).abs().max() > 1e-4
