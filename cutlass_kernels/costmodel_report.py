"""Validation and prediction tables of the cycle model, and the report the CLI prints.

``python -m cutlass_kernels.costmodel`` (see :mod:`cutlass_kernels.costmodel`) calls
:func:`report` and prints :func:`format_report`; its last two lines are the issues' summary lines.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from . import costmodel_kernels as km
from .costmodel import (WS_DGRAD_NAME, WS_DGRAD_PP_NAME, KAT_SHAPES, OLD_DGRAD, OLD_FWD, OLD_WGRAD, SassInputs, dgrad_epilogue_slots, fit,
                        fused_bwd_us, fused_fwd_us, model_of, old_kernels, ws_design)
from .costmodel_data import PROFILE_SHAPE, Measurement, load, lookup
from .costmodel_hw import H100, GpuSpec


FWD_KEYS = ("cublas_fwd", "elementwise_fwd", "old_fused_fwd")
FITTED = {("cublas_fwd", ""), ("elementwise_fwd", "group_rational_forward"), ("old_fused_fwd", "")}


def validate(meas: list[Measurement], f: km.Fit, inp: SassInputs) -> list[dict]:
    """One row per measurement: predicted, measured, error, role (fit / held-out / bound)."""
    rows = []
    for x in meas:
        pred = model_of(x.what, x.shape, H100, f, inp)
        if pred is None:
            continue
        if x.kind == "wall":
            role = "bound"
        else:
            role = "fit" if any(x.what == w and s in x.source for w, s in FITTED) else "held-out"
        rows.append({"what": x.what, "shape": list(x.shape), "run": x.run, "kind": x.kind, "role": role,
                     "direction": "fwd" if x.what in FWD_KEYS or x.what == "unfused_fwd" else "bwd",
                     "measured_us": round(x.us, 2), "predicted_us": round(pred, 2),
                     "error": round(pred / x.us - 1.0, 4), "source": x.source})
    return rows


def summary(rows: list[dict]) -> dict:
    """Max |error| and counts of the GPU-time rows per direction; whether the wall bounds hold."""
    out = {}
    for d in ("fwd", "bwd"):
        gpu = [r for r in rows if r["kind"] == "gpu" and r["direction"] == d]
        held = [r for r in gpu if r["role"] == "held-out"]
        out[d] = {"max_error": max(abs(r["error"]) for r in gpu), "n": len(gpu), "n_held_out": len(held),
                  "max_error_held_out": max((abs(r["error"]) for r in held), default=0.0)}
    bounds = [r for r in rows if r["kind"] == "wall"]
    out["wall_bounds"] = {"n": len(bounds), "violations": [r for r in bounds if r["error"] > 0]}
    return out


#: The measurement (costmodel_data key) a prediction-table row can be compared with.
MEASURED_AS = {"cuBLAS F.linear": "cublas_fwd", "unfused pair": "unfused_fwd", "old fused": "old_fused_fwd",
               "linear backward": "linear_bwd", "old fused bwd": "old_fused_bwd"}


def _measured(meas: list[Measurement], variant: str, shape: tuple[int, int, int]) -> str:
    """``"370.6"`` (GPU time, median of runs), ``"<=502.8 wall"``, or ``""``; derived sums (the
    unfused pair, the linear backward) from the same runs' kernels at the profiled shape."""
    what = MEASURED_AS.get(variant)
    if what is None:
        return ""
    parts = {"unfused_fwd": ("elementwise_fwd", "cublas_fwd"), "linear_bwd": ("cublas_dgrad", "cublas_wgrad", "colsum")}
    if what in parts and tuple(shape) == PROFILE_SHAPE:
        def src(p: str) -> str:  # the standalone elementwise forward, not the F recompute
            return "group_rational_forward" if p == "elementwise_fwd" else ""
        vals = [statistics.median(x.us for x in meas if x.what == p and x.kind == "gpu" and src(p) in x.source)
                for p in parts[what]]
        return f"{sum(vals):.1f} (sum)"
    found = lookup(meas, what, shape)
    if found is None:
        return ""
    return f"{found[1]:.1f}" if found[0] == "gpu" else f"<={found[1]:.1f} wall"


def _rows(label: str, shape: tuple[int, int, int], variants: list, ref: float, ratio_key: str,
          meas: Optional[list[Measurement]]) -> list[dict]:
    return [{"shape": label, "mkn": list(shape), "variant": name, "predicted_us": round(us, 1),
             ratio_key: round(us / ref, 3), "measured_us": _measured(meas, name, shape) if meas else "", "source": src}
            for name, us, src in variants]


def forward_table(spec: GpuSpec, f: km.Fit, inp: SassInputs, meas: Optional[list[Measurement]]) -> list[dict]:
    """Per KAT shape: cuBLAS, the unfused pair, the old fused kernel and (sm_90) the new designs.
    ``meas``: the H100 measurements to show next to the predictions (None on other GPUs)."""
    hopper = spec.arch == "sm_90a"
    old_src = f"SASS {OLD_FWD}" if hopper else "sm_90a SASS scaled to the mma.sync 128x128x32 tile"
    rows = []
    for label, shape in KAT_SHAPES:
        cub = km.cublas_gemm_us(spec, f, shape[0], shape[2], shape[1])
        variants = [("cuBLAS F.linear", cub, "roofline at eta_mma"),
                    ("unfused pair", km.unfused_fwd_us(spec, f, shape, inp.ew_fwd), "elementwise (SASS) + cuBLAS"),
                    ("old fused", fused_fwd_us(spec, f, inp, shape, "old"), old_src)]
        for name, resident, mode, share in (("ws", False, "full", 1), ("ws resident", True, "full", 1),
                                            ("ws cluster2", False, "full", 2), ("ws fid", False, "fid", 1),
                                            ("ws nomma", False, "nomma", 1)):
            if hopper and not (resident and shape[1] > 384) and not (share > 1 and shape[1] < 768):
                d = ws_design(inp, resident, mode, share)
                variants.append((name, km.ws_fwd_us(spec, f, d, shape), d.source))
        rows += _rows(label, shape, variants, cub, "vs_cublas", meas)
    return rows


def backward_table(spec: GpuSpec, f: km.Fit, inp: SassInputs, meas: Optional[list[Measurement]]) -> list[dict]:
    """Per KAT shape: a linear layer's backward, the unfused path, the old fused kernels, (sm_90) the new."""
    hopper = spec.arch == "sm_90a"
    heavy, lean = dgrad_epilogue_slots(inp), dgrad_epilogue_slots(inp, lean=True)
    rows = []
    for label, shape in KAT_SHAPES:
        lin = km.linear_bwd_us(spec, f, shape)
        variants = [("linear backward", lin, "cuBLAS dgrad + wgrad + bias column sum"),
                    ("unfused 3-launch", km.unfused_bwd_us(spec, f, shape, inp.ew_bwdf),
                     "cuBLAS x2 + elementwise (SASS) + fold"),
                    ("old fused bwd", fused_bwd_us(spec, f, inp, shape, "old"),
                     f"stored SASS {OLD_DGRAD} + {OLD_WGRAD} (removed)" if hopper else "sm_90a SASS scaled to the 128x128x32 tile")]
        if hopper:
            variants += [("new (issue 16)", km.new_bwd_us(spec, f, heavy, shape),
                          f"design: old dgrad epilogue + F = {heavy:.0f} slots/el; cuBLAS wgrad; fold"),
                         ("new, lean epi", km.new_bwd_us(spec, f, lean, shape),
                          f"design: epilogue as lean as the elementwise kernel, {lean:.0f} slots/el"),
                         # the design's floor: what saving only x costs in memory traffic alone
                         ("new, free epi", km.new_bwd_us(spec, f, 0.0, shape),
                          "floor: an epilogue of 0 slots (reads x, writes dx and [F(x) | 1])")]
            if inp.ws_dgrad_epi is not None:
                built = inp.ws_dgrad_epi
                variants += [("sm90ws (built)", km.new_bwd_us(spec, f, built, shape, pingpong=False),
                              f"SASS {WS_DGRAD_NAME}: {built:.0f} slots/el, cooperative (no overlap)"),
                             ]
            if inp.ws_dgrad_pp_epi is not None:
                pp = inp.ws_dgrad_pp_epi
                variants += [("sm90wspp (built)", km.new_bwd_us(spec, f, pp, shape),
                              f"SASS {WS_DGRAD_PP_NAME}: {pp:.0f} slots/el, ping-pong (overlap phi_ws)")]
        rows += _rows(label, shape, variants, lin, "vs_linear_bwd", meas)
    return rows


def report(spec: GpuSpec, inp: SassInputs, results: Optional[Path] = None) -> dict:
    """Everything the CLI prints: fit, validation rows and summary, both prediction tables.

    The fit, the validation and the cross-fit use the SASS of the kernels as they were measured
    (:data:`~.costmodel.MEASURED_SLOTS`); the prediction tables use ``inp`` (today's kernels)."""
    from .costmodel import MEASURED_SLOTS

    meas = load(results)
    hist = MEASURED_SLOTS
    f = fit(meas, hist)
    rows = validate(meas, f, hist)
    shown = meas if spec is H100 else None  # measurements belong next to H100 predictions only
    fwd, bwd = forward_table(spec, f, inp, shown), backward_table(spec, f, inp, shown)
    worst_fwd = max(fused_fwd_us(spec, f, inp, s) / km.cublas_gemm_us(spec, f, s[0], s[2], s[1]) for _, s in KAT_SHAPES)
    worst_bwd = max(fused_bwd_us(spec, f, inp, s) / km.linear_bwd_us(spec, f, s) for _, s in KAT_SHAPES)
    # sensitivity: phi_old fitted on the old backward instead, forward error then
    d_, w_ = old_kernels(hist, H100)[1:]
    bwd_meas = statistics.median(x.us for x in meas if x.what == "old_fused_bwd" and x.kind == "gpu")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if km.old_bwd_us(H100, f, d_, w_, PROFILE_SHAPE, mid) > bwd_meas else (lo, mid)
    fwd_meas = statistics.median(x.us for x in meas if x.what == "old_fused_fwd" and x.kind == "gpu")
    cross = km.old_fwd_us(H100, f, old_kernels(hist, H100)[0], PROFILE_SHAPE, lo) / fwd_meas - 1
    bwd_at = km.old_bwd_us(H100, f, d_, w_, PROFILE_SHAPE, lo) / bwd_meas - 1
    return {"gpu": spec.name, "clock_ghz": spec.clock_ghz, "sass": inp.source, "fit": asdict(f),
            "assumed": {"eta_issue": km.ETA_ISSUE, "phi_ws": km.PHI_WS, "fill_cycles": km.FILL_CYCLES,
                        "fold_us": km.FOLD_US, "ring_slots": km.RING_SLOTS},
            "validation": rows, "summary": summary(rows), "forward": fwd, "backward": bwd,
            "worst_fused_vs_cublas": worst_fwd, "worst_bwd_vs_linear": worst_bwd,
            "cross_fit": {"phi_old_from_bwd": lo, "fwd_error": cross, "bwd_error": bwd_at}}


def format_report(rep: dict) -> str:
    s, f = rep["summary"], rep["fit"]
    out = [f"cycle model (a model, not a measurement): {rep['gpu']} at {rep['clock_ghz']} GHz; {rep['sass']}",
           f"fitted on H100 KAT-B fc1: eta_mma={f['eta_mma']:.3f} (cuBLAS F.linear), eta_hbm={f['eta_hbm']:.3f} "
           f"(elementwise F), phi_old={f['phi_old']:.3f} (old fused forward); assumed: "
           + ", ".join(f"{k}={v}" for k, v in rep["assumed"].items()),
           "", "validation (H100; gpu = torch.profiler kernel time; wall = benchmark wall-time minimum, an upper bound)",
           f"{'measured':<20} {'M,K,N':<17} {'run':<5} {'kind':<5} {'role':<9} {'meas us':>8} {'model us':>8} {'error':>7}"]
    for r in rep["validation"]:
        out.append(f"{r['what']:<20} {','.join(map(str, r['shape'])):<17} {r['run']:<5} {r['kind']:<5} {r['role']:<9} "
                   f"{r['measured_us']:>8.1f} {r['predicted_us']:>8.1f} {100 * r['error']:>+6.1f}%")
    viol = s["wall_bounds"]["violations"]
    n_bounds = s["wall_bounds"]["n"]
    out.append(f"wall-time bounds: {n_bounds - len(viol)} of {n_bounds} hold (model <= wall min)"
               + "".join(f"; exceeded: {v['what']} {v['shape']}" for v in viol))
    cf = rep["cross_fit"]
    out.append(f"cross-check: phi_old fitted on the old backward instead ({cf['phi_old_from_bwd']:.3f}; backward then "
               f"{100 * cf['bwd_error']:+.1f}%) puts the old forward at {100 * cf['fwd_error']:+.1f}%")
    for title, key, ratio in (("forward", "forward", "vs_cublas"), ("backward", "backward", "vs_linear_bwd")):
        ref = "cuBLAS F.linear" if ratio == "vs_cublas" else "linear backward"
        out += ["", f"{title} predictions ({rep['gpu']}), us; ratio to {ref}",
                f"{'shape':<10} {'variant':<18} {'model us':>8} {'ratio':>6}  {'measured us':<15} source"]
        out += [f"{r['shape']:<10} {r['variant']:<18} {r['predicted_us']:>8.1f} {r[ratio]:>5.2f}x  {r['measured_us']:<15} "
                f"{r['source']}" for r in rep[key]]
    out += ["", f"validated: {100 * s['fwd']['max_error']:.1f}% on {s['fwd']['n']} measurements; "
                f"worst predicted fused/cuBLAS: {rep['worst_fused_vs_cublas']:.2f}x",
            f"backward validated: {100 * s['bwd']['max_error']:.1f}% on {s['bwd']['n']} measurements; "
            f"worst predicted backward/linear backward: {rep['worst_bwd_vs_linear']:.2f}x"]
    return "\n".join(out)


