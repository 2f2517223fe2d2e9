"""``fuse_rational_linear``: rewrite ``group_rational -> [identity ops] -> linear`` into one op.

The pass works on Dynamo's pre-grad, torch-level FX graphs (what a ``torch.compile`` backend and
inductor's ``pre_grad_custom_pass`` receive), and also on ``torch.fx.symbolic_trace`` graphs.  It
finds::

    y = fusedkat::group_rational(x, num, den, form)
    y = dropout(y, p, training)        # only when p == 0 or not training   } any number,
    y = y.view(...) / reshape / ...    # only ops that keep the last dim    } any order
    out = linear(y, weight, bias)      # F.linear / torch._C._nn.linear / nn.Linear module

and replaces it by::

    x' = x.view(...) / ...             # the same shape ops, replayed on x
    out = fusedkat::rational_linear(x', num, den, weight, bias, form)

Why this is exact: F acts channel-wise on the last dim, so it commutes with any op that moves
whole rows without touching the last dim (a reshape whose last dim keeps its size keeps every
element's channel, because channel = flat index mod K), and a dropout with p == 0 or in eval is the
identity.  The pair is left alone when any intermediate value has another user (it must then be
materialised anyway), when a dropout is live, or when a shape op could move channels.

``nn.Identity`` never shows in a Dynamo graph (it is traced through); as a ``call_module`` node in a
symbolic_trace graph it is treated as an identity op too.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F

# Counter key under torch._dynamo.utils.counters (read by tests and users to see what fused).
COUNTER_GROUP = "fusedkat"
COUNTER_KEY = "rational_linear_fused"

_GR_TARGETS: set[Any] = set()
_RL_OP: Any = None


def _op_targets() -> tuple[set[Any], Any]:
    """The call targets that mean ``group_rational`` (resolved lazily: the ops register on import)."""
    global _RL_OP
    if not _GR_TARGETS:
        import fusedkat.ops as fops
        from fusedkat.ops import custom_ops

        packet = torch.ops.fusedkat.group_rational
        _GR_TARGETS.update({packet, packet.default, custom_ops.group_rational_op, fops.group_rational})
        _RL_OP = torch.ops.fusedkat.rational_linear.default
    return _GR_TARGETS, _RL_OP


# ---------------------------------------------------------------------------------------------
# reading nodes
# ---------------------------------------------------------------------------------------------
def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _module(gm: Optional[torch.nn.Module], node: fx.Node) -> Optional[torch.nn.Module]:
    if gm is None or node.op != "call_module":
        return None
    try:
        return gm.get_submodule(node.target)
    except AttributeError:
        return None


def _val(node: Any) -> Optional[torch.Tensor]:
    """The example value Dynamo (``example_value``) or make_fx/ShapeProp (``val``/``tensor_meta``) left."""
    if not isinstance(node, fx.Node):
        return None
    for key in ("example_value", "val"):
        v = node.meta.get(key)
        if isinstance(v, torch.Tensor):
            return v
    tm = node.meta.get("tensor_meta")
    return tm if tm is not None and hasattr(tm, "shape") else None


def _is_identity_dropout(gm: Optional[torch.nn.Module], node: fx.Node) -> Optional[bool]:
    """True: a dropout that is the identity; False: a live dropout; None: not a dropout."""
    mod = _module(gm, node)
    if mod is not None:
        if isinstance(mod, torch.nn.Identity):
            return True
        if isinstance(mod, torch.nn.Dropout):
            return mod.p == 0 or not mod.training
        return None
    if node.op != "call_function":
        return None
    if node.target is F.dropout:
        p, training = _arg(node, 1, "p", 0.5), _arg(node, 2, "training", True)
    elif node.target is torch.dropout:
        p, training = _arg(node, 1, "p", None), _arg(node, 2, "train", None)
    else:
        return None
    # Both must be Python constants: a symbolic p or training flag is not provably off.
    if isinstance(p, (int, float)) and p == 0:
        return True
    if training is False:
        return True
    return False


_KEEP_LAST_METHODS = {"view", "reshape", "flatten", "contiguous", "clone", "unsqueeze", "squeeze",
                      "transpose", "permute", "unflatten"}
_KEEP_LAST_FUNCTIONS = {torch.reshape, torch.flatten, torch.clone, torch.unsqueeze, torch.squeeze,
                        torch.transpose, torch.permute, torch.unflatten}


def _keeps_last_dim(node: fx.Node, src: fx.Node) -> bool:
    """Whether the shape op ``node`` (reading ``src``) maps every element's channel to itself."""
    if node.op == "call_method":
        name = node.target
        if name not in _KEEP_LAST_METHODS:
            return False
    elif node.op == "call_function":
        if node.target not in _KEEP_LAST_FUNCTIONS:
            return False
        name = node.target.__name__
    else:
        return False
    if not node.args or node.args[0] is not src:
        return False  # src must be the tensor being reshaped, not e.g. a shape argument
    if name in ("contiguous", "clone"):
        return True
    vin, vout = _val(src), _val(node)
    if vin is None or vout is None or len(vin.shape) == 0 or len(vout.shape) == 0:
        return False  # without shapes we cannot prove the last dim is kept
    ndim = len(vin.shape)
    if name in ("transpose", "permute"):
        # A permutation keeps the channels only if the last dim stays last.
        if name == "transpose":
            d0, d1 = _arg(node, 1, "dim0", None), _arg(node, 2, "dim1", None)
            if not (isinstance(d0, int) and isinstance(d1, int)):
                return False
            return ndim - 1 not in (d0 % ndim, d1 % ndim) or d0 % ndim == d1 % ndim
        dims = node.args[1:] if node.op == "call_method" else (_arg(node, 1, "dims", None),)
        if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
            dims = tuple(dims[0])
        return bool(dims) and isinstance(dims[-1], int) and dims[-1] % ndim == ndim - 1
    # view-like ops keep row-major element order: same last-dim size <=> same channel per element.
    return _same_size(vin.shape[-1], vout.shape[-1])


def _same_size(a: Any, b: Any) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    try:  # symbolic sizes (dynamic shapes): only a statically provable equality counts
        from torch.fx.experimental.symbolic_shapes import statically_known_true

        return bool(statically_known_true(a == b))
    except Exception:
        return False


def _linear_parts(gm: Optional[torch.nn.Module], node: fx.Node) -> Optional[tuple[Any, Any, Any]]:
    """``(input, weight, bias)`` when ``node`` is a linear layer, else None.

    For an ``nn.Linear`` ``call_module`` node weight and bias are returned as the attribute paths
    (strings), to be turned into ``get_attr`` nodes.
    """
    mod = _module(gm, node)
    if mod is not None:
        if type(mod) is torch.nn.Linear and len(node.args) == 1 and not node.kwargs:
            return (node.args[0], f"{node.target}.weight", f"{node.target}.bias" if mod.bias is not None else None)
        return None
    if node.op == "call_function" and node.target in (F.linear, torch._C._nn.linear):
        return (_arg(node, 0, "input", None), _arg(node, 1, "weight", None), _arg(node, 2, "bias", None))
    return None


# ---------------------------------------------------------------------------------------------
# the pass
# ---------------------------------------------------------------------------------------------
def _chain_to_linear(gm: Optional[torch.nn.Module], gr: fx.Node) -> Optional[tuple[list[fx.Node], list[fx.Node], fx.Node]]:
    """Follow ``gr``'s single-user chain; return (all intermediates, the shape ops, the linear)."""
    chain: list[fx.Node] = []
    shape_ops: list[fx.Node] = []
    cur = gr
    while True:
        if len(cur.users) != 1:
            return None
        (nxt,) = cur.users
        # The value must be used exactly once by nxt (F.linear(y, y) style reuse is not a chain).
        uses = sum(1 for a in _flat(nxt) if a is cur)
        if uses != 1:
            return None
        parts = _linear_parts(gm, nxt)
        if parts is not None:
            return (chain, shape_ops, nxt) if parts[0] is cur else None
        drop = _is_identity_dropout(gm, nxt)
        if drop is True:
            if nxt.op == "call_function" and nxt.args and nxt.args[0] is not cur:
                return None
            chain.append(nxt)
        elif drop is False:
            return None  # a live dropout: F(x) must be materialised for the mask
        elif _keeps_last_dim(nxt, cur):
            chain.append(nxt)
            shape_ops.append(nxt)
        else:
            return None
        cur = nxt


def _flat(node: fx.Node) -> list[Any]:
    out: list[Any] = []
    fx.node.map_aggregate((node.args, node.kwargs), lambda a: out.append(a) or a)
    return out


def _fuse_graph(graph: fx.Graph, owner: Optional[torch.nn.Module]) -> int:
    gr_targets, rl_op = _op_targets()
    fused = 0
    for gr in list(graph.nodes):
        if gr.op != "call_function" or gr.target not in gr_targets:
            continue
        found = _chain_to_linear(owner, gr)
        if found is None:
            continue
        chain, shape_ops, lin = found
        x = _arg(gr, 0, "x", None)
        num = _arg(gr, 1, "numerator", None)
        den = _arg(gr, 2, "denominator", None)
        form = _arg(gr, 3, "form", "A")
        _, weight, bias = _linear_parts(owner, lin)
        with graph.inserting_before(lin):
            if isinstance(weight, str):  # nn.Linear call_module: read its parameters
                weight = graph.get_attr(weight)
                bias = graph.get_attr(bias) if bias is not None else None
            cur = x
            for op in shape_ops:  # replay the channel-preserving shape ops on x
                new = graph.node_copy(op, lambda n, src=op.args[0], prev=cur: prev if n is src else n)
                new.meta = dict(op.meta)
                cur = new
            new_lin = graph.call_function(rl_op, (cur, num, den, weight, bias, form))
            new_lin.meta = dict(lin.meta)
        lin.replace_all_uses_with(new_lin)
        for dead in [lin, *reversed(chain), gr]:
            graph.erase_node(dead)
        fused += 1
    if fused:
        try:
            from torch._dynamo.utils import counters

            counters[COUNTER_GROUP][COUNTER_KEY] += fused
        except ImportError:  # pragma: no cover - dynamo is part of every supported torch
            pass
    return fused


def fuse_rational_linear(gm: fx.GraphModule) -> int:
    """Fuse every ``group_rational -> [identity dropout / last-dim-keeping views] -> linear``.

    Args:
        gm: a pre-grad (torch-level) FX graph module, as Dynamo hands it to a backend, or a
            ``torch.fx.symbolic_trace`` result.

    Returns:
        The number of pairs rewritten into ``fusedkat::rational_linear``.  The graph is linted and
        ``gm`` recompiled when anything changed.  Not fused: a rational whose output (or an
        intermediate view of it) has another user, a live dropout (p > 0 while training), a view
        that changes or moves the last dim.
    """
    if not isinstance(gm, fx.GraphModule):
        raise TypeError(f"fuse_rational_linear expects a torch.fx.GraphModule, got {type(gm).__name__}")
    return _fuse_nested(gm, gm.graph)


def _fuse_nested(gm: torch.nn.Module, top: fx.Graph) -> int:
    """Fuse in ``top`` and in every subgraph module under ``gm`` (the bodies of higher-order ops such
    as activation checkpointing's ``tag_activation_checkpoint``, which Dynamo stores as submodules)."""
    total = 0
    for _, mod in gm.named_modules():
        graph = top if mod is gm else getattr(mod, "graph", None)
        if not isinstance(mod, fx.GraphModule) and mod is not gm or graph is None:
            continue
        n = _fuse_graph(graph, mod)
        if n:
            graph.lint()
            if isinstance(mod, fx.GraphModule):
                mod.recompile()
        total += n
    return total


# ---------------------------------------------------------------------------------------------
# observing what the pass produced (compile_passes.capture_graphs)
# ---------------------------------------------------------------------------------------------
_observers: list[Callable[[fx.GraphModule, int], None]] = []


def notify_observers(gm: fx.GraphModule, fused: int) -> None:
    """Hand the graph, after the pass, to every :func:`compile_passes.capture_graphs` in effect."""
    for fn in list(_observers):
        fn(gm, fused)
