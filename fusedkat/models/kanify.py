"""``kanify``: turn any model's ``Linear -> activation -> Linear`` MLPs into GR-KAN MLPs, keeping every weight.

The generalisation of :func:`fusedkat.models.vit_to_kat` (paper sec. 4.4) beyond timm ViTs: timm
ViT/DeiT/Swin/ConvNeXt, Hugging Face GPT-2/BERT/ViT and any module tree.  MLPs are found by
structure (:mod:`fusedkat.models.mlp_finder`), then each one

    fc2(drop(act(fc1(x))))   becomes   fc2(drop(F2(fc1(F1(x)))))

with F1 an identity :class:`~fusedkat.nn.GroupRational` (exact) put in front of fc1 (KAT's act1),
and F2 a GroupRational fitted to the activation it replaces (KAT's act2), in the activation's place:
the dropout stays where it was, so training behaves like the original too.  fc1 (and fc2 when it is
an HF ``Conv1D``) become :class:`~fusedkat.nn.KanLinear` holding the *same* Parameters, so the
state_dict keeps every key and value it had, plus ``<fc1>.rational.*`` and ``<act>.weight_*``.

The activation is identified by its values, not its class: evaluated in float64 on the fit grid it
is compared with the tabulated targets (gelu, gelu_tanh, quick_gelu, silu, relu, ...); one that
matches none is fitted numerically (scipy least squares, as :func:`fusedkat.init.fit_rational`).
The report gives, for every MLP, the fit's error against the module itself.
"""
from __future__ import annotations

import copy
import fnmatch
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..init import RationalFit, fit_grid, fit_rational
from ..init.targets import TARGETS
from ..nn import GroupRational, KanLinear
from ..nn.rational import InitLike
from ..ops import rational_math as rm
from .mlp_finder import LINEAR, TRANSPOSED, MLPSite, Skipped, find_mlps

__all__ = ["kanify", "KanifyReport", "ConvertedMLP", "Skipped", "identify_activation"]

# Tabulated targets an activation module can turn out to be (checked in this order).
_KNOWN = ("gelu", "gelu_tanh", "quick_gelu", "silu", "relu", "leaky_relu", "tanh", "sigmoid", "mish")
_MATCH_TOL = 1e-6  # max |module - target| on the grid to call them the same function (float32-safe)


@dataclass(frozen=True)
class ConvertedMLP:
    """One converted MLP: its layers' paths, sizes, what its activation was and how well F2 fits it.

    ``fit_rms`` / ``fit_max``: RMS and max |F2(x) - act(x)| on the fit grid (1000 points on [-3, 3]),
    act evaluated from the original module in float64.
    """

    name: str
    fc1: str
    act: str
    fc2: str
    in_features: int
    hidden_features: int
    out_features: int
    activation: str      # the table target it matched ("gelu", ...) or "<Class> (fitted)"
    init: str            # the target F2 was initialised to (differs from activation with act_init=)
    fit_rms: float
    fit_max: float
    found_by: str        # "trace" or "sibling order" (see mlp_finder)


@dataclass
class KanifyReport:
    """What :func:`kanify` did: ``converted`` MLPs and ``skipped`` activations/MLPs with the reason."""

    converted: List[ConvertedMLP] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)
    num_groups: int = rm.DEFAULT_GROUPS
    form: str = rm.DEFAULT_FORM

    def to_dict(self) -> dict:
        return {"num_groups": self.num_groups, "form": self.form,
                "converted": [asdict(c) for c in self.converted], "skipped": [asdict(s) for s in self.skipped]}

    def __str__(self) -> str:
        lines = [f"kanify: {len(self.converted)} MLP(s) converted (num_groups={self.num_groups}, form={self.form}), "
                 f"{len(self.skipped)} skipped"]
        if self.converted:
            w = max(len(c.name or "<root>") for c in self.converted)
            lines.append(f"  {'mlp':<{w}}  {'in->hidden->out':<17} {'activation':<22} {'fit rms':>9} {'fit max':>9}  found by")
            for c in self.converted:
                dims = f"{c.in_features}->{c.hidden_features}->{c.out_features}"
                act = c.activation if c.init == c.activation else f"{c.activation}->{c.init}"
                lines.append(f"  {c.name or '<root>':<{w}}  {dims:<17} {act:<22} {c.fit_rms:9.2e} {c.fit_max:9.2e}  {c.found_by}")
        for s in self.skipped:
            lines.append(f"  skipped {s.path}: {s.reason}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def _module_values(act: nn.Module, x: np.ndarray) -> np.ndarray:
    """act(x) in float64 (float32 if the module refuses float64)."""
    try:
        y = act(torch.from_numpy(x.copy())).to(torch.float64)
    except Exception:
        y = act(torch.from_numpy(x.astype(np.float32))).to(torch.float64)
    return y.numpy()


def identify_activation(act: nn.Module) -> Union[str, Callable[[np.ndarray], np.ndarray]]:
    """The fit target for an elementwise activation module, found from its values.

    Returns a tabulated target name when the module equals one on the fit grid (to 1e-6), else a
    float64 numpy function wrapping the module (fitted numerically by ``fit_rational``).
    """
    x = fit_grid()
    y = _module_values(act, x)
    for name in _KNOWN:
        if np.max(np.abs(TARGETS[name](x) - y)) <= _MATCH_TOL:
            return name

    def fn(v: np.ndarray) -> np.ndarray:
        return _module_values(act, np.asarray(v, dtype=np.float64))

    fn.__name__ = type(act).__name__
    return fn


def _fit_error(fit: RationalFit, act: nn.Module) -> Tuple[float, float]:
    x = fit_grid()
    d = fit(x) - _module_values(act, x)
    return float(math.sqrt(np.mean(d * d))), float(np.max(np.abs(d)))


# ---------------------------------------------------------------------------------------------
# the conversion
# ---------------------------------------------------------------------------------------------
def _set(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, new)


def _patterns(p: Union[None, str, Sequence[str]], what: str) -> Optional[Tuple[str, ...]]:
    if p is None:
        return None
    if isinstance(p, str):
        return (p,)
    if not all(isinstance(s, str) for s in p):
        raise TypeError(f"{what} must be a glob pattern or a sequence of them (str)")
    return tuple(p)


def _matches(site: MLPSite, patterns: Tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(s, p) for p in patterns for s in (site.name, site.act))


def _kan_linear(root: nn.Module, path: str, kind: str, rational: Optional[GroupRational]) -> KanLinear:
    old = root.get_submodule(path)
    return KanLinear(old.weight, old.bias, rational=rational, transposed=kind == TRANSPOSED)


def kanify(
    model: nn.Module,
    num_groups: int = rm.DEFAULT_GROUPS,
    form: str = rm.DEFAULT_FORM,
    act_init: Optional[InitLike] = None,
    include: Union[None, str, Sequence[str]] = None,
    exclude: Union[None, str, Sequence[str]] = None,
    *,
    inplace: bool = False,
) -> Tuple[nn.Module, KanifyReport]:
    """Replace every ``Linear -> activation -> (dropout) -> Linear`` MLP of ``model`` by its GR-KAN twin.

    Args:
        model: any ``nn.Module`` (timm, Hugging Face transformers, plain torch).
        num_groups: g of every GroupRational; fc1's in_features and hidden size must be divisible by
            it (MLPs where they are not are skipped and reported).
        form: "A" (official KAT) or "B".
        act_init: None: F2 fits each MLP's own activation; otherwise a target name, a numpy callable
            or a :class:`RationalFit` that every F2 starts from (its error vs the activation is reported).
        include / exclude: fnmatch glob(s) on the MLP's name (the module holding it, e.g.
            ``"blocks.*"``) or its activation's path; only included, not excluded MLPs are converted.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        ``(converted_model, report)``.  The converted model is a deep copy (unless ``inplace``) in
        the same mode (train/eval), with every original parameter kept (same state_dict keys and
        values) and the rationals' parameters added, on fc1's device and in its dtype.
        Activations that are not in such an MLP (gated MLPs such as SwiGLU, poolers, ...) are left
        alone and listed in ``report.skipped`` with the reason.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"kanify expects an nn.Module, got {type(model).__name__}")
    rm.check_int(num_groups, "num_groups")
    rm.check_form(form)
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    init_fit = None if act_init is None else GroupRational(1, init=act_init, form=form).fit  # validate once, early
    model = model if inplace else copy.deepcopy(model)
    sites, skipped = find_mlps(model)
    report = KanifyReport(skipped=list(skipped), num_groups=num_groups, form=form)
    fits: Dict[bytes, Tuple[str, RationalFit]] = {}
    for site in sites:
        if inc is not None and not _matches(site, inc):
            report.skipped.append(Skipped(site.act, "not matched by include"))
            continue
        if exc is not None and _matches(site, exc):
            report.skipped.append(Skipped(site.act, "matched by exclude"))
            continue
        bad = [f"{n}={k}" for n, k in (("in_features", site.in_features), ("hidden_features", site.hidden_features))
               if k % num_groups]
        if bad:
            report.skipped.append(Skipped(site.act, f"{', '.join(bad)} not divisible by num_groups={num_groups}"))
            continue
        act = model.get_submodule(site.act)
        try:
            activation, fit = _fit_for(act, form, init_fit, fits)
        except (RuntimeError, ValueError) as e:
            report.skipped.append(Skipped(site.act, f"no rational fit for {type(act).__name__}: {e}"))
            continue
        rms, mx = _fit_error(fit, act)
        w = model.get_submodule(site.fc1).weight
        dd = {"device": w.device, "dtype": w.dtype if w.is_floating_point() else torch.float32}
        f1 = GroupRational(num_groups, init="identity", form=form, **dd)
        f2 = GroupRational(num_groups, init=fit, form=form, **dd)
        _set(model, site.fc1, _kan_linear(model, site.fc1, site.fc1_kind, f1))
        _set(model, site.act, f2)
        if site.fc2_kind != LINEAR and not isinstance(model.get_submodule(site.fc2), KanLinear):
            # HF Conv1D: an F.linear view, so the compile pass can fuse F2 into it (a KanLinear
            # already, when this fc2 is also the next MLP's fc1 and was converted first)
            _set(model, site.fc2, _kan_linear(model, site.fc2, site.fc2_kind, None))
        report.converted.append(ConvertedMLP(
            name=site.name, fc1=site.fc1, act=site.act, fc2=site.fc2, in_features=site.in_features,
            hidden_features=site.hidden_features, out_features=site.out_features, activation=activation,
            init=activation if init_fit is None else init_fit.target, fit_rms=rms, fit_max=mx, found_by=site.found_by))
    return model, report


def _fit_for(act: nn.Module, form: str, init_fit: Optional[RationalFit],
             cache: Dict[bytes, Tuple[str, RationalFit]]) -> Tuple[str, RationalFit]:
    """(activation name for the report, the fit F2 starts from); numerical fits cached by the values."""
    key = _module_values(act, fit_grid()).tobytes()
    if key not in cache:
        target = identify_activation(act)
        name = target if isinstance(target, str) else f"{target.__name__} (fitted)"
        cache[key] = (name, init_fit if init_fit is not None else fit_rational(target, form=form))
    name, fit = cache[key]
    return name, (init_fit if init_fit is not None else fit)
