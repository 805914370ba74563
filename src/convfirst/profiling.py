"""Per-kernel GPU profiles of one forward pass, each kernel joined to the layer(s) it computes.

How a kernel finds its layer:

- **eager and fused variants**: forward hooks open a ``torch.profiler.record_function`` range named
  ``module:<path>`` around every module call, so each kernel launch falls inside the range of the
  innermost module that launched it (:class:`ModuleRanges`);
- **torch.compile**: Dynamo drops those ranges, so kernels are mapped by execution order
  (:func:`map_by_anchor_order`): library calls (cuDNN convolutions, cuBLAS matmuls) are matched one for one
  with the eager model's conv/linear modules, and generated kernels between two library calls are given
  the eager modules between the two matching layers;
- a kernel that neither rule can place is kept with ``mapping == "unmapped"``, never dropped.

The profiler's Chrome trace is parsed directly (:func:`parse_chrome_trace`): kernel durations are GPU
times in microseconds, measured by CUPTI, one forward pass per ``forward:<r>`` range; the recorded time of a
kernel is its median over the repeated passes.

Runnable on a GPU machine::

    python -m convfirst.profiling --models convnext_tiny efficientnet_b0 --variants eager compiled \
        --batches 256 --out results/
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from .analysis import ROOT_MODULE

KERNEL_PROFILE_PREFIX = "kernel_profile"
MODULE_RANGE = "module:"
FORWARD_RANGE = "forward:"
VARIANTS = ("eager", "compile-default", "fused")
COMPILED = "compile-default"
KERNEL_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
#: aten ops that run as one library call (cuDNN, cuBLAS) in eager and compiled code alike.
ANCHOR_OPS = ("aten::convolution", "aten::_convolution", "aten::cudnn_convolution", "aten::mm",
              "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul", "aten::conv2d")
#: module types whose forward is one library call: the anchors of the eager model.
ANCHOR_MODULE_TYPES = ("Conv2d", "Linear", "Conv2dSame", "ScaledStdConv2d", "StdConv2d", "PatchifyConv2d")


class ModuleRanges:
    """Context manager: every module call inside ``model`` runs inside ``record_function("module:<path>")``.

    The innermost range around a kernel launch names the module that launched it; the model itself is
    named ``root`` (:data:`convfirst.analysis.ROOT_MODULE`). Submodules called more than once open one
    range per call.
    """

    def __init__(self, model, prefix: str = MODULE_RANGE, root: str = ROOT_MODULE):
        self.model = model
        self.prefix = prefix
        self.root = root
        self._handles: list = []
        self._open: list = []

    def __enter__(self):
        from torch.autograd.profiler import record_function

        def pre_hook(path):
            def hook(module, args):
                rf = record_function(self.prefix + path)
                rf.__enter__()
                self._open.append(rf)
            return hook

        def post_hook(module, args, output):
            if self._open:
                self._open.pop().__exit__(None, None, None)

        for path, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(pre_hook(path or self.root)))
            self._handles.append(module.register_forward_hook(post_hook))
        return self

    def __exit__(self, *exc):
        while self._open:
            self._open.pop().__exit__(None, None, None)
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False


def module_types(model) -> dict[str, str]:
    """Module path -> class name, for every named submodule."""
    return {path: type(m).__name__ for path, m in model.named_modules() if path}


# ----------------------------------------------------------------------------------------------------------
# Parsing the profiler's Chrome trace (pure functions: tested on synthetic traces)
# ----------------------------------------------------------------------------------------------------------

def innermost_enclosing(intervals: Sequence[tuple[float, float, object]],
                        points: Sequence[float]) -> list[list[object]]:
    """For each point, the labels of the intervals containing it, outermost first.

    ``intervals``: (start, end, label), properly nested (as ranges on one thread are). A point equal to an
    interval's start or end counts as inside. Runs in O((n + m) log(n + m)) with one sweep.
    """
    # Sort key: time, then starts before points before ends (so boundaries are inclusive); among starts
    # at the same time the longer interval opens first, among ends the shorter closes first.
    events = []
    for i, (start, end, _) in enumerate(intervals):
        events.append((start, 0, -(end - start), i))
        events.append((end, 2, end - start, i))
    for j, t in enumerate(points):
        events.append((t, 1, 0.0, j))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    stack: list[int] = []
    result: list[list[object]] = [[] for _ in points]
    for _, kind, _, idx in events:
        if kind == 0:
            stack.append(idx)
        elif kind == 2:
            if idx in stack:  # tolerate imperfect nesting: remove this interval wherever it is
                stack.remove(idx)
        else:
            result[idx] = [intervals[i][2] for i in stack]
    return result


def parse_chrome_trace(trace: dict) -> pd.DataFrame:
    """One row per GPU kernel in a torch.profiler Chrome trace.

    Columns: ``repeat`` (index of the enclosing ``forward:<r>`` range, -1 outside any), ``index`` (order of
    the kernel inside its forward pass, by GPU start time), ``kernel`` (name), ``time_us`` (GPU duration),
    ``module`` (innermost ``module:`` range around the launch, '' if none), ``ops`` (the aten ops open at the
    launch, outermost first, joined by ' > '), ``op_call`` (start time of the outermost anchor op
    open at the launch, so kernels of one library call share it; NaN when none), ``anchor`` (bool).
    """
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    kernels = [e for e in events if e.get("cat") in KERNEL_CATEGORIES]
    launches = {}
    for e in events:
        if e.get("cat") in LAUNCH_CATEGORIES and "correlation" in e.get("args", {}):
            launches[e["args"]["correlation"]] = e
    by_thread: dict[tuple, list] = {}
    for e in events:
        cat = e.get("cat")
        name = e.get("name", "")
        if cat == "user_annotation" and (name.startswith(MODULE_RANGE) or name.startswith(FORWARD_RANGE)):
            by_thread.setdefault((e.get("pid"), e.get("tid")), []).append(("range", e))
        elif cat == "cpu_op":
            by_thread.setdefault((e.get("pid"), e.get("tid")), []).append(("op", e))

    # Launch point of every kernel, grouped by the CPU thread that launched it.
    rows = []
    points_by_thread: dict[tuple, list] = {}
    for k in kernels:
        corr = k.get("args", {}).get("correlation")
        launch = launches.get(corr)
        row = {"kernel": k.get("name", ""), "time_us": float(k.get("dur", 0.0)), "gpu_start": float(k["ts"]),
               "module": "", "ops": "", "op_call": np.nan, "anchor": False, "repeat": -1}
        rows.append(row)
        if launch is not None:
            points_by_thread.setdefault((launch.get("pid"), launch.get("tid")), []).append(
                (len(rows) - 1, float(launch["ts"])))

    for thread, pts in points_by_thread.items():
        spans = by_thread.get(thread, [])
        intervals = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), (kind, e)) for kind, e in spans]
        enclosing = innermost_enclosing(intervals, [t for _, t in pts])
        for (row_idx, _), labels in zip(pts, enclosing):
            row = rows[row_idx]
            modules = [e["name"][len(MODULE_RANGE):] for kind, e in labels
                       if kind == "range" and e["name"].startswith(MODULE_RANGE)]
            forwards = [e["name"][len(FORWARD_RANGE):] for kind, e in labels
                        if kind == "range" and e["name"].startswith(FORWARD_RANGE)]
            ops = [e for kind, e in labels if kind == "op"]
            row["module"] = modules[-1] if modules else ""
            row["repeat"] = int(forwards[-1]) if forwards else -1
            row["ops"] = " > ".join(e["name"] for e in ops)
            anchors = [e for e in ops if e["name"] in ANCHOR_OPS]
            if anchors:
                row["anchor"] = True
                row["op_call"] = float(anchors[0]["ts"])
    df = pd.DataFrame(rows, columns=["repeat", "kernel", "time_us", "gpu_start", "module", "ops", "op_call",
                                     "anchor"])
    df = df.sort_values(["repeat", "gpu_start"], kind="stable").reset_index(drop=True)
    df["index"] = df.groupby("repeat").cumcount()
    return df[["repeat", "index", "kernel", "time_us", "module", "ops", "op_call", "anchor"]]


def median_over_repeats(kernels: pd.DataFrame) -> pd.DataFrame:
    """One row per kernel of one forward pass, time = median over the repeated passes.

    Passes outside a ``forward:`` range (repeat -1) are ignored. If the passes launched different kernel
    sequences (rare: e.g. a lazily built cuDNN plan), the pass with the median total time is kept whole.
    """
    k = kernels[kernels["repeat"] >= 0]
    if k.empty:
        raise ValueError("no kernels inside a 'forward:<r>' range: nothing was profiled on the GPU")
    passes = [g.reset_index(drop=True) for _, g in k.groupby("repeat")]
    names = [tuple(p["kernel"]) for p in passes]
    if all(n == names[0] for n in names):
        out = passes[0].copy()
        times = np.stack([p["time_us"].to_numpy() for p in passes])
        out["time_us"] = np.median(times, axis=0)
        out["time_us_min"] = times.min(axis=0)
        out["repeats"] = len(passes)
        return out.drop(columns="repeat")
    totals = [p["time_us"].sum() for p in passes]
    chosen = passes[int(np.argsort(totals)[len(totals) // 2])].copy()
    chosen["time_us_min"] = chosen["time_us"]
    chosen["repeats"] = 1
    return chosen.drop(columns="repeat")


def map_by_module(kernels: pd.DataFrame, model_root: str = "") -> pd.DataFrame:
    """Eager and fused variants: each kernel computes the module whose range it fell in.

    Adds ``layers`` (module path) and ``mapping`` ('module-range', or 'unmapped' for kernels launched
    outside every module, e.g. by the model's own forward code, which are kept with layers = '').
    """
    out = kernels.copy()
    out["layers"] = out["module"].fillna("")
    out["mapping"] = np.where(out["layers"] != "", "module-range", "unmapped")
    return out


def _anchor_call_ids(kernels: pd.DataFrame) -> pd.Series:
    """Consecutive anchor kernels of one library call share an id (0, 1, ...); non-anchors get -1."""
    ids, current, last_call = [], -1, None
    for anchor, call in zip(kernels["anchor"], kernels["op_call"]):
        if anchor:
            if last_call is None or call != last_call:
                current += 1
                last_call = call
            ids.append(current)
        else:
            ids.append(-1)
            last_call = None
    return pd.Series(ids, index=kernels.index)


def eager_anchor_layers(eager: pd.DataFrame, types: dict[str, str] | None = None) -> list[str]:
    """The library-call modules of an eager profile, in execution order, one entry per call."""
    ids = _anchor_call_ids(eager)
    layers = []
    for call in sorted(set(ids) - {-1}):
        mods = eager.loc[ids == call, "module"]
        layers.append(mods.iloc[0] if len(mods) else "")
    return layers


def map_by_anchor_order(compiled: pd.DataFrame, eager: pd.DataFrame) -> pd.DataFrame:
    """torch.compile variant: map kernels to the eager model's layers by execution order.

    The j-th library call of the compiled pass computes the j-th library-call module of the eager pass;
    generated kernels between library calls j and j+1 compute the eager modules launched between those two
    layers (all of them, ';'-joined). When the two passes make different numbers of library calls, the
    calls past the shorter sequence and the kernels after them are 'unmapped'.
    """
    eager = eager.reset_index(drop=True)
    e_ids = _anchor_call_ids(eager)
    e_anchor_layers = eager_anchor_layers(eager)
    # Non-anchor modules of the eager pass in each segment: segment s = after library call s-1
    # (s = 0: before the first call).
    segments: dict[int, list[str]] = {}
    seg = 0
    for is_anchor, call, module in zip(eager["anchor"], e_ids, eager["module"]):
        if is_anchor:
            seg = call + 1
        elif module and module not in segments.setdefault(seg, []):
            segments[seg].append(module)
    out = compiled.reset_index(drop=True).copy()
    c_ids = _anchor_call_ids(out)
    n_match = min(len(e_anchor_layers), int(c_ids.max()) + 1 if (c_ids >= 0).any() else 0)
    layers, mapping = [], []
    seg = 0
    for is_anchor, call in zip(out["anchor"], c_ids):
        if is_anchor:
            seg = call + 1
            if call < n_match:
                layers.append(e_anchor_layers[call])
                mapping.append("anchor-order")
            else:
                layers.append("")
                mapping.append("unmapped")
        else:
            mods = segments.get(seg, []) if seg <= n_match else []
            layers.append(";".join(mods))
            mapping.append("segment-order" if mods else "unmapped")
    out["layers"] = layers
    out["mapping"] = mapping
    return out


# ----------------------------------------------------------------------------------------------------------
# Profiling on the GPU
# ----------------------------------------------------------------------------------------------------------

def profile_kernels(fn: Callable, inputs: Sequence[tuple], *, repeats: int = 5, warmup: int = 3,
                    model=None, trace_path: str | Path | None = None) -> pd.DataFrame:
    """Profile ``repeats`` calls of ``fn`` (after ``warmup`` calls) and return the parsed kernel rows.

    ``inputs`` are rotated (distinct random sets). With ``model`` given, module ranges are recorded
    (:class:`ModuleRanges`). ``trace_path``: also keep the raw Chrome trace there (gzip if it ends in .gz).
    """
    import contextlib

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    if not torch.cuda.is_available():
        raise RuntimeError("profile_kernels needs a CUDA GPU; without one the notebooks replay data/")
    with torch.inference_mode():
        for i in range(warmup):
            fn(*inputs[i % len(inputs)])
        torch.cuda.synchronize()
        ranges = ModuleRanges(model) if model is not None else contextlib.nullcontext()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            with ranges:
                for r in range(repeats):
                    with record_function(f"{FORWARD_RANGE}{r}"):
                        fn(*inputs[r % len(inputs)])
                    torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    if trace_path is not None:
        trace_path = Path(trace_path)
        opener = gzip.open if trace_path.suffix == ".gz" else open
        with opener(trace_path, "wt") as f:
            json.dump(trace, f)
    return parse_chrome_trace(trace)


def build_model(name: str, variant: str, batch: int, dtype: str = "bfloat16", resolution: int = 224):
    """The model as the model benchmark builds it (:mod:`convfirst.bench_models`): random weights with
    non-trivial BatchNorm statistics, eval mode, ``dtype`` weights and activations, channels_last, on the GPU;
    ``compile-default`` wraps it in ``torch.compile``, ``fused`` replaces its blocks by one-kernel blocks.

    Returns (module whose submodules name the layers, callable, inputs: three distinct random batches).
    """
    from .bench_models import build_variant, create_model, random_images

    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: choose one of {list(VARIANTS)}")
    model = create_model(name, dtype=dtype)
    runner = build_variant(model, name, variant, resolution, batch)
    inputs = random_images(batch, resolution, sets=3, dtype=dtype)
    named = runner if variant == "fused" else model
    return named, runner, inputs


def profile_model(name: str, variant: str, batch: int, dtype: str = "bfloat16", repeats: int = 5,
                  eager_profile: pd.DataFrame | None = None, trace_path=None) -> pd.DataFrame:
    """Per-kernel profile of one forward pass of ``name`` (median of ``repeats``), joined to its layers.

    For ``variant='compile-default'`` pass the eager profile of the same model and batch to map by order.
    """
    model, forward, inputs = build_model(name, variant, batch, dtype)
    with_ranges = model if variant in ("eager", "fused") else None
    raw = profile_kernels(forward, inputs, repeats=repeats, model=with_ranges, trace_path=trace_path)
    kernels = median_over_repeats(raw)
    if variant == COMPILED:
        if eager_profile is None:
            raise ValueError("variant='compile-default' needs eager_profile (the eager profile of the same model)")
        table = map_by_anchor_order(kernels, eager_profile)
    else:
        table = map_by_module(kernels)
    types = module_types(model)
    table["module_type"] = table["module"].map(types).fillna("")
    table.insert(0, "cast", "model")  # weights and activations converted to dtype (no autocast)
    table.insert(0, "layout", "channels_last")
    table.insert(0, "dtype", dtype)
    table.insert(0, "batch", batch)
    table.insert(0, "variant", variant)
    table.insert(0, "model", name)
    return table


def profile_jobs(models: Sequence[str], variants: Sequence[str], batches: Sequence[int],
                 compiled_batches: Sequence[int] | None = None) -> list[tuple[str, str, int]]:
    """(model, variant, batch) in the order a time-limited run should do them: the cheap eager and fused
    profiles of every model first, then the compiled ones (minutes of compilation each), batch by batch."""
    from .bench_models import is_fusable

    jobs = [(m, v, b) for v in variants if v != COMPILED for b in batches for m in models
            if v != "fused" or is_fusable(m)]
    if COMPILED in variants:
        jobs += [(m, COMPILED, b) for b in (compiled_batches or batches) for m in models]
    return jobs


#: Columns of a recorded kernel profile (before the provenance columns).
PROFILE_COLUMNS = ("model", "variant", "batch", "dtype", "layout", "cast", "index", "kernel", "time_us", "time_us_min",
                   "repeats", "module", "module_type", "op", "anchor", "layers", "mapping")


def tidy_profile(table: pd.DataFrame) -> pd.DataFrame:
    """The columns a recorded profile keeps: ``ops`` shortened to ``op``, the outermost aten op at the
    launch ('' for generated kernels), and the trace-specific ``op_call`` dropped."""
    out = table.copy()
    if "ops" in out.columns:
        out["op"] = [next((o for o in str(chain).split(" > ") if o.startswith("aten::")), "")
                     if isinstance(chain, str) else "" for chain in out["ops"]]
    out["layers"] = out["layers"].fillna("")
    keep = [c for c in PROFILE_COLUMNS if c in out.columns]
    rest = [c for c in out.columns if c not in keep and c not in ("ops", "op_call")]
    return out[keep + rest]


def main(argv: Iterable[str] | None = None) -> None:
    import torch

    from .ceilings import measure_ceilings
    from .provenance import environment_info, gpu_short_name, with_provenance

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["convnext_tiny", "efficientnet_b0"])
    ap.add_argument("--variants", nargs="+", default=["eager", COMPILED], choices=VARIANTS)
    ap.add_argument("--batches", nargs="+", type=int, default=[256])
    ap.add_argument("--compiled-batches", nargs="+", type=int, default=None,
                    help="batches for the compiled variant (default: --batches)")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ceilings", action="store_true", help="also measure the device ceilings")
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no new profile after this many seconds")
    ap.add_argument("--trace-batch", type=int, default=None,
                    help="keep the Chrome traces (gzip) of the first model at this batch")
    ap.add_argument("--out", required=True, help="folder for ceilings_<gpu>.csv and kernel_profile_<gpu>.csv")
    args = ap.parse_args(argv)

    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment_info()
    gpu = gpu_short_name(env["gpu"])
    torch.backends.cudnn.benchmark = True
    if args.ceilings:
        c = measure_ceilings()
        c.to_csv(out / f"ceilings_{gpu}.csv", index=False)
        print(c[["gpu", "bf16_tflops", "fp16_tflops", "copy_tbps", "sm_count", "l2_mb"]].to_string(index=False),
              flush=True)
    profile_file = out / f"{KERNEL_PROFILE_PREFIX}_{gpu}.csv"
    summary = []
    eager_profiles: dict[tuple[str, int], pd.DataFrame] = {}
    for name, variant, batch in profile_jobs(args.models, args.variants, args.batches, args.compiled_batches):
        if time.time() - start > args.budget_s:
            print(f"skip {name} {variant} b{batch}: time budget spent", flush=True)
            continue
        t0 = time.time()
        trace = (out / f"trace_{name}_{variant}_b{batch}.json.gz"
                 if args.trace_batch == batch and name == args.models[0] else None)
        try:
            torch._dynamo.reset()
            eager = eager_profiles.get((name, batch))
            if variant == COMPILED and eager is None:
                eager = profile_model(name, "eager", batch, args.dtype, args.repeats)
            table = profile_model(name, variant, batch, args.dtype, args.repeats, eager_profile=eager,
                                  trace_path=trace)
            if variant == "eager":
                eager_profiles[(name, batch)] = table
        except Exception as exc:  # keep going: one model's failure must not lose the others
            print(f"FAILED {name} {variant} b{batch}: {type(exc).__name__}: {exc}", flush=True)
            continue
        table = tidy_profile(table)
        table = with_provenance(table, env)
        table.to_csv(profile_file, mode="a", header=not profile_file.exists(), index=False)
        unmapped = int((table["mapping"] == "unmapped").sum())
        summary.append((name, variant, batch, len(table), table["time_us"].sum() / 1e3, unmapped,
                        time.time() - t0))
        print(f"{name:24s} {variant:9s} b{batch:<4d} kernels {len(table):5d}  "
              f"sum {table['time_us'].sum() / 1e3:8.3f} ms  unmapped {unmapped:4d}  "
              f"({time.time() - t0:.0f} s)", flush=True)
        torch.cuda.empty_cache()
    print("\nmodel                    variant   batch kernels  sum_ms  unmapped  wall_s")
    for row in summary:
        print("{:24s} {:9s} {:5d} {:7d} {:7.3f} {:9d} {:7.0f}".format(*row))



# ----------------------------------------------------------------------------------------------------------
# Reading recorded profiles back
# ----------------------------------------------------------------------------------------------------------

def load_kernel_profiles(gpu: str, cast: str = "model") -> pd.DataFrame:
    """The most recent recorded profile of every (model, variant, batch, dtype) on ``gpu``.

    ``cast='model'``: profiles of models converted to the dtype (weights and activations, as the model
    benchmark runs them); ``'autocast'``: fp32 weights under ``torch.autocast`` (an earlier run, kept).
    A clear error listing the GPUs that have data when ``data/kernel_profile_<gpu>.csv`` is missing.
    """
    from .records import load_measurements, recorded_file

    df = load_measurements(recorded_file(KERNEL_PROFILE_PREFIX, gpu))
    df["layers"] = df["layers"].fillna("")
    df["module"] = df["module"].fillna("")
    if "cast" in df.columns:
        df = df[df["cast"] == cast]
    keys = ["model", "variant", "batch", "dtype"]
    latest = df.groupby(keys)["date"].transform("max")
    return df[df["date"] == latest].reset_index(drop=True)


def select_profile(profiles: pd.DataFrame, model: str, variant: str, batch: int,
                   dtype: str = "bfloat16") -> pd.DataFrame:
    """The kernels of one recorded (model, variant, batch, dtype); a clear error naming what is recorded."""
    from .params import ParameterError

    sel = profiles[(profiles["model"] == model) & (profiles["variant"] == variant)
                   & (profiles["batch"] == batch) & (profiles["dtype"] == dtype)]
    if sel.empty:
        have = sorted({(m, v, int(b)) for m, v, b in zip(profiles["model"], profiles["variant"], profiles["batch"])})
        raise ParameterError(f"no recorded profile of model={model!r} variant={variant!r} batch={batch} "
                             f"dtype={dtype!r}; recorded (model, variant, batch): {have}")
    return sel.sort_values("index").reset_index(drop=True)


def recorded_latency(gpu: str, models: Sequence[str] | None = None, dtype: str = "bfloat16") -> pd.DataFrame:
    """Forward latency per (model, variant, batch) on ``gpu``, and where each number comes from.

    Preferred: the model benchmark (``data/model_bench_<gpu>.csv``: median wall-clock time of whole forward
    passes at 224x224, the best of with and without CUDA graphs, the rows of
    :func:`convfirst.bench_models.recorded_rows`), with the peak
    rate P measured in that run (``peak_tflops``). Cases the benchmark has not recorded come from this
    study's kernel profiles: the sum of kernel times, a lower bound that leaves out launch gaps
    (``peak_tflops`` empty: use the recorded ceilings). Columns ``model, variant, batch, ms, peak_tflops,
    source``.
    """
    from .analysis import profile_latency
    from .records import DataError

    keys = ["model", "variant", "batch"]
    parts = []
    try:
        from .bench_models import load_model_bench, recorded_rows

        bench = recorded_rows(load_model_bench(gpu))  # the rows chapter 6 shows, chosen by the same rule
        bench = bench[(bench["resolution"] == 224) & (bench["dtype"] == dtype)]
        best = bench.loc[bench.groupby(keys)["ms"].idxmin()]
        best = best[keys + ["ms", "peak_tflops", "cuda_graphs"]].copy()
        best["source"] = np.where(best["cuda_graphs"], "model benchmark (wall clock, CUDA graph)",
                                  "model benchmark (wall clock)")
        parts.append(best.drop(columns="cuda_graphs"))
    except (DataError, ImportError):
        pass
    try:
        prof = load_kernel_profiles(gpu)
        lat = profile_latency(prof[prof["dtype"] == dtype]).drop(columns="dtype", errors="ignore")
        lat["peak_tflops"] = np.nan
        lat["source"] = "kernel profile (sum of kernel times)"
        parts.append(lat)
    except DataError:
        pass
    if not parts:
        from .records import recorded_gpus

        raise DataError(f"gpu={gpu!r}: no recorded model_bench or kernel_profile data; GPUs with data: "
                        f"{sorted(set(recorded_gpus('model_bench')) | set(recorded_gpus(KERNEL_PROFILE_PREFIX)))}")
    out = pd.concat(parts, ignore_index=True).drop_duplicates(keys, keep="first")
    if models is not None:
        out = out[out["model"].isin(list(models))]
    return out.sort_values(keys).reset_index(drop=True)


def record_profiles(cases: Sequence[Sequence[str]], batch: int, dtype: str = "bfloat16",
                    repeats: int = 5) -> str:
    """Profile each (model, variant) of ``cases`` at ``batch`` on this machine's GPU and append the rows to
    ``data/kernel_profile_<gpu>.csv`` with provenance; returns the GPU short name. A compiled case also
    records the eager profile it is mapped through. Shows tqdm progress."""
    import torch
    from tqdm.auto import tqdm

    from .provenance import environment_info, gpu_short_name, with_provenance
    from .records import data_path, save_measurements

    env = environment_info()
    gpu = gpu_short_name(env["gpu"])
    path = data_path(f"{KERNEL_PROFILE_PREFIX}_{gpu}.csv")
    todo = [(m, v) for m, v in cases]
    todo = [(m, "eager") for m in dict.fromkeys(m for m, v in todo if v == COMPILED)
            if (m, "eager") not in todo] + todo
    todo.sort(key=lambda case: case[1] == COMPILED)  # eager profiles first: compiled ones map through them
    eager: dict[str, pd.DataFrame] = {}
    for model, variant in tqdm(todo, desc="profiling", unit="model"):
        torch._dynamo.reset()
        table = profile_model(model, variant, batch, dtype, repeats, eager_profile=eager.get(model))
        if variant == "eager":
            eager[model] = table
        table = tidy_profile(table)
        table = with_provenance(table, env)
        save_measurements(table, path, key=["model", "variant", "batch", "dtype", "index"])
        torch.cuda.empty_cache()
    return gpu


def record_latency(models: Sequence[str], variants: Sequence[str], batches: Sequence[int],
                   extra_models: Sequence[str] = (), extra_batch: int | None = None,
                   dtype: str = "bfloat16") -> str:
    """Time whole forward passes on this machine's GPU with the model benchmark
    (:func:`convfirst.bench_models.run_plan`), appending to ``data/model_bench_<gpu>.csv``; returns the GPU
    short name. ``extra_models`` are timed under ``compile-default`` at ``extra_batch`` only."""
    import torch

    from .bench_models import BenchCase, is_fusable, run_plan
    from .provenance import gpu_short_name
    from .records import data_path

    gpu = gpu_short_name(torch.cuda.get_device_name(0))
    todo = tuple(sorted(set(batches) | ({extra_batch} if extra_batch else set())))
    cases = [BenchCase(m, v, todo) for m in models for v in variants if is_fusable(m) or not v.startswith("fused")]
    if extra_batch:
        cases += [BenchCase(m, "compile-default", (extra_batch,)) for m in extra_models if m not in models]
    run_plan(cases, dtype=dtype, save_to=data_path(f"model_bench_{gpu}.csv"))
    return gpu


def check_cases(cases) -> list[list[str]]:
    """Validate a notebook's ``cases`` parameter: a list of [model, variant] pairs with known names."""
    from .bench_models import ALL_MODELS, is_fusable
    from .params import ParameterError, check_choices

    if isinstance(cases, (str, bytes)) or not cases or not all(
            isinstance(c, (list, tuple)) and len(c) == 2 for c in cases):
        raise ParameterError(f"parameter cases must be a non-empty list of [model, variant] pairs, got {cases!r}")
    check_choices("cases (models)", [m for m, _ in cases], ALL_MODELS)
    check_choices("cases (variants)", [v for _, v in cases], VARIANTS)
    bad = [[m, v] for m, v in cases if v == "fused" and not is_fusable(m)]
    if bad:
        raise ParameterError(f"parameter cases: {bad}: variant 'fused' applies only to the ConvFirstNet and "
                             f"MBConvNet families")
    return [list(c) for c in cases]


def check_recorded_batch(profiles: pd.DataFrame, batch: int) -> int:
    """``batch`` if some profile was recorded at it, else a ParameterError listing the recorded batches."""
    from .params import ParameterError

    have = sorted(int(b) for b in profiles["batch"].unique())
    if batch not in have:
        raise ParameterError(f"parameter batch={batch}: no kernel profile recorded at this batch; "
                             f"recorded batches: {have}")
    return batch


if __name__ == "__main__":
    main()
