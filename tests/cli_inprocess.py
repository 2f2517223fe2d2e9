"""``fusedkat.cli.main`` for tests that run a command in-process.

The CLI turns Ctrl-C into the one-line "interrupted" and exit status 130; in a test run that would
swallow the user's first Ctrl-C (the test fails, the run goes on).  This wrapper hands the
interrupt back to pytest, which then stops the run as it should.
"""
from __future__ import annotations

from typing import Optional, Sequence

from fusedkat.cli import main as _cli_main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``fusedkat argv`` in this process; re-raise KeyboardInterrupt instead of returning 130."""
    rc = _cli_main(argv)
    if rc == 130:
        raise KeyboardInterrupt("fusedkat was interrupted (Ctrl-C) during a test")
    return rc
