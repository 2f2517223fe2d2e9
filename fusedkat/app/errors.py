"""The one exception type the CLI turns into a one-line error message and a non-zero exit."""
from __future__ import annotations


class CLIError(Exception):
    """A user-facing error: the message is printed as ``fusedkat <cmd>: error: <message>``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
