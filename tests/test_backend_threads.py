"""``use_backend`` across threads: blocks entered and left in any interleaving leave the process
consistent (issue 20: B's exit used to delete by depth, raise IndexError, and leave 'cute' forced)."""
from __future__ import annotations

import threading

import pytest
import torch

import fusedkat
from fusedkat.ops import dispatch


def _run_interleaved(order: list[tuple[str, str]], names: dict[str, str], make=None, probe=None) -> tuple[list, list]:
    """Run one thread per key of ``names``; each enters ``use_backend(names[t])`` and leaves it,
    stepping exactly in ``order`` ((thread, "enter"|"exit") pairs), coordinated by events.

    Returns (the requested backend seen by the main thread after each step, errors raised)."""
    go = {step: threading.Event() for step in range(len(order))}
    done = {step: threading.Event() for step in range(len(order))}
    errors: list = []

    def worker(tid: str) -> None:
        my_steps = [i for i, (t, _) in enumerate(order) if t == tid]
        try:
            cm = (make or fusedkat.use_backend)(names[tid])
            for i in my_steps:
                assert go[i].wait(10), f"step {i} never started"
                if order[i][1] == "enter":
                    cm.__enter__()
                else:
                    cm.__exit__(None, None, None)
                done[i].set()
        except BaseException as e:  # reported to the main thread
            errors.append(e)
            for i in my_steps:
                done[i].set()

    threads = [threading.Thread(target=worker, args=(t,)) for t in names]
    for th in threads:
        th.start()
    seen = []
    for i in range(len(order)):
        go[i].set()
        assert done[i].wait(10), f"step {i} {order[i]} did not finish"
        seen.append((probe or dispatch.requested_backend)())
    for th in threads:
        th.join(10)
    return seen, errors


def test_issue_reproducer_a_enters_b_enters_a_leaves_b_leaves(monkeypatch):
    monkeypatch.delenv("FUSEDKAT_BACKEND", raising=False)
    order = [("A", "enter"), ("B", "enter"), ("A", "exit"), ("B", "exit")]
    seen, errors = _run_interleaved(order, {"A": "torch", "B": "cute"})
    assert errors == []
    # innermost live entry wins: B (cute) from its entry until its exit, then nothing is forced
    assert seen == ["torch", "cute", "cute", "auto"]
    # and CPU ops run again (they raised "backend 'cute' was forced" forever before)
    x = torch.randn(2, 8)
    fusedkat.group_rational(x, torch.randn(1, 6), torch.randn(8, 4))


@pytest.mark.parametrize("order", [
    [("A", "enter"), ("B", "enter"), ("B", "exit"), ("A", "exit")],
    [("A", "enter"), ("B", "enter"), ("A", "exit"), ("B", "exit")],
    [("A", "enter"), ("B", "enter"), ("C", "enter"), ("B", "exit"), ("A", "exit"), ("C", "exit")],
    [("A", "enter"), ("B", "enter"), ("C", "enter"), ("A", "exit"), ("C", "exit"), ("B", "exit")],
])
def test_any_interleaving_restores_the_default_and_innermost_live_wins(order, monkeypatch):
    monkeypatch.delenv("FUSEDKAT_BACKEND", raising=False)
    names = {"A": "torch", "B": "cute", "C": "auto"}
    seen, errors = _run_interleaved(order, names)
    assert errors == []
    live: list[str] = []
    expected = []
    for t, what in order:
        if what == "enter":
            live.append(t)
        else:
            live.remove(t)
        expected.append(names[live[-1]] if live else "auto")
    assert seen == expected
    assert dispatch._stack == []


def test_nested_in_one_thread_still_restores_outer():
    with fusedkat.use_backend("torch"):
        with fusedkat.use_backend("cute"):
            assert dispatch.requested_backend() == "cute"
        assert dispatch.requested_backend() == "torch"
    assert dispatch._stack == []


def test_nvtx_ranges_blocks_across_threads_keep_the_innermost_live_setting():
    """The same class of bug in fusedkat.profiling.nvtx_ranges (it restored the setting saved at its
    entry, so A leaving while B was inside switched B's ranges off)."""
    from fusedkat import profiling

    assert not profiling.is_enabled()
    order = [("A", "enter"), ("B", "enter"), ("A", "exit"), ("B", "exit")]
    seen, errors = _run_interleaved(order, {"A": True, "B": True}, make=lambda on: profiling.nvtx_ranges(on),
                                    probe=profiling.is_enabled)
    assert errors == [] and seen == [True, True, True, False]
    order = [("A", "enter"), ("B", "enter"), ("A", "exit"), ("B", "exit")]
    seen, errors = _run_interleaved(order, {"A": True, "B": False}, make=lambda on: profiling.nvtx_ranges(on),
                                    probe=profiling.is_enabled)
    assert errors == [] and seen == [True, False, False, False]
    assert not profiling.is_enabled()
