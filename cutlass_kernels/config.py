"""Kernel configurations: frozen dataclasses of primitive fields with a derived cache key.

A config says everything that changes the generated code (dtype, degrees, form, tile shape,
vector width, ...) and nothing that is a runtime argument (sizes, pointers).  Because every field
is a primitive (str / int / bool / float / tuple of those), a config pickles to worker processes
and hashes to a stable key that is the same in every process and on every machine.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, ClassVar

#: Element types the kernels accept, by short name.  Configs store the name, never a DSL type,
#: so they stay picklable and importing this module needs neither torch nor the DSL.
DTYPE_NAMES: tuple[str, ...] = ("fp32", "bf16", "fp16")
DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2}

_PRIMITIVES = (str, int, bool, float, type(None))


def _check_primitive(name: str, value: Any) -> None:
    if isinstance(value, tuple):
        for v in value:
            _check_primitive(name, v)
        return
    if not isinstance(value, _PRIMITIVES):
        raise TypeError(
            f"config field {name!r} must be a primitive (str/int/bool/float/None or a tuple of them), "
            f"got {type(value).__name__}"
        )


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Base class of every kernel config.  Subclasses are ``@dataclass(frozen=True)`` and set
    ``family`` (a ClassVar naming the kernel family, e.g. ``"group_rational_fwd"``)."""

    family: ClassVar[str] = "abstract"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_primitive(f.name, getattr(self, f.name))

    def to_dict(self) -> dict[str, Any]:
        """Fields as a plain dict (plus ``family``), JSON-serialisable."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["family"] = self.family
        return d

    def cache_key(self) -> str:
        """Stable hex key of (family, fields): equal configs give equal keys in every process."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def short_name(self) -> str:
        """Human-readable ``family[field=value,...]`` for tables and logs."""
        fields = ",".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))
        return f"{self.family}[{fields}]"


def check_dtype_name(name: str) -> str:
    """Return ``name`` if it is one of :data:`DTYPE_NAMES`, else raise ValueError."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"unsupported kernel dtype {name!r}; expected one of {DTYPE_NAMES}")
    return name


def dtype_name_of(torch_dtype: Any) -> str:
    """Short name of a torch dtype (``torch.bfloat16 -> "bf16"``); ValueError if unsupported."""
    import torch  # local: config must stay importable without torch for the build workers

    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    if torch_dtype not in names:
        raise ValueError(f"the CuTe kernels take float32/bfloat16/float16, got {torch_dtype}")
    return names[torch_dtype]
