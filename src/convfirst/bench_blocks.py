"""Block benchmark and GPU correctness sweep of the fused kernels (chapter "Block fusion").

For each block shape and batch, in one run on one GPU: PyTorch eager (cuDNN convs), ``torch.compile``
default and max-autotune-no-cudagraphs, our unfused sequence (our grouped conv + our 1x1 matmul kernels) and our
fused kernel; plus the roofline floor ``max(W/P, Q/B)`` with P and B measured in the same run. The baselines
run the *folded* block (BatchNorm merged into conv weight and bias, as every inference engine does), as
``nn.Conv2d`` layers in channels_last, so they do the same arithmetic as the kernels.

Command line (GPU machine)::

    python -m convfirst.bench_blocks bench --batches 1 8 32 128 256 --out data/block_bench_h100.csv
    python -m convfirst.bench_blocks check --out data/kernel_check_h100.csv
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .params import ParameterError, check_choice, check_choices, check_positive_ints
from .provenance import gpu_short_name, with_provenance
from .reference import convfirst_folded_forward, mbconv_folded_forward, random_folded_params

BLOCK_BENCH_PREFIX = "block_bench"
KERNEL_CHECK_PREFIX = "kernel_check"
BLOCKS = ("convfirst", "mbconv", "gconv")
#: impl names in data/block_bench_<gpu>.csv. For block 'gconv' our kernel is 'triton'.
IMPLS = ("eager", "compile-default", "compile-max-autotune", "unfused-triton", "fused", "triton")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
#: relative-error tolerance ||out - ref|| / ||ref|| against the fp32 reference, per dtype
TOLERANCE = {"bfloat16": 1e-2, "float16": 3e-3}


@dataclass(frozen=True)
class BlockShape:
    block: str
    C: int
    H: int
    W: int
    E: int = 4

    @property
    def label(self) -> str:
        e = f", E={self.E}" if self.block != "gconv" else ""
        return f"{self.block} {self.C}@{self.H}x{self.W}{e}"


#: The shapes of the benchmark (issue 3): early to late stages of both families, and the grouped conv.
BENCH_SHAPES = (
    BlockShape("convfirst", 64, 56, 56), BlockShape("convfirst", 96, 56, 56), BlockShape("convfirst", 192, 28, 28),
    BlockShape("convfirst", 384, 14, 14), BlockShape("convfirst", 768, 7, 7),
    BlockShape("mbconv", 64, 56, 56), BlockShape("mbconv", 128, 28, 28), BlockShape("mbconv", 256, 14, 14),
    BlockShape("gconv", 96, 56, 56), BlockShape("gconv", 64, 56, 56), BlockShape("gconv", 192, 28, 28),
    BlockShape("gconv", 384, 14, 14),
)
BENCH_BATCHES = (1, 8, 32, 128, 256)


def parse_shape(text: str) -> BlockShape:
    """'convfirst:64@56' or 'mbconv:128@28x28:4' -> BlockShape."""
    try:
        block, rest = text.split(":", 1)
        parts = rest.split(":")
        c, hw = parts[0].split("@")
        h, w = (hw.split("x") + [hw])[:2]
        e = int(parts[1]) if len(parts) > 1 else 4
        shape = BlockShape(block, int(c), int(h), int(w), e)
    except ValueError as err:
        raise ParameterError(f"block shape {text!r}: write it as 'block:C@H' or 'block:C@HxW:E', "
                             f"e.g. 'convfirst:64@56'") from err
    check_choice("block", shape.block, BLOCKS)
    return shape


# ---------------------------------------------------------------------------------------------- floors
def shape_counts(shape: BlockShape, batch: int, dtype_bytes: int = 2) -> tuple[float, float]:
    """(W FLOP, Q compulsory DRAM bytes of the one-kernel form, weights included) from convfirst.counting."""
    from .counting import block_accounting, count_layers

    if shape.block == "gconv":
        with torch.device("meta"):
            conv = nn.Conv2d(shape.C, shape.C, 3, padding=1, groups=shape.C // 8, bias=True)
        layers = count_layers(conv, input_shape=(batch, shape.C, shape.H, shape.W), dtype_bytes=dtype_bytes,
                              fused_types=())
        return float(layers["flop"].sum()), float(layers["bytes"].sum())
    acc = block_accounting(shape.block, shape.C, shape.H, shape.W, shape.E, batch=batch, dtype_bytes=dtype_bytes)
    return float(acc["flop"]), float(acc["bytes_fused"])


def floor_ms(flop: float, nbytes: float, peak_flops: float, bandwidth: float) -> tuple[float, float, float]:
    """(floor, compute floor, memory floor) in ms: floor = max(W/P, Q/B)."""
    compute, memory = flop / peak_flops * 1e3, nbytes / bandwidth * 1e3
    return max(compute, memory), compute, memory


# -------------------------------------------------------------------------------- baselines (PyTorch)
class FoldedBlock(nn.Module):
    """The folded (BN merged) block as PyTorch layers: what eager and torch.compile run."""

    def __init__(self, block: str, folded: dict[str, torch.Tensor]):
        super().__init__()
        self.block = block
        hidden, c = folded["w_e"].shape
        grouped = c if block == "convfirst" else hidden
        self.conv_g = nn.Conv2d(grouped, grouped, 3, padding=1, groups=grouped // 8)
        self.conv_e = nn.Conv2d(c, hidden, 1)
        self.conv_p = nn.Conv2d(hidden, c, 1)
        with torch.no_grad():
            self.conv_g.weight.copy_(folded["w_g"])
            self.conv_g.bias.copy_(folded["b_g"])
            self.conv_e.weight.copy_(folded["w_e"].reshape(hidden, c, 1, 1))
            self.conv_e.bias.copy_(folded["b_e"])
            self.conv_p.weight.copy_(folded["w_p"].reshape(c, hidden, 1, 1))
            self.conv_p.bias.copy_(folded["b_p"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.block == "convfirst":
            return self.conv_p(F.silu(self.conv_e(self.conv_g(x)))) + x
        return self.conv_p(F.silu(self.conv_g(F.silu(self.conv_e(x))))) + x


class GroupedConv(nn.Module):
    def __init__(self, w_g: torch.Tensor, b_g: torch.Tensor):
        super().__init__()
        c = w_g.shape[0]
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c // 8)
        with torch.no_grad():
            self.conv.weight.copy_(w_g)
            self.conv.bias.copy_(b_g)

    def forward(self, x):
        return self.conv(x)


def random_gconv_params(channels: int, device="cpu", generator=None) -> dict[str, torch.Tensor]:
    w = torch.randn(channels, 8, 3, 3, generator=generator) / math.sqrt(72)
    b = 0.1 * torch.randn(channels, generator=generator)
    return {"w_g": w.to(device), "b_g": b.to(device)}


def reference_forward(block: str, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    if block == "convfirst":
        return convfirst_folded_forward(x, params)
    if block == "mbconv":
        return mbconv_folded_forward(x, params)
    w = params["w_g"]
    return F.conv2d(x, w, params["b_g"], padding=1, groups=w.shape[0] // 8)


# ------------------------------------------------------------------------------------------ the case
class BlockCase:
    """Random parameters, packed kernel weights, baseline module and inputs for one shape and batch."""

    def __init__(self, shape: BlockShape, batch: int, dtype: str = "bfloat16", device: str = "cuda",
                 n_inputs: int = 1, seed: int | None = None):
        from convfirst.kernels import pack_block_params, pack_grouped_taps

        self.shape, self.batch, self.dtype_name = shape, batch, dtype
        self.dtype = DTYPES[dtype]
        gen = torch.Generator().manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
        if shape.block == "gconv":
            params = random_gconv_params(shape.C, generator=gen)
        else:
            params = random_folded_params(shape.block, shape.C, shape.E, generator=gen)
        # round the weights to the activation dtype once: kernels, baselines and reference share them
        self.params = {k: v.to(self.dtype).to(device) for k, v in params.items()}
        if shape.block == "gconv":
            self.packed = {"w_taps": pack_grouped_taps(self.params["w_g"], self.dtype),
                           "b_g": self.params["b_g"].float()}
            self.module = GroupedConv(self.params["w_g"].float(), self.params["b_g"].float())
        else:
            self.packed = pack_block_params(shape.block, self.params, self.dtype)
            self.module = FoldedBlock(shape.block, {k: v.float() for k, v in self.params.items()})
        self.module = self.module.to(device=device, dtype=self.dtype, memory_format=torch.channels_last).eval()
        self.inputs = [self.new_input(gen, device) for _ in range(n_inputs)]

    def new_input(self, gen, device) -> torch.Tensor:
        s = self.shape
        x = torch.randn(self.batch, s.C, s.H, s.W, generator=gen).to(device=device, dtype=self.dtype)
        return x.contiguous(memory_format=torch.channels_last)

    def ours(self, impl: str) -> Callable[[torch.Tensor], torch.Tensor]:
        from convfirst.kernels import grouped_conv3x3_gw8, run_block

        if self.shape.block == "gconv":
            return lambda x: grouped_conv3x3_gw8(x, self.packed["w_taps"], self.packed["b_g"])
        return lambda x: run_block(self.shape.block, impl, x, self.packed)

    def launch_poisoned(self, x: torch.Tensor, config: dict | None = None) -> torch.Tensor:
        """Our main kernel launched into a NaN-filled output (an unwritten element stays NaN)."""
        from convfirst.kernels.convfirst_fused import launch_convfirst_block
        from convfirst.kernels.gconv import launch_grouped_conv3x3
        from convfirst.kernels.mbconv_fused import launch_mbconv_block

        p = self.packed
        out = torch.full_like(x, float("nan")).contiguous(memory_format=torch.channels_last)
        if self.shape.block == "convfirst":
            return launch_convfirst_block(x, p["w_taps"], p["b_g"], p["we_t"], p["b_e"], p["wp_t"], p["b_p"], out,
                                          config=config)
        if self.shape.block == "mbconv":
            return launch_mbconv_block(x, p["we_t"], p["b_e"], p["w_taps"], p["b_g"], p["wp_t"], p["b_p"], out,
                                       config=config)
        return launch_grouped_conv3x3(x, p["w_taps"], p["b_g"], out, config=config)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 reference from the same (upcast) inputs and weights, TF32 off."""
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.no_grad():
                return reference_forward(self.shape.block, x.float(),
                                         {k: v.float() for k, v in self.params.items()})
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64; inf if out has any NaN/inf (e.g. an unwritten, poisoned element)."""
    out64, ref64 = out.double(), ref.double()
    if not torch.isfinite(out64).all():
        return float("inf")
    return float((out64 - ref64).norm() / ref64.norm())


def tuned_config(block: str) -> str:
    """The autotuned config our kernel for ``block`` used last ('' if not tuned yet)."""
    from convfirst.kernels import convfirst_fused, gconv, mbconv_fused

    if block == "convfirst" and convfirst_fused.last_ws_config() is not None:  # the Gluon kernel (v8) ran
        return "WS," + ",".join(f"{k}={v}" for k, v in convfirst_fused.last_ws_config().items())
    if block == "gconv" and gconv.LAST_LAUNCH["ws"] is not None:  # the warp-specialised form (gconv_ws) ran
        return "WS," + ",".join(f"{k}={v}" for k, v in gconv.LAST_LAUNCH["ws"].items())
    tuner = {"convfirst": convfirst_fused.last_tuner(), "mbconv": mbconv_fused._tuned,
             "gconv": gconv._tuned_gconv}[block]
    cfg = getattr(tuner, "best_config", None) if tuner is not None else None
    if cfg is None:
        return ""
    kw = ",".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    cap = f",maxnreg={cfg.maxnreg}" if getattr(cfg, "maxnreg", None) else ""
    return f"{kw},warps={cfg.num_warps},stages={cfg.num_stages}{cap}"


# ------------------------------------------------------------------------------------- correctness
def check_case(shape: BlockShape, batch: int, dtype: str = "bfloat16", seed: int | None = None,
               impls: Sequence[str] = ("fused",)) -> list[dict]:
    """Fresh random inputs; our kernel(s) vs the fp32 reference; one row per impl."""
    case = BlockCase(shape, batch, dtype, seed=seed)
    x = case.inputs[0]
    ref = case.reference(x)
    rows = []
    for impl in impls:
        if impl in ("fused", "triton"):
            out = case.launch_poisoned(x)
        else:
            out = case.ours(impl)(x)
        torch.cuda.synchronize()
        err = relative_error(out, ref)
        rows.append({"block": shape.block, "C": shape.C, "H": shape.H, "W": shape.W, "E": shape.E,
                     "batch": batch, "dtype": dtype, "impl": "triton" if shape.block == "gconv" else impl,
                     "rel_err": err, "max_abs_err": float((out.double() - ref.double()).abs().max()),
                     "tolerance": TOLERANCE[dtype], "passed": bool(err < TOLERANCE[dtype])})
    return rows


#: Odd shapes on which every autotuning candidate config is checked (a two-part channel split, odd H and W).
CONFIG_CHECK_SHAPES = ((BlockShape("convfirst", 80, 13, 11), 2), (BlockShape("convfirst", 64, 13, 11), 1),
                       (BlockShape("mbconv", 64, 13, 11), 2), (BlockShape("mbconv", 80, 9, 15), 1),
                       (BlockShape("gconv", 96, 13, 11), 2))


def candidate_configs(block: str) -> list[dict]:
    """Every autotuning candidate of our kernel for ``block``, as launch keyword dicts."""
    from convfirst.kernels import convfirst_fused, gconv, mbconv_fused
    from convfirst.kernels._common import launch_kwargs

    configs = {"convfirst": convfirst_fused.candidate_configs, "mbconv": mbconv_fused._configs,
               "gconv": gconv._gconv_configs}[block]()
    return [launch_kwargs(cf) for cf in configs]


def check_configs(shape: BlockShape, batch: int, dtype: str = "bfloat16", log=print) -> list[dict]:
    """Every candidate config of our kernel on one (odd) shape, into NaN-poisoned outputs."""
    from convfirst.kernels._common import LAST_COMPILED

    case = BlockCase(shape, batch, dtype)
    x = case.inputs[0]
    ref = case.reference(x)
    rows = []
    for config in candidate_configs(shape.block):
        row = {"block": shape.block, "C": shape.C, "H": shape.H, "W": shape.W, "E": shape.E, "batch": batch,
               "dtype": dtype, "impl": "triton" if shape.block == "gconv" else "fused", "config": str(config),
               "tolerance": TOLERANCE[dtype]}
        try:
            out = case.launch_poisoned(x, config)
            torch.cuda.synchronize()
            k = LAST_COMPILED[shape.block]
            row.update(rel_err=relative_error(out, ref), regs=k.n_regs, spills=k.n_spills,
                       smem=k.metadata.shared)
        except Exception as exc:  # e.g. a config that needs more shared memory than the GPU has
            row.update(rel_err=float("nan"), error=f"{type(exc).__name__}: {str(exc)[:200]}")
        row["passed"] = bool(row["rel_err"] < TOLERANCE[dtype]) if "error" not in row else None
        log(f"  config {shape.label} b={batch} {dtype} {config}: rel_err={row['rel_err']:.2e} "
            f"{row.get('error', '')}")
        rows.append(row)
    return rows


def family_check_shapes(odd: bool = True) -> list[BlockShape]:
    """Every distinct block shape of the families (and its grouped conv), plus odd spatial sizes."""
    from .models import family_block_shapes

    shapes = []
    for row in family_block_shapes().itertuples():
        shapes.append(BlockShape(row.block, int(row.C), int(row.H), int(row.W), int(row.E)))
    if odd:
        shapes += [BlockShape("convfirst", 64, 13, 11), BlockShape("convfirst", 96, 9, 15),
                   BlockShape("mbconv", 64, 13, 11), BlockShape("mbconv", 80, 9, 15),
                   BlockShape("gconv", 96, 13, 11), BlockShape("gconv", 40, 7, 9)]
    gconv_cs = sorted({s.C for s in shapes if s.block == "convfirst"})
    shapes += [BlockShape("gconv", c, 28, 28) for c in gconv_cs]
    return shapes


def run_check(shapes: Sequence[BlockShape], batches: Sequence[int], dtypes: Sequence[str],
              progress: bool = True, autotune: bool = False, impls: Sequence[str] = ("fused", "unfused-triton"),
              log=None) -> pd.DataFrame:
    """Correctness of our kernels on every shape; ``autotune=False`` uses each kernel's fixed heuristic config
    (one compile per shape instead of one per candidate config; every candidate config is checked separately
    by :func:`check_configs`)."""
    import os

    previous = os.environ.get("CONVFIRST_AUTOTUNE")
    os.environ["CONVFIRST_AUTOTUNE"] = "1" if autotune else "0"
    try:
        return _run_check(shapes, batches, dtypes, progress, impls, log)
    finally:
        if previous is None:
            os.environ.pop("CONVFIRST_AUTOTUNE", None)
        else:
            os.environ["CONVFIRST_AUTOTUNE"] = previous


def _run_check(shapes, batches, dtypes, progress, impls, log) -> pd.DataFrame:
    rows = []
    todo = [(s, b, d) for s in shapes for b in batches for d in dtypes]
    it = todo
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(todo, desc="kernel check", file=sys.stdout, mininterval=5)
    for s, b, d in it:
        use = ("fused",) if s.block == "gconv" else tuple(impls)
        new = check_case(s, b, d, impls=use)
        if log is not None:
            for r in new:
                log(f"  check {s.label:28s} b={b} {d} {r['impl']:15s} rel_err={r['rel_err']:.2e} "
                    f"{'ok' if r['passed'] else 'FAILED'}")
        rows += new
    return with_provenance(pd.DataFrame(rows), layout="channels_last")


# -------------------------------------------------------------------------------------------- timing
def time_case(shape: BlockShape, batch: int, impls: Sequence[str], dtype: str, ceilings: dict,
              cuda_graph: bool = False, log=print) -> list[dict]:
    """Time each impl of one shape and batch; fused correctness checked first (raises if wrong)."""
    from .timing import bench_ms, l2_rotation_count

    bytes_in = batch * shape.C * shape.H * shape.W * 2
    n_inputs = l2_rotation_count(bytes_in * 2)
    case = BlockCase(shape, batch, dtype, n_inputs=n_inputs)
    err = relative_error(case.launch_poisoned(case.inputs[0]), case.reference(case.inputs[0]))
    if not err < TOLERANCE[dtype]:
        raise AssertionError(f"{shape.label} batch {batch} {dtype}: our kernel's relative error {err:.3g} "
                             f">= {TOLERANCE[dtype]}; not timing a wrong kernel")
    flop, nbytes = shape_counts(shape, batch, 2)
    from .ceilings import bandwidth_bytes_per_s, peak_flops
    fl, fl_c, fl_m = floor_ms(flop, nbytes, peak_flops(ceilings, dtype), bandwidth_bytes_per_s(ceilings))
    rows = []
    for impl in impls:
        if shape.block == "gconv" and impl in ("fused", "unfused-triton"):
            impl = "triton"
        if shape.block != "gconv" and impl == "triton":
            continue
        if any(r["impl"] == impl for r in rows):
            continue
        t0 = time.time()
        try:
            with torch.no_grad():
                if impl == "eager":
                    fn = case.module
                elif impl.startswith("compile"):
                    mode = {"compile-default": None, "compile-max-autotune": "max-autotune-no-cudagraphs"}[impl]
                    torch._dynamo.reset()
                    fn = torch.compile(case.module, mode=mode)
                    fn(case.inputs[0])  # compile (and autotune) before timing
                else:
                    fn = case.ours(impl)
                    fn(case.inputs[0])  # autotune before timing
                ms = bench_ms(fn, [(x,) for x in case.inputs], cuda_graph=cuda_graph)
                if impl == "unfused-triton":
                    out_err = relative_error(fn(case.inputs[0]), case.reference(case.inputs[0]))
                elif impl in ("fused", "triton"):
                    out_err = err
                else:
                    out_err = float("nan")
        except Exception as exc:  # a baseline that fails to compile is recorded as missing, not fatal
            log(f"  {shape.label} b={batch} {impl}: FAILED {type(exc).__name__}: {str(exc)[:300]}")
            continue
        config = tuned_config(shape.block) if impl in ("fused", "triton") else ""
        rows.append({"block": shape.block, "C": shape.C, "H": shape.H, "W": shape.W,
                     "E": shape.E if shape.block != "gconv" else 0, "batch": batch, "dtype": dtype,
                     "impl": impl, "ms": ms, "floor_ms": fl, "compute_floor_ms": fl_c, "memory_floor_ms": fl_m,
                     "flop": flop, "bytes": nbytes, "tflops": flop / ms / 1e9, "pct_of_floor": 100 * fl / ms,
                     "rel_err": out_err, "config": config, "cuda_graph": cuda_graph,
                     "layout": "channels_last", "baseline_form": "folded BN, nn.Conv2d layers",
                     "peak_tflops": peak_flops(ceilings, dtype) / 1e12,
                     "bandwidth_tbps": bandwidth_bytes_per_s(ceilings) / 1e12,
                     "setup_s": time.time() - t0})
        log(f"  {shape.label:28s} b={batch:<4d} {impl:22s} {ms:8.4f} ms  floor {fl:.4f}  "
            f"{100 * fl / ms:5.1f}% of floor  {config}")
    del case
    torch.cuda.empty_cache()
    return rows


def run_bench(shapes: Sequence[BlockShape], batches: Sequence[int], impls: Sequence[str], dtype: str = "bfloat16",
              max_autotune_batches: Sequence[int] | None = None, cuda_graph_batches: Sequence[int] = (),
              ceilings=None, log=print) -> pd.DataFrame:
    """The benchmark table (one row per shape, batch, impl) with provenance columns."""
    from .ceilings import measure_ceilings

    if ceilings is None:
        ceilings = measure_ceilings().iloc[0].to_dict()
    rows = []
    for shape in shapes:
        for batch in batches:
            use = [i for i in impls if i != "compile-max-autotune"
                   or max_autotune_batches is None or batch in max_autotune_batches]
            rows += time_case(shape, batch, use, dtype, ceilings, log=log)
            if batch in cuda_graph_batches:
                ours = [i for i in use if i in ("fused", "unfused-triton", "eager")]
                rows += time_case(shape, batch, ours, dtype, ceilings, cuda_graph=True, log=log)
    return with_provenance(pd.DataFrame(rows))


def speedup_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per shape and batch: ours vs the best torch.compile mode, and percent of floor."""
    d = df[~df.get("cuda_graph", False).astype(bool)] if "cuda_graph" in df else df
    keys = ["block", "C", "H", "W", "E", "batch", "dtype"]
    piv = d.pivot_table(index=keys, columns="impl", values="ms", aggfunc="median")
    floor = d.groupby(keys)["floor_ms"].median()
    out = pd.DataFrame(index=piv.index)
    ours = piv["fused"].fillna(piv.get("triton")) if "fused" in piv else piv.get("triton")
    out["ours_ms"] = ours
    comp = [c for c in ("compile-default", "compile-max-autotune") if c in piv]
    out["best_compile_ms"] = piv[comp].min(axis=1) if comp else float("nan")
    if "eager" in piv:
        out["eager_ms"] = piv["eager"]
    out["floor_ms"] = floor
    out["speedup_vs_compile"] = out["best_compile_ms"] / out["ours_ms"]
    if "eager" in piv:
        out["speedup_vs_eager"] = out["eager_ms"] / out["ours_ms"]
    out["pct_of_floor"] = 100 * out["floor_ms"] / out["ours_ms"]
    return out.reset_index()


#: The speed targets of issue 3 (H100, bf16, batch 256): (label, block, C, H, kind, required value).
#: kind 'vs_compile': best torch.compile time / ours >= value; 'floor': floor / ours >= value;
#: 'vs_cudnn': eager (cuDNN) time / ours >= value.
SPEED_TARGETS = (
    ("ConvFirst 64@56: 3x the best torch.compile", "convfirst", 64, 56, "vs_compile", 3.0),
    ("ConvFirst 64@56: 50% of the roofline floor", "convfirst", 64, 56, "floor", 0.5),
    ("ConvFirst 96@56: 3x the best torch.compile", "convfirst", 96, 56, "vs_compile", 3.0),
    ("ConvFirst 96@56: 50% of the roofline floor", "convfirst", 96, 56, "floor", 0.5),
    ("MBConv 64@56: 2.5x the best torch.compile", "mbconv", 64, 56, "vs_compile", 2.5),
    ("MBConv 128@28: 2.5x the best torch.compile", "mbconv", 128, 28, "vs_compile", 2.5),
    ("MBConv 256@14: 2.5x the best torch.compile", "mbconv", 256, 14, "vs_compile", 2.5),
    ("grouped 3x3 gw8 96@56: 2x cuDNN", "gconv", 96, 56, "vs_cudnn", 2.0),
)


#: Columns that identify one block measurement; a later run of the same key supersedes an earlier one.
BENCH_KEY = ["block", "C", "H", "W", "E", "batch", "dtype", "impl"]


def load_results(gpu: str) -> pd.DataFrame:
    """The recorded block benchmark of ``gpu`` (data/block_bench_<gpu>.csv), plain timings (no CUDA graphs).

    Only the most recent measurement of each (block, shape, batch, dtype, impl) is kept: when a kernel is
    re-timed after a change, the new row supersedes the old one (which stays in the file as history).
    """
    from .records import load_measurements, recorded_file

    df = load_measurements(recorded_file(BLOCK_BENCH_PREFIX, gpu))
    if "cuda_graph" in df:
        df = df[~df["cuda_graph"].astype(str).str.lower().eq("true")]
    latest = df.groupby(BENCH_KEY)["date"].transform("max")
    return df[df["date"] == latest].reset_index(drop=True)


def measure_or_replay(mode: str, gpu: str, shapes: Sequence[BlockShape], batches: Sequence[int],
                      dtype: str = "bfloat16", impls: Sequence[str] = ("eager", "compile-default",
                                                                      "compile-max-autotune", "unfused-triton",
                                                                      "fused"),
                      max_autotune_batches: Sequence[int] | None = (256,)) -> tuple[pd.DataFrame, str]:
    """The chapter's data: measured now (``mode='measure'``: ceilings and every impl, appended to
    data/block_bench_<gpu>.csv) or replayed from that file. Returns (rows for the requested shapes, batches and
    dtype, with a ``shape`` label column; the GPU short name)."""
    if mode == "measure":
        from .ceilings import ceilings_for
        from .records import data_path, save_measurements

        ceilings, gpu = ceilings_for("measure", gpu)
        df = run_bench(shapes, batches, impls, dtype, max_autotune_batches, ceilings=ceilings.to_dict())
        save_measurements(df, data_path(f"{BLOCK_BENCH_PREFIX}_{gpu}.csv"),
                          key=["block", "C", "H", "W", "E", "batch", "dtype", "impl", "cuda_graph"])
    else:
        df = load_results(gpu)
    keep = pd.Series(False, index=df.index)
    for s in shapes:
        keep |= (df["block"] == s.block) & (df["C"] == s.C) & (df["H"] == s.H) & (df["W"] == s.W)
    df = df[keep & df["batch"].isin(list(batches)) & (df["dtype"] == dtype)].copy()
    if df.empty:
        raise ParameterError(f"no recorded block benchmark rows for gpu={gpu!r}, dtype={dtype!r}, the requested "
                             f"shapes and batches {list(batches)}; run with mode='measure' on a GPU")
    labels = {(s.block, s.C, s.H, s.W): s.label for s in shapes}
    df["shape"] = [labels[(b, c, h, w)] for b, c, h, w in zip(df["block"], df["C"], df["H"], df["W"])]
    return df.reset_index(drop=True), gpu


def target_table(df: pd.DataFrame, batch: int = 256, dtype: str = "bfloat16") -> pd.DataFrame:
    """Each speed target: the measured value, whether it is met, and the time our kernel would need."""
    rows = []
    for label, block, c, h, kind, need in SPEED_TARGETS:
        sel = df[(df["block"] == block) & (df["C"] == c) & (df["H"] == h) & (df["batch"] == batch)
                 & (df["dtype"] == dtype)]
        times = sel.groupby("impl")["ms"].median()
        ours_impl = "triton" if block == "gconv" else "fused"
        ours = times.get(ours_impl)
        if kind == "vs_compile":
            compiled = times[[i for i in ("compile-default", "compile-max-autotune") if i in times.index]]
            ref = compiled.min() if len(compiled) else float("nan")
            ref_name = compiled.idxmin() if len(compiled) else "none measured"
        elif kind == "vs_cudnn":
            ref, ref_name = times.get("eager", float("nan")), "eager (cuDNN)"
        else:  # the floor of our own rows: computed with the P and B measured in the run that timed them
            own = sel.loc[sel["impl"] == ours_impl, "floor_ms"]
            ref, ref_name = float(own.median()) if len(own) else float("nan"), "roofline floor"
        value = ref / ours if ours else float("nan")
        rows.append({"target": label, "reference": ref_name, "reference_ms": ref, "ours_ms": ours,
                     "required": need, "measured": value, "met": bool(value >= need),
                     "ours_needed_ms": ref / need, "shortfall_x": need / value if value else float("nan")})
    return pd.DataFrame(rows)


def efficiency_table(df: pd.DataFrame, batch: int = 256, dtype: str = "bfloat16") -> pd.DataFrame:
    """Per shape and impl at one batch: ms, useful TFLOP/s, achieved DRAM TB/s (compulsory bytes / time),
    percent of floor."""
    sel = df[(df["batch"] == batch) & (df["dtype"] == dtype)].copy()
    sel["useful_tflops"] = sel["flop"] / sel["ms"] / 1e9
    sel["dram_tbps"] = sel["bytes"] / sel["ms"] / 1e9
    sel["pct_of_floor"] = 100 * sel["floor_ms"] / sel["ms"]
    cols = ["block", "C", "H", "W", "impl", "ms", "floor_ms", "useful_tflops", "dram_tbps", "pct_of_floor"]
    return sel[cols].sort_values(["block", "C", "ms"]).reset_index(drop=True)


# --------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convfirst.bench_blocks", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="time the blocks (all impls) and write data/block_bench_<gpu>.csv")
    b.add_argument("--shapes", nargs="*", default=None, help="e.g. convfirst:64@56 mbconv:128@28 gconv:96@56")
    b.add_argument("--batches", nargs="*", type=int, default=list(BENCH_BATCHES))
    b.add_argument("--impls", nargs="*", default=["eager", "compile-default", "compile-max-autotune",
                                                  "unfused-triton", "fused"])
    b.add_argument("--max-autotune-batches", nargs="*", type=int, default=None,
                   help="batches at which compile-max-autotune runs (default: all)")
    b.add_argument("--cuda-graph-batches", nargs="*", type=int, default=[])
    b.add_argument("--dtype", default="bfloat16")
    b.add_argument("--out", default=None, help="CSV to append to (default: data/block_bench_<gpu>.csv)")
    c = sub.add_parser("check", help="correctness sweep over every family shape; data/kernel_check_<gpu>.csv")
    c.add_argument("--batches", nargs="*", type=int, default=[1, 3])
    c.add_argument("--dtypes", nargs="*", default=["bfloat16", "float16"])
    c.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from .records import data_path, save_measurements

    gpu = gpu_short_name(torch.cuda.get_device_name(0))
    if args.cmd == "bench":
        shapes = [parse_shape(s) for s in args.shapes] if args.shapes else list(BENCH_SHAPES)
        check_positive_ints("batches", args.batches)
        check_choices("impls", args.impls, IMPLS)
        check_choice("dtype", args.dtype, list(DTYPES))
        df = run_bench(shapes, args.batches, args.impls, args.dtype, args.max_autotune_batches,
                       args.cuda_graph_batches)
        out = args.out or data_path(f"{BLOCK_BENCH_PREFIX}_{gpu}.csv")
        save_measurements(df, out, key=["block", "C", "H", "W", "E", "batch", "dtype", "impl", "cuda_graph"])
        print(speedup_table(df).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    else:
        check_positive_ints("batches", args.batches)
        check_choices("dtypes", args.dtypes, list(DTYPES))
        df = run_check(family_check_shapes(), args.batches, args.dtypes, impls=("fused",))
        df["check"] = "family sweep (fixed heuristic config)"
        df["config"] = "heuristic (no autotune)"
        rows = []
        for shape, batch in CONFIG_CHECK_SHAPES:  # every autotuning candidate, on odd shapes
            rows += check_configs(shape, batch, "bfloat16")
        per_config = pd.DataFrame(rows)
        per_config["check"] = "every autotuning config"
        with_provenance(per_config, layout="channels_last")
        df = pd.concat([df, per_config], ignore_index=True, sort=False)
        out = args.out or data_path(f"{KERNEL_CHECK_PREFIX}_{gpu}.csv")
        save_measurements(df, out, key=["block", "C", "H", "W", "E", "batch", "dtype", "impl"])
        summary = df.groupby(["check", "block", "impl", "dtype"]).agg(shapes=("rel_err", "size"),
                                                             max_rel_err=("rel_err", "max"),
                                                             passed=("passed", "all"))
        print(summary.to_string())
        if not df["passed"].fillna(False).astype(bool).all():
            print(df[~df["passed"].fillna(False).astype(bool)].to_string())
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
