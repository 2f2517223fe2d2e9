"""Find the ``Linear -> activation -> (dropout) -> Linear`` MLPs of any module tree, by structure.

Used by :func:`fusedkat.kanify`.  No class names are looked up; the approach is:

1. **Layers are classified by probing**, not by type.  An *activation* is a leaf module without
   parameters or buffers that acts elementwise (applying it to an ``(8, 8)`` float64 tensor, to the
   same values as ``(64, 1)`` and as ``(64,)`` gives the same numbers, deterministic) and is not the
   identity.  A *pass-through* is a dropout (``nn.Dropout`` family) or a parameter-free leaf that
   returns its input unchanged (``nn.Identity``, an ``Identity``-like norm slot).  A *linear* is an
   ``nn.Linear`` or any leaf with a 2-D ``weight`` (and optional 1-D ``bias``) whose output on a
   random input equals ``x @ W.T + b``, or ``x @ W + b`` (a *transposed* linear: HF's ``Conv1D``).
2. **The data flow is read from a torch.fx trace** of the module that holds the activation (its
   parent), leaves kept opaque: the activation's input must be a linear's output (used only there),
   its output must reach a linear whose ``in_features`` match through pass-throughs only.  What the
   output feeds otherwise is the reason it is not an MLP (a multiply: a gated MLP such as SwiGLU).
3. **Split MLPs** (Hugging Face BERT/ViT: ``intermediate`` = Linear -> act, ``output`` = Linear ->
   dropout -> LayerNorm(+ residual), siblings whose parent layer cannot be traced): when the traced
   parent *returns* the activation's output, the next sibling registered after it (in the
   grandparent) whose trace sends its first input straight (through pass-throughs) into a linear
   with matching ``in_features`` is taken as the second half.  This one step assumes the siblings'
   registration order is their call order, and the report says so (``found_by="sibling order"``).
"""
from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

LINEAR, TRANSPOSED, ACTIVATION, PASS, OTHER = "linear", "transposed", "activation", "pass", "other"


@dataclass(frozen=True)
class MLPSite:
    """One MLP found: module paths (from the root) of its three layers and their sizes."""

    name: str          # the module whose trace showed the MLP (the holder of fc1 and the activation)
    fc1: str
    act: str
    fc2: str
    fc1_kind: str      # "linear" or "transposed"
    fc2_kind: str
    in_features: int
    hidden_features: int
    out_features: int
    found_by: str      # "trace" or "sibling order"


@dataclass(frozen=True)
class Skipped:
    """An activation (or MLP) left alone, and why."""

    path: str
    reason: str


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------
# classifying leaves by probing
# ---------------------------------------------------------------------------------------------
def _is_leaf(m: nn.Module) -> bool:
    return next(iter(m.children()), None) is None


def _probe_input(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(8, 8, generator=g, dtype=torch.float64) * 2.0).to(dtype)


@torch.no_grad()
def _probe_elementwise(m: nn.Module) -> str:
    """ACTIVATION, PASS or OTHER for a parameter-free leaf."""
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        x = _probe_input(dtype)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y = m(x.clone())
                y_again = m(x.clone())
                y_col = m(x.reshape(64, 1).clone())
                y_flat = m(x.reshape(64).clone())
        except Exception:
            continue  # e.g. does not take float64: try float32
        if not all(isinstance(t, torch.Tensor) for t in (y, y_again, y_col, y_flat)):
            return OTHER
        if y.shape != x.shape or y_col.shape != (64, 1) or y_flat.shape != (64,):
            return OTHER
        if not (torch.equal(y, y_again) and torch.allclose(y_col.reshape(8, 8), y, atol=tol, rtol=0)
                and torch.allclose(y_flat.reshape(8, 8), y, atol=tol, rtol=0)):
            return OTHER
        return PASS if torch.equal(y, x) else ACTIVATION
    return OTHER


@torch.no_grad()
def _probe_linear(m: nn.Module) -> str:
    """LINEAR, TRANSPOSED or OTHER for a leaf with a 2-D ``weight``."""
    w, b = getattr(m, "weight", None), getattr(m, "bias", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.is_meta or not w.is_floating_point():
        return OTHER
    if b is not None and (not isinstance(b, torch.Tensor) or b.dim() != 1):
        return OTHER
    if dict(m.named_parameters()).keys() - {"weight", "bias"} or next(iter(m.buffers()), None) is not None:
        return OTHER
    for kind, k, n in ((LINEAR, w.shape[1], w.shape[0]), (TRANSPOSED, w.shape[0], w.shape[1])):
        if b is not None and b.shape[0] != n:
            continue
        g = torch.Generator().manual_seed(1)
        x = torch.randn(3, k, generator=g).to(w.device, w.dtype)
        try:
            y = m(x)
        except Exception:
            continue
        ref = F.linear(x, w if kind == LINEAR else w.t(), b)
        if isinstance(y, torch.Tensor) and y.shape == ref.shape and torch.allclose(y, ref, rtol=1e-4, atol=1e-5):
            return kind
    return OTHER


class LayerKinds:
    """Memoised probe results (by module identity) for one search."""

    def __init__(self) -> None:
        self._kinds: Dict[int, str] = {}

    def kind(self, m: nn.Module) -> str:
        key = id(m)
        if key not in self._kinds:
            self._kinds[key] = self._classify(m)
        return self._kinds[key]

    @staticmethod
    def _classify(m: nn.Module) -> str:
        if isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward:
            return LINEAR
        if isinstance(m, nn.modules.dropout._DropoutNd) or type(m) is nn.Identity:
            return PASS
        if not _is_leaf(m):
            return OTHER
        if next(iter(m.parameters()), None) is None and next(iter(m.buffers()), None) is None:
            return _probe_elementwise(m)
        return _probe_linear(m)


# ---------------------------------------------------------------------------------------------
# tracing
# ---------------------------------------------------------------------------------------------
class _LeafTracer(fx.Tracer):
    """Keeps every childless module (and torch.nn's own modules) opaque: one call_module node each."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _is_leaf(m) or super().is_leaf_module(m, module_qualified_name)


def trace(m: nn.Module) -> Union[fx.Graph, str]:
    """The fx graph of ``m.forward`` (leaves opaque), or a one-line reason why it cannot be traced."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _LeafTracer().trace(m)
    except Exception as e:  # fx raises many kinds (TraceError, TypeError, ValueError from codegen...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{type(m).__name__}.forward cannot be traced with torch.fx ({type(e).__name__}: {msg[:120]})"


_DROPOUT_FUNCS = {F.dropout, torch.dropout, F.alpha_dropout, F.feature_alpha_dropout}
_MUL = {operator.mul, torch.mul, operator.imul}


def _describe(owner: nn.Module, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(owner.get_submodule(node.target)).__name__})"
    if node.op == "output":
        return "the module's output"
    if node.op == "placeholder":
        return f"the module's input {node.target!r}"
    name = getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {name}"


class _Graph:
    """A traced module with helpers to read its layer nodes."""

    def __init__(self, owner: nn.Module, graph: fx.Graph, kinds: LayerKinds) -> None:
        self.owner, self.graph, self.kinds = owner, graph, kinds

    def kind(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return self.kinds.kind(self.owner.get_submodule(node.target))
        if node.op == "call_function" and node.target in _DROPOUT_FUNCS:
            return PASS
        return OTHER

    def module(self, node: fx.Node) -> nn.Module:
        return self.owner.get_submodule(node.target)

    def follow(self, node: fx.Node) -> Tuple[Optional[fx.Node], fx.Node, str]:
        """Walk ``node``'s single-user chain through pass-throughs: (consumer, last value, problem)."""
        cur = node
        while True:
            users = list(cur.users)
            if len(users) != 1:
                return None, cur, f"its output has {len(users)} users"
            nxt = users[0]
            args = [a for a in nxt.args if isinstance(a, fx.Node)]
            if self.kind(nxt) == PASS and nxt.args and nxt.args[0] is cur:
                cur = nxt
                continue
            if args.count(cur) != 1 and nxt.op != "output":
                return None, cur, f"its output is used twice by {_describe(self.owner, nxt)}"
            return nxt, cur, ""

    def linear_fed_by(self, consumer: Optional[fx.Node], value: fx.Node) -> bool:
        return (consumer is not None and consumer.op == "call_module" and self.kind(consumer) in (LINEAR, TRANSPOSED)
                and len(consumer.args) == 1 and consumer.args[0] is value and not consumer.kwargs)


def _features(m: nn.Module, kind: str) -> Tuple[int, int]:
    """(in_features, out_features) of a probed linear."""
    w = m.weight
    return (int(w.shape[0]), int(w.shape[1])) if kind == TRANSPOSED else (int(w.shape[1]), int(w.shape[0]))


# ---------------------------------------------------------------------------------------------
# the search
# ---------------------------------------------------------------------------------------------
def activation_sites(root: nn.Module, kinds: LayerKinds) -> Iterator[Tuple[str, nn.Module, str]]:
    """(parent path, parent, child name) for every activation child in the tree (shared ones once per path)."""
    for path, parent in root.named_modules(remove_duplicate=False):
        for name, child in parent.named_children():
            if kinds.kind(child) == ACTIVATION:
                yield path, parent, name


def find_mlps(root: nn.Module) -> Tuple[List[MLPSite], List[Skipped]]:
    """Every ``Linear -> activation -> (dropout) -> Linear`` MLP under ``root``, and the activations
    that are not in one (with the reason).  See the module docstring for how they are found."""
    kinds = LayerKinds()
    modules = dict(root.named_modules(remove_duplicate=False))
    traces: Dict[str, Union[_Graph, str]] = {}

    def traced(path: str) -> Union[_Graph, str]:
        if path not in traces:
            g = trace(modules[path])
            traces[path] = g if isinstance(g, str) else _Graph(modules[path], g, kinds)
        return traces[path]

    found: List[MLPSite] = []
    skipped: List[Skipped] = []
    for ppath, parent, aname in list(activation_sites(root, kinds)):
        apath = _join(ppath, aname)
        g = traced(ppath)
        if isinstance(g, str):
            skipped.append(Skipped(apath, g))
            continue
        site = _site_in(g, ppath, aname, parent, modules, traced)
        (found if isinstance(site, MLPSite) else skipped).append(site if isinstance(site, MLPSite) else Skipped(apath, site))
    return found, skipped


def _site_in(g: _Graph, ppath: str, aname: str, parent: nn.Module, modules: Dict[str, nn.Module], traced) -> Union[MLPSite, str]:
    calls = [n for n in g.graph.nodes if n.op == "call_module" and n.target == aname]
    if not calls:
        return f"not called in {type(parent).__name__}.forward"
    if len(calls) > 1:
        return f"called {len(calls)} times in {type(parent).__name__}.forward (one module for several places)"
    act = calls[0]
    if len(act.args) != 1 or act.kwargs or not isinstance(act.args[0], fx.Node):
        return "called with more than one argument"
    src = act.args[0]
    consumer, value, problem = g.follow(act)
    if problem:
        return problem
    if consumer.op == "call_function" and consumer.target in _MUL or consumer.op == "call_method" and consumer.target == "mul":
        return "gated MLP (the activation's output is multiplied by another branch, as in SwiGLU/GeGLU): not convertible"
    if g.kind(src) not in (LINEAR, TRANSPOSED):
        return f"its input comes from {_describe(g.owner, src)}, not from a linear layer"
    if len(src.users) != 1:
        return f"the linear before it ({src.target}) has {len(src.users)} users"
    fc1_kind = g.kind(src)
    d_in, hidden = _features(g.module(src), fc1_kind)
    base = dict(in_features=d_in, hidden_features=hidden, fc1=_join(ppath, src.target), act=_join(ppath, aname),
                fc1_kind=fc1_kind)
    if g.linear_fed_by(consumer, value):
        fc2_kind = g.kind(consumer)
        k2, d_out = _features(g.module(consumer), fc2_kind)
        if k2 != hidden:
            return f"the next linear ({consumer.target}) takes {k2} features, fc1 gives {hidden}"
        return MLPSite(name=ppath, fc2=_join(ppath, consumer.target), fc2_kind=fc2_kind, out_features=d_out,
                       found_by="trace", **base)
    if consumer.op != "output":
        return f"its output feeds {_describe(g.owner, consumer)}, not a linear layer"
    return _second_half(ppath, hidden, modules, traced, base)


def _second_half(ppath: str, hidden: int, modules: Dict[str, nn.Module], traced, base: dict) -> Union[MLPSite, str]:
    """The split case: the parent returns act(fc1(x)); find the sibling that applies fc2."""
    if not ppath:
        return "its output is the model's output, not a linear layer"
    gpath, _, pname = ppath.rpartition(".")
    names = [n for n, _ in modules[gpath].named_children()]
    for sib in names[names.index(pname) + 1:]:
        spath = _join(gpath, sib)
        sg = traced(spath)
        if isinstance(sg, str):
            continue
        inputs = [n for n in sg.graph.nodes if n.op == "placeholder"]
        if not inputs:
            continue
        consumer, value, problem = sg.follow(inputs[0])
        if problem or not sg.linear_fed_by(consumer, value):
            continue
        fc2_kind = sg.kind(consumer)
        k2, d_out = _features(sg.module(consumer), fc2_kind)
        if k2 != hidden:
            return f"its module returns it and the next sibling's linear ({_join(spath, consumer.target)}) takes {k2} features, not {hidden}"
        return MLPSite(name=gpath, fc2=_join(spath, consumer.target), fc2_kind=fc2_kind, out_features=d_out,
                       found_by="sibling order", **base)
    return f"{type(modules[ppath]).__name__} returns it and no later sibling starts with a linear layer"
