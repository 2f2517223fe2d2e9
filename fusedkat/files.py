"""Writing files so that nothing is ever lost: temporary file in the same folder, then rename.

Every file fusedkat writes (checkpoints, converted models, JSON results, metrics, plots) goes
through this module.  A crash, a full disk or Ctrl-C while writing leaves the previous file intact
(``os.replace`` is atomic on POSIX and Windows within one file system, which the same folder
guarantees) and no half-written file under the final name; the temporary file is removed.

Commands check their outputs *before* they start work (:func:`check_writable`), so that minutes of
training are never thrown away because the output path turns out to be a folder or read-only.

Only the standard library is imported here (cheap; usable from any layer of the package).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["OutputError", "atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_save",
           "check_writable", "check_writable_dir"]


class OutputError(OSError):
    """An output path that cannot be written (or must not be overwritten); the message names it."""


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; on success, fsync and rename onto ``path``.

    ``mode`` is ``"w"`` (text) or ``"wb"`` (binary).  If the block raises (including
    ``KeyboardInterrupt``), the temporary file is deleted and ``path`` is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)


def atomic_save(path: PathLike, writer: Callable[[IO[bytes]], Any]) -> None:
    """Call ``writer(fh)`` on a binary temporary file and rename it onto ``path`` when it returns.

    For writers that take a file object: ``atomic_save(p, lambda f: torch.save(obj, f))``,
    ``atomic_save(p, lambda f: fig.savefig(f, format="png"))``.
    """
    with atomic_open(path, "wb") as fh:
        writer(fh)


def check_writable(path: PathLike, *, force: bool = True, what: str = "output file") -> Path:
    """Fail early, naming the path, if a file cannot be written at ``path``.

    Raises :class:`OutputError` if ``path`` is a folder, its folder does not exist or is not
    writable, or (``force=False``) the file already exists.  Creates nothing.
    """
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} {str(p)!r} is a folder; give a file name")
    if p.exists() and not force:
        raise OutputError(f"{what} {str(p)!r} already exists; pass --force to overwrite it")
    folder = p.parent if str(p.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write {what} {str(p)!r}: {str(folder)!r} is a file, not a folder")
    if not folder.is_dir():
        raise OutputError(f"cannot write {what} {str(p)!r}: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what} {str(p)!r}: folder {str(folder)!r} is not writable")
    if p.exists() and not os.access(p, os.W_OK) and not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write {what} {str(p)!r}: permission denied")
    return p


def check_writable_dir(path: PathLike, *, create: bool = True, what: str = "output folder") -> Path:
    """Fail early if ``path`` cannot be used as an output folder; create it (and parents) if asked."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{what} {str(p)!r} exists and is not a folder")
    if not p.exists():
        if not create:
            raise OutputError(f"{what} {str(p)!r} does not exist")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create {what} {str(p)!r}: {e.strerror or e}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {str(p)!r} is not writable")
    return p
