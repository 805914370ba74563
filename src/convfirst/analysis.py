"""Roofline floors, waterlines and computational efficiency: the study's analysis arithmetic.

Definitions (this study's formalisation of the paper's tools, STUDY.md section 4). P is the measured peak
arithmetic rate (FLOP/s), B the measured DRAM bandwidth (bytes/s), both from :mod:`convfirst.ceilings`.

- **roofline floor** of a kernel that does W FLOP and must move Q bytes: ``f = max(W / P, Q / B)`` seconds;
- **ridge intensity** ``P / B`` (FLOP/byte): kernels above it are compute-bound, below it memory-bound;
- **waterline** of a sequence of kernels: the floors stacked in execution order; the waterline latency is
  ``sum f_k``. Fusing a residual block replaces its kernels' floors by one floor
  ``max(sum W / P, Q_block / B)`` (Q_block = the block's input, weights and output only);
- **ideal latency** ``T* = W / P``; **computational efficiency** ``E = W / (T * P) = T* / T``; the
  **efficiency gap** is ``T / T* = 1 / E``; an **iso-efficiency line** is ``T = W / (E * P)``.

Everything here works on plain numbers and DataFrames (no GPU): a layer table from
:func:`convfirst.counting.count_layers` (columns ``module, flop, bytes, bytes_fused, fused_block, folded``)
and a kernel profile from :mod:`convfirst.profiling` (columns ``index, kernel, time_us, layers, mapping``).
Units are in the names: ``_s`` seconds, ``_us`` microseconds, ``_ms`` milliseconds.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

#: Label the profiler gives kernels launched by a model's own forward code (the root module, path '').
ROOT_MODULE = "(model)"
#: Iso-efficiency levels drawn on efficiency-gap plots.
ISO_EFFICIENCIES = (1.0, 0.5, 0.2, 0.1, 0.05, 0.01)


# ----------------------------------------------------------------------------------------------------------
# Roofline arithmetic
# ----------------------------------------------------------------------------------------------------------

def _check_ceilings(peak_flops: float, bandwidth: float) -> None:
    if not (peak_flops > 0 and bandwidth > 0):
        raise ValueError(f"ceilings must be positive: peak_flops={peak_flops!r} FLOP/s, "
                         f"bandwidth={bandwidth!r} bytes/s")


def roofline_floor_s(flop, nbytes, peak_flops: float, bandwidth: float):
    """``max(W / P, Q / B)`` in seconds, elementwise for arrays (W FLOP, Q bytes, P FLOP/s, B bytes/s)."""
    _check_ceilings(peak_flops, bandwidth)
    return np.maximum(np.asarray(flop, dtype=float) / peak_flops, np.asarray(nbytes, dtype=float) / bandwidth)


def ridge_intensity(peak_flops: float, bandwidth: float) -> float:
    """The operational intensity (FLOP/byte) where the two roofs meet: ``P / B``."""
    _check_ceilings(peak_flops, bandwidth)
    return peak_flops / bandwidth


def attainable_flops(intensity, peak_flops: float, bandwidth: float):
    """The roofline: best FLOP/s a kernel of operational ``intensity`` (FLOP/byte) can reach, ``min(P, I*B)``."""
    _check_ceilings(peak_flops, bandwidth)
    return np.minimum(peak_flops, np.asarray(intensity, dtype=float) * bandwidth)


def bound_by(flop, nbytes, peak_flops: float, bandwidth: float):
    """'compute' where ``W/P >= Q/B`` (a point at the ridge counts as compute-bound), else 'memory'."""
    compute = np.asarray(flop, dtype=float) / peak_flops >= np.asarray(nbytes, dtype=float) / bandwidth
    return np.where(compute, "compute", "memory")


def ideal_time_s(flop, peak_flops: float):
    """``T* = W / P`` in seconds."""
    if not peak_flops > 0:
        raise ValueError(f"peak_flops={peak_flops!r} FLOP/s must be positive")
    return np.asarray(flop, dtype=float) / peak_flops


def computational_efficiency(flop, time_s, peak_flops: float):
    """``E = W / (T * P)`` (a fraction: 0.19 means 19 % of peak)."""
    time_s = np.asarray(time_s, dtype=float)
    if np.any(time_s <= 0):
        raise ValueError("time_s must be positive")
    return ideal_time_s(flop, peak_flops) / time_s


def iso_efficiency_time_s(flop, efficiency: float, peak_flops: float):
    """Latency on the iso-efficiency line ``E``: ``T = W / (E * P)`` seconds."""
    if not 0 < efficiency:
        raise ValueError(f"efficiency={efficiency!r} must be positive (a fraction: 0.5 = 50 %)")
    return ideal_time_s(flop, peak_flops) / efficiency


# ----------------------------------------------------------------------------------------------------------
# Waterlines from a layer table
# ----------------------------------------------------------------------------------------------------------

LAYER_COLUMNS = ("module", "flop", "bytes")


def _check_layers(layers: pd.DataFrame, fused: bool = False) -> None:
    need = list(LAYER_COLUMNS) + (["bytes_fused", "fused_block"] if fused else [])
    missing = [c for c in need if c not in layers.columns]
    if missing:
        raise ValueError(f"layer table is missing column(s) {missing}; it needs {need} "
                         f"(see convfirst.counting.count_layers)")


def waterline(layers: pd.DataFrame, peak_flops: float, bandwidth: float, *, fused: bool = False) -> pd.DataFrame:
    """The waterline of a layer table: one step per kernel of the ideal schedule, in execution order.

    ``fused=False``: every layer (operator) is its own kernel, floor ``max(W/P, Q/B)`` with its unfused bytes.
    ``fused=True``: consecutive layers of one fused block (``fused_block`` non-empty) become one kernel with
    floor ``max(sum W / P, sum bytes_fused / B)``; other layers stay per-layer.
    Folded layers (BatchNorm merged into the conv before it, ``folded=True``) are no kernel and are skipped.

    Returns columns ``step, modules, n_layers, flop, bytes, floor_s, bound, cum_flop, cum_floor_s``.
    """
    _check_layers(layers, fused)
    df = layers
    if "folded" in df.columns:
        df = df[~df["folded"].astype(bool)]
    df = df.reset_index(drop=True)
    if fused:
        block = df["fused_block"].fillna("").astype(str)
        nbytes = np.where(block != "", df["bytes_fused"], df["bytes"])
        # a new step starts at every layer outside a block and at the first layer of each block
        new_step = (block == "") | (block != block.shift())
    else:
        block = pd.Series([""] * len(df))
        nbytes = df["bytes"].to_numpy()
        new_step = pd.Series([True] * len(df))
    step = new_step.cumsum() - 1
    work = pd.DataFrame({"step": step, "module": df["module"].astype(str), "flop": df["flop"].astype(float),
                         "bytes": np.asarray(nbytes, dtype=float), "block": block})
    steps = work.groupby("step", sort=True).agg(
        modules=("module", lambda m: ";".join(dict.fromkeys(m))), block=("block", "first"),
        n_layers=("module", "size"), flop=("flop", "sum"), bytes=("bytes", "sum")).reset_index()
    steps["modules"] = np.where(steps["block"] != "", steps["block"], steps["modules"])
    steps["floor_s"] = roofline_floor_s(steps["flop"], steps["bytes"], peak_flops, bandwidth)
    steps["bound"] = bound_by(steps["flop"], steps["bytes"], peak_flops, bandwidth)
    steps["cum_flop"] = steps["flop"].cumsum()
    steps["cum_floor_s"] = steps["floor_s"].cumsum()
    return steps.drop(columns="block")


def waterline_s(layers: pd.DataFrame, peak_flops: float, bandwidth: float, *, fused: bool = False) -> float:
    """Waterline latency ``sum f_k`` in seconds (see :func:`waterline`)."""
    return float(waterline(layers, peak_flops, bandwidth, fused=fused)["floor_s"].sum())


# ----------------------------------------------------------------------------------------------------------
# Joining measured kernels to the layers they compute
# ----------------------------------------------------------------------------------------------------------

PROFILE_COLUMNS = ("index", "kernel", "time_us", "layers")


def kernel_groups(kernels: pd.DataFrame) -> pd.DataFrame:
    """Consecutive kernels that compute the same layers, merged into one row ("a kernel group").

    In eager mode a group is usually one kernel (or a layer's kernel plus a small cast/bias kernel); under
    torch.compile it is the generated kernels between two library calls. Columns: ``group, first_index,
    kernels`` (names joined by ' + '), ``n_kernels, layers, time_us, mapping``.
    """
    missing = [c for c in PROFILE_COLUMNS if c not in kernels.columns]
    if missing:
        raise ValueError(f"kernel profile is missing column(s) {missing}; it needs {list(PROFILE_COLUMNS)}")
    k = kernels.sort_values("index").reset_index(drop=True)
    layers = k["layers"].fillna("").astype(str)
    mapping = k["mapping"].fillna("unmapped") if "mapping" in k.columns else pd.Series("", index=k.index)
    # unmapped kernels never merge with each other: each is listed on its own
    new_group = (layers != layers.shift()) | (layers == "")
    group = new_group.cumsum() - 1
    out = pd.DataFrame({"group": group, "index": k["index"], "kernel": k["kernel"].astype(str),
                        "time_us": k["time_us"].astype(float), "layers": layers, "mapping": mapping})
    return out.groupby("group", sort=True).agg(
        first_index=("index", "first"), kernels=("kernel", " + ".join), n_kernels=("kernel", "size"),
        layers=("layers", "first"), time_us=("time_us", "sum"), mapping=("mapping", "first")).reset_index()


def join_layers(groups: pd.DataFrame, layers: pd.DataFrame, *, fused: bool = False) -> pd.DataFrame:
    """FLOP and compulsory bytes of the layers each kernel group computes.

    A group claims the layer rows whose ``module`` is one of its ';'-separated layers (the root module '' is
    written :data:`ROOT_MODULE` by the profiler). With ``fused=True``, a group whose layer is a fused block
    (or lies inside one) claims every row of that block, with the block's fused bytes. Each layer row is
    claimed at most once, by the first group in execution order; rows no group claims are returned in
    ``attrs["unclaimed"]`` as records (module, flop, bytes), e.g. layers whose kernels were fused into a
    neighbour's.

    Adds columns ``flop, bytes, n_layers, kind`` to a copy of ``groups``.
    """
    _check_layers(layers, fused)
    rows = layers.reset_index(drop=True).copy()
    rows["module"] = rows["module"].fillna("").astype(str).replace("", ROOT_MODULE)
    folded_kind: dict[str, str] = {}
    if "folded" in rows.columns:
        folded = rows[rows["folded"].astype(bool)]
        if "kind" in folded.columns:
            folded_kind = {m: f"{k} (folded)" for m, k in zip(folded["module"], folded["kind"])}
        rows = rows[~rows["folded"].astype(bool)].reset_index(drop=True)
    blocks = set(rows["fused_block"].fillna("").astype(str)) - {""} if fused else set()
    block_of_row = rows["fused_block"].fillna("").astype(str) if fused else pd.Series("", index=rows.index)
    by_module: dict[str, list[int]] = {}
    for i, m in enumerate(rows["module"]):
        by_module.setdefault(m, []).append(i)
    layer_fields = groups["layers"].fillna("").astype(str).tolist()
    # a module named by several groups (under torch.compile its operators can land in different generated
    # kernels) shares its rows out in order: each later group keeps at least one row for itself
    groups_naming: dict[str, int] = {}
    for field in layer_fields:
        for name in {s for s in field.split(";") if s}:
            groups_naming[name] = groups_naming.get(name, 0) + 1
    claimed = np.zeros(len(rows), dtype=bool)
    flop, nbytes, counts, kinds = [], [], [], []
    for layer_field in layer_fields:
        idx: list[int] = []
        names = [s for s in layer_field.split(";") if s]
        for name in names:
            block = next((b for b in blocks if name == b or name.startswith(b + ".")), None)
            if block is not None:
                idx += [i for i in np.flatnonzero(block_of_row.to_numpy() == block) if not claimed[i]]
                continue
            free = [i for i in by_module.get(name, []) if not claimed[i]]
            later = groups_naming.get(name, 1) - 1
            groups_naming[name] = later
            idx += free[:max(1, len(free) - later)] if later > 0 else free
        idx = sorted(set(idx))
        claimed[idx] = True
        sel = rows.iloc[idx]
        if fused and len(sel):
            b = np.where(sel["fused_block"].fillna("").astype(str) != "", sel["bytes_fused"], sel["bytes"])
        else:
            b = sel["bytes"].to_numpy()
        flop.append(float(sel["flop"].sum()))
        nbytes.append(float(np.sum(b)))
        counts.append(len(idx))
        kind = _dominant_kind(sel, fused)
        if not kind:
            kind = next((folded_kind[n] for n in names if n in folded_kind), "")
        kinds.append(kind)
    out = groups.copy()
    out["flop"] = flop
    out["bytes"] = nbytes
    out["n_layers"] = counts
    out["kind"] = kinds
    out.attrs["unclaimed"] = rows.loc[~claimed, ["module", "flop", "bytes"]].to_dict("records")
    return out


def _dominant_kind(sel: pd.DataFrame, fused: bool) -> str:
    """What a kernel group computes, in one word: 'fused block' for a whole fused block, else the ``kind``
    of its layer with the most FLOP (ties: the most bytes); '' when it computes no counted layer."""
    if sel.empty:
        return ""
    if fused and (sel["fused_block"].fillna("").astype(str) != "").all() and len(sel) > 1:
        return "fused block"
    if "kind" not in sel.columns:
        return ""
    top = sel.sort_values(["flop", "bytes"], ascending=False).iloc[0]
    return str(top["kind"])


def profile_table(kernels: pd.DataFrame, layers: pd.DataFrame, peak_flops: float, bandwidth: float, *,
                  fused: bool = False) -> pd.DataFrame:
    """The per-kernel analysis table of one profiled forward pass.

    One row per kernel group (:func:`kernel_groups`) with: ``kernels, n_kernels, layers, time_us, flop,
    bytes, achieved_tflops, achieved_gbps, intensity`` (FLOP/byte), ``floor_us`` (roofline floor of the
    layers it computes), ``fraction_of_floor`` (floor / time: 1.0 = at the roofline), ``bound``, ``mapping``.
    Unmapped kernels stay in the table with zero FLOP and bytes.
    """
    groups = join_layers(kernel_groups(kernels), layers, fused=fused)
    t = groups["time_us"].to_numpy() * 1e-6
    with np.errstate(divide="ignore", invalid="ignore"):
        groups["achieved_tflops"] = np.where(t > 0, groups["flop"] / t / 1e12, np.nan)
        groups["achieved_gbps"] = np.where(t > 0, groups["bytes"] / t / 1e9, np.nan)
        groups["intensity"] = np.where(groups["bytes"] > 0, groups["flop"] / groups["bytes"], np.nan)
    groups["floor_us"] = roofline_floor_s(groups["flop"], groups["bytes"], peak_flops, bandwidth) * 1e6
    with np.errstate(divide="ignore", invalid="ignore"):
        groups["fraction_of_floor"] = np.where(groups["time_us"] > 0, groups["floor_us"] / groups["time_us"],
                                               np.nan)
    groups["bound"] = bound_by(groups["flop"], groups["bytes"], peak_flops, bandwidth)
    groups.loc[(groups["flop"] == 0) & (groups["bytes"] == 0), "bound"] = ""
    groups["cum_flop"] = groups["flop"].cumsum()
    groups["cum_time_us"] = groups["time_us"].cumsum()
    cols = ["group", "first_index", "kernels", "n_kernels", "layers", "n_layers", "kind", "time_us", "flop", "bytes",
            "achieved_tflops", "achieved_gbps", "intensity", "floor_us", "fraction_of_floor", "bound",
            "mapping", "cum_flop", "cum_time_us"]
    out = groups[cols]
    out.attrs.update(groups.attrs)
    return out


def waterline_summary(table: pd.DataFrame, layers: pd.DataFrame, peak_flops: float, bandwidth: float,
                      *, fused_layers: pd.DataFrame | None = None) -> dict:
    """The three numbers of a waterline figure, in milliseconds.

    ``measured_ms``: sum of the profiled kernel times; ``waterline_ms``: per-layer floors summed;
    ``fused_floor_ms``: with each fused block's floor in place of its layers' floors (``fused_layers`` lets
    the caller count fusion with other block types, e.g. a hypothetical fused ConvNeXt block);
    ``ideal_ms``: ``W / P``. Also the ratios what fusion can buy (waterline / fused floor) and what better
    kernels can buy (measured / waterline).
    """
    fused_layers = layers if fused_layers is None else fused_layers
    measured = float(table["time_us"].sum()) / 1e3
    unfused = waterline_s(layers, peak_flops, bandwidth) * 1e3
    has_blocks = "fused_block" in fused_layers.columns and (fused_layers["fused_block"].fillna("") != "").any()
    fused = waterline_s(fused_layers, peak_flops, bandwidth, fused=True) * 1e3 if has_blocks else unfused
    flop = float(layers.loc[~layers.get("folded", pd.Series(False, index=layers.index)).astype(bool), "flop"].sum())
    return {"measured_ms": measured, "waterline_ms": unfused, "fused_floor_ms": fused,
            "ideal_ms": float(ideal_time_s(flop, peak_flops)) * 1e3,
            "kernels_can_buy": measured / unfused if unfused else np.nan,
            "fusion_can_buy": unfused / fused if fused else np.nan}


# ----------------------------------------------------------------------------------------------------------
# Efficiency tables
# ----------------------------------------------------------------------------------------------------------

def efficiency_table(latency: pd.DataFrame, flop_per_image: dict[str, float], peak_flops: float) -> pd.DataFrame:
    """E and the efficiency gap per (model, variant, batch) row of ``latency`` (column ``ms`` per batch).

    ``flop_per_image``: model -> W of one image (FLOP). ``peak_flops`` is P; a row with its own
    ``peak_tflops`` (the P measured in the same run as its timing) uses that instead. Adds ``gflop`` (whole
    batch), ``peak_tflops_used``, ``ideal_ms``, ``efficiency`` (fraction) and ``gap`` (T / T*).
    """
    missing = [c for c in ("model", "batch", "ms") if c not in latency.columns]
    if missing:
        raise ValueError(f"latency table is missing column(s) {missing}")
    unknown = sorted(set(latency["model"]) - set(flop_per_image))
    if unknown:
        raise ValueError(f"no FLOP count for model(s) {unknown}")
    out = latency.copy()
    p = pd.Series(float(peak_flops), index=out.index)
    if "peak_tflops" in out.columns:
        p = (out["peak_tflops"].astype(float) * 1e12).fillna(p)
    w = out["model"].map(flop_per_image).astype(float) * out["batch"].astype(float)
    out["gflop"] = w / 1e9
    out["peak_tflops_used"] = p / 1e12
    out["ideal_ms"] = w / p * 1e3
    out["efficiency"] = out["ideal_ms"] / out["ms"].astype(float)
    out["gap"] = out["ms"] / out["ideal_ms"]
    return out


def profile_latency(profiles: pd.DataFrame) -> pd.DataFrame:
    """Forward latency per (model, variant, batch) as the sum of its profiled kernel times (ms).

    A lower bound on wall-clock latency: launch gaps between kernels are not included.
    """
    keys = [c for c in ("model", "variant", "batch", "dtype") if c in profiles.columns]
    out = profiles.groupby(keys, sort=False)["time_us"].sum().div(1e3).rename("ms").reset_index()
    out["source"] = "kernel sum (profile)"
    return out


def accuracy_latency(latency: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """Join measured latency (with ``ideal_ms`` from :func:`efficiency_table`) to cited top-1 accuracy.

    ``accuracy`` rows with ``primary`` False are ignored. Models without a cited accuracy are left out (their
    accuracy is unknown, e.g. ConvFirstNet, which this study does not train on ImageNet).
    """
    acc = accuracy
    if "primary" in acc.columns:
        acc = acc[acc["primary"].astype(str).str.lower().isin(["true", "1"])]
    cols = [c for c in ("model", "top1", "eval_img_size", "source") if c in acc.columns]
    return latency.merge(acc[cols], on="model", how="inner")


def best_variant(latency: pd.DataFrame, variants: Iterable[str] | None = None) -> pd.DataFrame:
    """Per (model, batch) the fastest row among ``variants`` (all when None)."""
    df = latency if variants is None else latency[latency["variant"].isin(list(variants))]
    idx = df.groupby(["model", "batch"])["ms"].idxmin()
    return df.loc[idx].reset_index(drop=True)


def select(df: pd.DataFrame, **equal) -> pd.DataFrame:
    """Rows of ``df`` whose columns equal the given values (a value may be a list of allowed values)."""
    mask = pd.Series(True, index=df.index)
    for col, value in equal.items():
        if isinstance(value, (list, tuple, set)):
            mask &= df[col].isin(list(value))
        else:
            mask &= df[col] == value
    return df[mask]


def layer_flop_totals(layers_by_model: dict[str, pd.DataFrame]) -> dict[str, float]:
    """model -> W per image (FLOP) from per-model layer tables counted at any batch."""
    out = {}
    for model, layers in layers_by_model.items():
        batch = layers.attrs.get("batch", 1)
        out[model] = float(layers["flop"].sum()) / batch
    return out


def fraction_table(summaries: Sequence[dict]) -> pd.DataFrame:
    """A tidy table from :func:`waterline_summary` dicts (each with its own model/variant keys)."""
    return pd.DataFrame(list(summaries))


# ----------------------------------------------------------------------------------------------------------
# One model's waterline, ready to plot
# ----------------------------------------------------------------------------------------------------------

def block_types_for(model_name: str) -> tuple:
    """The residual-block classes whose fusion the fused floor assumes, for a model name.

    Our families: ConvFirst and MBConv blocks (the kernels of this study). Baselines: their own blocks,
    as a *hypothetical* fused kernel no library provides (for EfficientNet and MobileNet the block's
    squeeze-excite is a global pooling that a depth-first kernel cannot do in one pass, so their fused
    floor is optimistic). Empty for models with no known block class.
    """
    from .counting import FUSED_BLOCK_TYPES

    name = model_name.lower()
    if name.startswith(("convfirstnet", "mbconvnet")):
        return tuple(FUSED_BLOCK_TYPES)
    if name.startswith("convnext"):
        from timm.models.convnext import ConvNeXtBlock
        return (ConvNeXtBlock,)
    if name.startswith(("efficientnet", "mobilenet", "tf_efficientnet")):
        from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
        return (InvertedResidual, DepthwiseSeparableConv)
    if name.startswith("resnet"):
        from timm.models.resnet import BasicBlock, Bottleneck
        return (Bottleneck, BasicBlock)
    return ()


def count_model_layers(model_name: str, batch: int, *, fused_types: tuple | None = None,
                       dtype_bytes: int = 2, resolution: int | None = None) -> pd.DataFrame:
    """:func:`convfirst.counting.count_layers` of ``model_name`` with the blocks of :func:`block_types_for`
    (or ``fused_types``) marked for the fused accounting."""
    from .counting import count_layers

    types = block_types_for(model_name) if fused_types is None else fused_types
    return count_layers(model_name, batch=batch, dtype_bytes=dtype_bytes, resolution=resolution,
                        fused_types=types)


def model_waterline(kernels: pd.DataFrame, layers: pd.DataFrame, peak_flops: float, bandwidth: float, *,
                    fused_kernels: bool = False) -> dict:
    """Everything one waterline figure needs for one profiled (model, variant, batch).

    ``layers``: the model's layer table with its blocks marked for fusion (:func:`count_model_layers`).
    ``fused_kernels``: the profile is of the fused variant (its block kernels claim their whole blocks).
    Returns ``table`` (:func:`profile_table`), ``steps`` and ``fused_steps`` (:func:`waterline`),
    ``summary`` (:func:`waterline_summary`).
    """
    table = profile_table(kernels, layers, peak_flops, bandwidth, fused=fused_kernels)
    steps = waterline(layers, peak_flops, bandwidth)
    has_blocks = (layers["fused_block"].fillna("") != "").any()
    fused_steps = waterline(layers, peak_flops, bandwidth, fused=True) if has_blocks else None
    summary = waterline_summary(table, layers, peak_flops, bandwidth)
    return {"table": table, "steps": steps, "fused_steps": fused_steps, "summary": summary}


def profile_waterlines(profiles: pd.DataFrame, cases: Sequence[Sequence[str]], batch: int, peak_flops: float,
                       bandwidth: float, *, dtype: str = "bfloat16") -> tuple[dict, pd.DataFrame]:
    """:func:`model_waterline` for each (model, variant) in ``cases`` at ``batch`` from recorded profiles.

    Returns ``(results, summary)``: ``results[(model, variant)]`` is the dict of :func:`model_waterline`
    (with ``table`` None when no profile of that case is recorded: the summary row then has the floors
    only); ``summary``
    has one row per case with the numbers of :func:`waterline_summary`, the share of measured time in
    memory-bound kernels, and the share of time in kernels no layer could be matched to.
    """
    dtype_bytes = {"bfloat16": 2, "float16": 2, "float32": 4}.get(dtype, 2)
    layers_by_model: dict[str, pd.DataFrame] = {}
    results, rows = {}, []
    for model, variant in cases:
        if model not in layers_by_model:
            layers_by_model[model] = count_model_layers(model, batch, dtype_bytes=dtype_bytes)
        layers = layers_by_model[model]
        kernels = profiles[(profiles["model"] == model) & (profiles["variant"] == variant)
                           & (profiles["batch"] == batch) & (profiles["dtype"] == dtype)]
        row = {"model": model, "variant": variant, "batch": batch}
        if kernels.empty:
            steps = waterline(layers, peak_flops, bandwidth)
            has_blocks = (layers["fused_block"] != "").any()
            fused_steps = waterline(layers, peak_flops, bandwidth, fused=True) if has_blocks else None
            results[(model, variant)] = {"table": None, "steps": steps, "fused_steps": fused_steps, "summary": None}
            flop = float(layers.loc[~layers["folded"].astype(bool), "flop"].sum())
            row.update(measured_ms=np.nan, waterline_ms=float(steps["floor_s"].sum()) * 1e3,
                       fused_floor_ms=(float(fused_steps["floor_s"].sum()) * 1e3 if has_blocks else np.nan),
                       ideal_ms=float(ideal_time_s(flop, peak_flops)) * 1e3, note="no recorded profile")
        else:
            res = model_waterline(kernels.sort_values("index"), layers, peak_flops, bandwidth,
                                  fused_kernels=(variant.startswith("fused")))
            results[(model, variant)] = res
            t = res["table"]
            total = t["time_us"].sum()
            row.update(res["summary"])
            row["memory_bound_time_share"] = t.loc[t["bound"] == "memory", "time_us"].sum() / total
            row["unmapped_time_share"] = t.loc[t["mapping"] == "unmapped", "time_us"].sum() / total
            row["kernels"] = int(t["n_kernels"].sum())
            row["note"] = ""
        rows.append(row)
    return results, pd.DataFrame(rows)


def time_by_layer_kind(results: dict) -> pd.DataFrame:
    """Measured time and floors of profiled cases summed per layer kind (from :func:`profile_waterlines`).

    Columns ``model, variant, kind, kernels, time_ms, floor_ms, time_share, fraction_of_floor``
    (floor / time of the kind as a whole); kernels computing no counted layer appear as kind 'unmatched'.
    """
    rows = []
    for (model, variant), res in results.items():
        t = res.get("table") if res else None
        if t is None:
            continue
        g = t.assign(kind=t["kind"].replace("", "unmatched")).groupby("kind").agg(
            kernels=("n_kernels", "sum"), time_us=("time_us", "sum"), floor_us=("floor_us", "sum")).reset_index()
        g.insert(0, "variant", variant)
        g.insert(0, "model", model)
        g["time_share"] = g["time_us"] / g["time_us"].sum()
        g["fraction_of_floor"] = g["floor_us"] / g["time_us"]
        rows.append(g.sort_values("time_us", ascending=False))
    if not rows:
        return pd.DataFrame(columns=["model", "variant", "kind", "kernels", "time_ms", "floor_ms", "time_share",
                                     "fraction_of_floor"])
    out = pd.concat(rows, ignore_index=True)
    out["time_ms"] = out.pop("time_us") / 1e3
    out["floor_ms"] = out.pop("floor_us") / 1e3
    return out[["model", "variant", "kind", "kernels", "time_ms", "floor_ms", "time_share", "fraction_of_floor"]]


def relative_to(points: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each model's work, ideal and measured latency as multiples of ``reference``'s (same batch).

    ``points`` needs ``model, gflop, ideal_ms, ms``; returns ``model, work_x, ideal_x, measured_x, gap``.
    A model with a tenth of the reference's work but ``measured_x`` near 1 has lost its advantage to its gap.
    """
    ref = points[points["model"] == reference]
    if ref.empty:
        raise ValueError(f"reference model {reference!r} is not among {sorted(points['model'])}")
    r = ref.iloc[0]
    out = pd.DataFrame({"model": points["model"], "work_x": points["gflop"] / r["gflop"],
                        "ideal_x": points["ideal_ms"] / r["ideal_ms"], "measured_x": points["ms"] / r["ms"],
                        "gap": points["ms"] / points["ideal_ms"]})
    return out.reset_index(drop=True)


def efficiency_against_cited(table: pd.DataFrame, cited: pd.DataFrame, batch: int,
                             family_of: Callable[[str], str]) -> pd.DataFrame:
    """Measured E beside the efficiency range the paper reports for the model's family.

    ``table``: rows with ``model``, ``variant``, ``batch``, ``efficiency`` (fraction), e.g. from
    :func:`efficiency_table`; the fastest variant of each model at ``batch`` is kept. ``cited``: rows with
    ``family``, ``efficiency_low_pct``, ``efficiency_high_pct``, ``source`` (data/cited_paper_efficiency.csv).
    ``family_of(model)`` names the family a model belongs to in ``cited`` (models of other families are
    dropped). Adds ``measured_pct`` and ``position`` ('below', 'within' or 'above' the cited range).
    """
    at = table[table["batch"] == batch]
    best = at.loc[at.groupby("model")["efficiency"].idxmax()].copy()
    best["family"] = [family_of(m) for m in best["model"]]
    out = best.drop(columns="source", errors="ignore").merge(cited, on="family", how="inner")
    out["measured_pct"] = 100 * out["efficiency"]
    out["position"] = np.select([out["measured_pct"] < out["efficiency_low_pct"],
                                 out["measured_pct"] > out["efficiency_high_pct"]], ["below", "above"], "within")
    cols = ["model", "family", "variant", "batch", "measured_pct", "efficiency_low_pct", "efficiency_high_pct",
            "position", "source"]
    return out[cols].sort_values(["family", "model"]).reset_index(drop=True)
