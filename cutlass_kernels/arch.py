"""GPU architecture names: detection from a device, normalisation, and an explicit override.

Arch strings are the DSL's ``--gpu-arch`` values: ``sm_80``, ``sm_86``, ``sm_89``, ``sm_90a``,
``sm_100a`` ...  Hopper and later need the ``a`` suffix for their arch-specific instructions
(wgmma, TMA multicast); we always use it there.

Override (compile-only machines, cross-compiling, tests): pass ``arch=`` explicitly, or set
``FUSEDKAT_ARCH=sm_90a``.  Never rely on the DSL default: unset, it targets sm_100a silently.
"""
from __future__ import annotations

import os
import re
from typing import Any, Optional

ENV_ARCH = "FUSEDKAT_ARCH"

#: Archs the kernels of this package are built and tested for.
SUPPORTED_ARCHES: tuple[str, ...] = ("sm_80", "sm_86", "sm_89", "sm_90a")
#: Archs the build check compiles by default (one Ampere-class, one Hopper).
DEFAULT_BUILD_ARCHES: tuple[str, ...] = ("sm_80", "sm_90a")

_ARCH_RE = re.compile(r"^(?:sm_?)?(\d{1,2})(\d)([af]?)$")


def normalize_arch(arch: str) -> str:
    """Canonical arch string: ``"sm90" / "90" / "sm_90" -> "sm_90a"``, ``"sm_80" -> "sm_80"``.

    Raises ValueError for strings that are not an arch.
    """
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a string like 'sm_80', got {type(arch).__name__}")
    m = _ARCH_RE.match(arch.strip().lower())
    if not m:
        raise ValueError(f"not a GPU arch: {arch!r} (expected e.g. 'sm_80' or 'sm_90a')")
    major, minor, suffix = int(m.group(1)), int(m.group(2)), m.group(3)
    return arch_from_capability((major, minor)) if not suffix else f"sm_{major}{minor}{suffix}"


def arch_from_capability(cap: tuple[int, int]) -> str:
    """``(9, 0) -> "sm_90a"``; ``(8, 6) -> "sm_86"``.  sm_90 and newer get the ``a`` suffix."""
    major, minor = int(cap[0]), int(cap[1])
    return f"sm_{major}{minor}" + ("a" if major >= 9 else "")


def capability_of(arch: str) -> tuple[int, int]:
    """``"sm_90a" -> (9, 0)``."""
    m = _ARCH_RE.match(normalize_arch(arch))
    assert m is not None
    return int(m.group(1)), int(m.group(2))


def detect_arch(device: Any = None, override: Optional[str] = None) -> str:
    """The arch to compile for: ``override`` > ``$FUSEDKAT_ARCH`` > the CUDA device's capability.

    ``device`` is a torch device / index (default: the current CUDA device).  Raises RuntimeError
    when there is no override and no CUDA device to ask.
    """
    if override:
        return normalize_arch(override)
    env = os.environ.get(ENV_ARCH, "").strip()
    if env:
        return normalize_arch(env)
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            f"cannot detect the GPU arch: no CUDA device (pass arch= or set {ENV_ARCH}=sm_80 to compile only)"
        )
    return arch_from_capability(torch.cuda.get_device_capability(device))


def is_supported(arch: str, supported: tuple[str, ...] = SUPPORTED_ARCHES) -> bool:
    """Whether ``arch`` (any spelling) is in ``supported``."""
    try:
        return normalize_arch(arch) in supported
    except ValueError:
        return False
