"""On-disk compile cache for CuTe DSL kernels, safe under concurrent processes.

An entry is a directory named by a key derived from everything that changes the binary:
the kernel config's key, the target arch, a fingerprint of the generator's source files and the
DSL version.  It holds whatever the builder wrote (``kernel.cubin``, ``kernel.ptx``, an AOT
``kernel.so`` ...) plus ``meta.json`` (written last).  Publication is atomic: the builder writes
into a private temporary directory that is renamed into place, so readers never see half an entry.
A per-key ``fcntl`` lock makes concurrent processes that miss on the same key compile it once:
the first builds, the others wait and then read its entry.

Location: ``$FUSEDKAT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/fusedkat/cute`` (default
``~/.cache/fusedkat/cute``).  Delete the directory (or call :meth:`CompileCache.clear`) to reset.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

ENV_CACHE_DIR = "FUSEDKAT_CACHE_DIR"
META = "meta.json"


def default_cache_dir() -> Path:
    """``$FUSEDKAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/fusedkat/cute``, else ``~/.cache/fusedkat/cute``."""
    env = os.environ.get(ENV_CACHE_DIR, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fusedkat" / "cute"


def dsl_version() -> str:
    """Installed nvidia-cutlass-dsl version (without importing the DSL), or ``"none"``."""
    try:
        return importlib.metadata.version("nvidia-cutlass-dsl")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def source_fingerprint(modules: Iterable[str]) -> str:
    """sha256 over the source files of ``modules`` (dotted names), found without importing them.

    Any edit to a kernel generator or to what it calls (e.g. ``fusedkat.ops.rational_math``)
    changes the fingerprint and so invalidates its cache entries.
    """
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not os.path.isfile(spec.origin):
            raise ModuleNotFoundError(f"cannot fingerprint {name!r}: source file not found")
        h.update(name.encode())
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:24]


def make_key(*parts: Any) -> str:
    """Stable hex key of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class CompileCache:
    """A directory of compiled-kernel entries; see the module docstring."""

    def __init__(self, root: Optional[os.PathLike | str] = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def entry_path(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> Optional[tuple[Path, dict]]:
        """``(entry dir, meta)`` if a complete entry exists, else None."""
        path = self.entry_path(key)
        try:
            meta = json.loads((path / META).read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None
        return path, meta

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        lock_dir = self.root / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / f"{key}.lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def get_or_build(self, key: str, build: Callable[[Path], dict]) -> tuple[Path, dict, bool]:
        """Return ``(entry dir, meta, hit)``; on a miss call ``build(tmp_dir) -> meta`` once.

        ``build`` writes its files into ``tmp_dir`` and returns a JSON-serialisable dict; the
        directory is then published atomically.  If ``build`` raises, nothing is published.
        """
        found = self.lookup(key)
        if found is not None:
            return found[0], found[1], True
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(key):
            found = self.lookup(key)  # another process may have built it while we waited
            if found is not None:
                return found[0], found[1], True
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.root))
            try:
                meta = build(tmp)
                (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
                final = self.entry_path(key)
                if final.exists():  # a stale, incomplete entry (no meta.json): replace it
                    shutil.rmtree(final)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return final, meta, False

    def clear(self) -> None:
        """Remove every entry."""
        shutil.rmtree(self.root, ignore_errors=True)
