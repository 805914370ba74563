"""Fuse or not? A small planner that decides, per block shape and batch, between the fused kernel and the
unfused layers (this study's version of the paper's "tensor machine" planning; the rule is ours).

Two sources, in this order:

1. **measured**: ``data/block_bench_<gpu>.csv`` has the shape at this batch (or at the nearest recorded
   batch, on a log scale): pick whichever of the fused kernel and the best unfused implementation (eager,
   torch.compile default / max-autotune, our unfused sequence) was faster.
2. **roofline model**, when the shape was never measured: the fused kernel is one kernel whose ideal time is
   ``max(W_exec / P, Q_fused / B)``, where W_exec is the work the kernel really executes (the grouped conv
   runs on block-diagonal 16x16 tensor-core slices, 2x its useful FLOPs; the MBConv kernel also recomputes the
   expansion of halo rows); the unfused path's ideal time is the sum of its layers' floors
   ``sum_l max(W_l / P, Q_l / B)`` (the waterline). Ideal kernels always favour fusion, real ones do not, so
   when the GPU has any measured block of the same type the model is **calibrated**: each path's ideal time
   is divided by the efficiency (ideal / measured) that path reached on the nearest measured shape (closest
   C and H*W on a log scale, nearest batch). Without any measurement the uncalibrated model is used and
   says so in the ``source`` column.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import pandas as pd

from .params import ParameterError, check_choice, check_choices

UNFUSED_IMPLS = ("eager", "compile-default", "compile-max-autotune", "unfused-triton")
#: Output pixels per tile the model assumes for the MBConv kernel's halo recompute.
MBCONV_TILE_PIXELS = 128


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def load_block_bench(gpu: str) -> pd.DataFrame | None:
    """The recorded block benchmark of ``gpu`` (latest plain timing per key), or None if there is none."""
    from .bench_blocks import load_results
    from .records import DataError

    try:
        return load_results(gpu)
    except DataError:
        return None


def executed_flop(block: str, channels: int, height: int, width: int, expansion: int, batch: int) -> float:
    """FLOP the fused kernel really executes (useful FLOP plus the kernel's redundancy), see module doc."""
    px = batch * height * width
    c, hid = channels, expansion * channels
    if block == "convfirst":
        gconv, expand, project = 2 * c * 8 * 9, 2 * c * hid, 2 * hid * c
        return px * (2 * gconv + expand + project)
    if block == "mbconv":
        gconv, expand, project = 2 * hid * 8 * 9, 2 * c * hid, 2 * hid * c
        halo = max(16, _next_pow2(2 * width + 2))
        recompute = (MBCONV_TILE_PIXELS + halo) / MBCONV_TILE_PIXELS
        return px * (2 * gconv + recompute * expand + project)
    raise ParameterError(f"block={block!r} is not allowed; choose one of ['convfirst', 'mbconv']")


def roofline_estimate(block: str, channels: int, height: int, width: int, expansion: int, batch: int,
                      peak_flops: float, bandwidth: float) -> dict:
    """Model times (ms) of the fused kernel and of the unfused layers (waterline), from convfirst.counting."""
    import torch

    from .blocks import make_block
    from .counting import count_layers

    with torch.device("meta"):
        module = make_block(block, channels, expansion=expansion).eval()
    layers = count_layers(module, input_shape=(batch, channels, height, width), fused_types=(type(module),))
    layer_floor = [max(f / peak_flops, q / bandwidth) for f, q in zip(layers["flop"], layers["bytes"]) if f or q]
    unfused_ms = 1e3 * sum(layer_floor)
    w_exec = executed_flop(block, channels, height, width, expansion, batch)
    fused_ms = 1e3 * max(w_exec / peak_flops, float(layers["bytes_fused"].sum()) / bandwidth)
    return {"fused_ms": fused_ms, "unfused_ms": unfused_ms, "unfused_impl": "waterline"}


def _nearest(options, value):
    return min(options, key=lambda o: abs(math.log(o) - math.log(value)))


def calibrated_estimate(bench: pd.DataFrame, block: str, channels: int, height: int, width: int, expansion: int,
                        batch: int, peak_flops: float, bandwidth: float, dtype: str = "bfloat16",
                        alternatives: Sequence[str] = UNFUSED_IMPLS) -> dict | None:
    """Roofline estimate scaled by the efficiencies measured on the nearest measured shape of ``block`` (one
    with both a fused and an unfused measurement)."""
    sel = bench[(bench["block"] == block) & (bench["dtype"] == dtype) & (bench["E"] == expansion)]
    shapes = sorted({(int(r.C), int(r.H), int(r.W)) for r in sel[sel["impl"] == "fused"].itertuples()})
    both = {s: m for s in shapes
            if (m := measured_estimate(bench, block, *s, expansion, batch, dtype, alternatives)) is not None}
    if not both:
        return None
    ref = min(both, key=lambda s: (math.log(s[0] / channels)) ** 2 + (math.log(s[1] * s[2] / (height * width))) ** 2)
    measured = both[ref]
    ideal_ref = roofline_estimate(block, *ref, expansion, measured["measured_batch"], peak_flops, bandwidth)
    eff_fused = ideal_ref["fused_ms"] / measured["fused_ms"]
    eff_unfused = ideal_ref["unfused_ms"] / measured["unfused_ms"]
    ideal = roofline_estimate(block, channels, height, width, expansion, batch, peak_flops, bandwidth)
    return {"fused_ms": ideal["fused_ms"] / eff_fused, "unfused_ms": ideal["unfused_ms"] / eff_unfused,
            "unfused_impl": measured["unfused_impl"], "measured_batch": measured["measured_batch"],
            "calibrated_on": f"{block} {ref[0]}@{ref[1]}x{ref[2]}, batch {measured['measured_batch']}"}


def _shape_rows(bench: pd.DataFrame, block: str, channels: int, height: int, width: int, expansion: int,
                dtype: str) -> pd.DataFrame:
    """The recorded rows of one block shape and dtype (every batch and implementation)."""
    return bench[(bench["block"] == block) & (bench["C"] == channels) & (bench["H"] == height)
                 & (bench["W"] == width) & (bench["E"] == expansion) & (bench["dtype"] == dtype)]


def measured_estimate(bench: pd.DataFrame, block: str, channels: int, height: int, width: int, expansion: int,
                      batch: int, dtype: str = "bfloat16", alternatives: Sequence[str] = UNFUSED_IMPLS) -> dict | None:
    """Measured fused and best-unfused times at ``batch`` (or the nearest recorded batch), or None.

    ``alternatives``: the unfused implementations the fused kernel competes with (those a model would
    really run instead: e.g. eager and our unfused sequence for an uncompiled model)."""
    sel = _shape_rows(bench, block, channels, height, width, expansion, dtype)
    if sel.empty or "fused" not in set(sel["impl"]):
        return None
    nearest = _nearest(sorted(set(sel.loc[sel["impl"] == "fused", "batch"])), batch)
    at = sel[sel["batch"] == nearest].groupby("impl")["ms"].median()
    unfused = at[[i for i in alternatives if i in at.index]]
    if unfused.empty:
        return None
    return {"fused_ms": float(at["fused"]), "unfused_ms": float(unfused.min()), "unfused_impl": unfused.idxmin(),
            "measured_batch": int(nearest)}


def measured_fused_ms(bench: pd.DataFrame, block: str, channels: int, height: int, width: int, expansion: int,
                      batch: int, dtype: str = "bfloat16") -> float | None:
    """The fused kernel's recorded time at exactly this shape and batch, or None."""
    sel = _shape_rows(bench, block, channels, height, width, expansion, dtype)
    sel = sel[(sel["batch"] == batch) & (sel["impl"] == "fused")]
    return float(sel["ms"].median()) if len(sel) else None


def plan(shapes: Iterable, batches: Sequence[int], gpu: str = "h100", source: str = "auto",
         dtype: str = "bfloat16", alternatives: Sequence[str] = UNFUSED_IMPLS) -> pd.DataFrame:
    """The decision table: one row per (shape, batch) with the fused and unfused times and the choice.

    ``shapes``: (block, C, H, W, E) tuples, dicts, or a :func:`convfirst.models.family_block_shapes` frame
    (rows of other block types are skipped). ``source``: 'auto' (measured where recorded, else the roofline
    model), 'measured' (skip shapes without data) or 'model'. ``alternatives``: the unfused implementations
    the fused kernel competes with (default: all recorded ones); ``use`` names the winner.
    """
    check_choices("alternatives", list(alternatives), UNFUSED_IMPLS)
    from .ceilings import bandwidth_bytes_per_s, load_ceilings, peak_flops

    check_choice("source", source, ("auto", "measured", "model"))
    if isinstance(shapes, pd.DataFrame):
        shapes = shapes.to_dict("records")
    bench = load_block_bench(gpu) if source != "model" else None
    ceil = load_ceilings(gpu)
    p, b = peak_flops(ceil, dtype), bandwidth_bytes_per_s(ceil)
    rows = []
    for s in shapes:
        blk, c, h, w, e = ((s["block"], s["C"], s["H"], s.get("W", s["H"]), s.get("E", 4)) if isinstance(s, dict)
                           else tuple(s))
        if blk not in ("convfirst", "mbconv"):
            continue
        for batch in batches:
            est = (measured_estimate(bench, blk, c, h, w, e, batch, dtype, alternatives)
                   if bench is not None else None)
            src = "measured"
            if est is None:
                if source == "measured":
                    continue
                est = (calibrated_estimate(bench, blk, c, h, w, e, batch, p, b, dtype, alternatives)
                       if bench is not None else None)
                src = f"roofline model calibrated on {est['calibrated_on']}" if est else "roofline model (ideal)"
                if est is None:
                    est = roofline_estimate(blk, c, h, w, e, batch, p, b)
                fused = measured_fused_ms(bench, blk, c, h, w, e, batch, dtype) if bench is not None else None
                if fused is not None:  # the fused kernel was timed here, the unfused paths were not
                    est = dict(est, fused_ms=fused)
                    src = f"fused measured; unfused: {src}"
            rows.append({"block": blk, "C": c, "H": h, "W": w, "E": e, "batch": batch, "source": src,
                         "measured_batch": est.get("measured_batch"), "fused_ms": est["fused_ms"],
                         "unfused_ms": est["unfused_ms"], "best_unfused": est["unfused_impl"],
                         "speedup": est["unfused_ms"] / est["fused_ms"],
                         "choice": "fused" if est["fused_ms"] <= est["unfused_ms"] else "unfused",
                         "use": "fused" if est["fused_ms"] <= est["unfused_ms"] else est["unfused_impl"]})
    return pd.DataFrame(rows)


def block_planner(gpu: str = "h100", batch: int = 256, source: str = "auto", dtype: str = "bfloat16",
                  alternatives: Sequence[str] = UNFUSED_IMPLS) -> Callable:
    """A ``planner(block, input_shape) -> str`` for :func:`convfirst.kernels.fuse`: the implementation to use
    for this block, ``"fused"`` or the fastest of ``alternatives`` (``"unfused-triton"`` makes ``fuse``
    install our unfused kernel sequence; any other name keeps the block's PyTorch layers).

    Pass the alternatives the model will really run: ``("eager", "unfused-triton")`` for an uncompiled model,
    ``("compile-default", "unfused-triton")`` for one that ``torch.compile`` compiles afterwards.
    ``input_shape`` is the block's input (N, C, H, W) as recorded by ``fuse(..., input_size=...)``; without
    it the block is fused.
    """
    cache: dict = {}

    def decide(block, input_shape) -> str:
        if input_shape is None:
            return "fused"
        _, c, h, w = input_shape
        key = (block.block_type, c, h, w, block.expansion)
        if key not in cache:
            table = plan([key], [batch], gpu, source, dtype, alternatives)
            cache[key] = "fused" if table.empty else table.iloc[0]["use"]
        return cache[key]

    return decide
