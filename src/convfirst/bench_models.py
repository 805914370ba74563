"""Whole-model latency, throughput and computational efficiency on one GPU: ConvFirstNet against baselines.

One run measures, on one GPU and in one process, every (model, variant, batch) case of a plan and the
device's peak matmul rate P, so that efficiencies ``E = W / (T * P)`` and speed-up ratios compare numbers
taken side by side. The study's method (STUDY.md section 7) applies throughout:

- every model is in ``eval()`` mode with bf16 weights *and* activations (``model.to(torch.bfloat16)``, no
  autocast, so no per-call weight casts), and ``torch.channels_last`` is set explicitly on the model and the
  input (torch.compile's own layout heuristic switches off for grouped convs);
- variants: ``eager`` (PyTorch, cuDNN), ``compile-default`` (``torch.compile``), ``compile-max-autotune``
  (``mode="max-autotune-no-cudagraphs"``), ``fused`` (:func:`convfirst.kernels.fuse`, one kernel per
  residual block) and ``fused-compile`` (the fused model under ``torch.compile``); the fused output is
  checked against the unfused model before it is timed;
- time is the median of many calls (``triton.testing.do_bench``) rotating distinct random inputs, with and
  without CUDA-graph replay where launch gaps matter (``cuda_graphs`` column).

W counts 2 FLOP per multiply-add of one forward pass (:mod:`convfirst.counting`); ``efficiency`` is
``W * batch / (ms * 1e-3 * P)`` with P the bf16 matmul rate measured at the start of the same run.

Runnable on a GPU machine (rows are appended to ``data/model_bench_<gpu>.csv``)::

    python -m convfirst.bench_models --plan budget
    python -m convfirst.bench_models --models convnext_tiny convfirstnet_t --variants eager fused --batches 256
"""
from __future__ import annotations

import argparse
import copy
import functools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd

from .params import ParameterError, check_choice, check_choices, check_positive_ints

MODEL_BENCH_PREFIX = "model_bench"
VARIANTS = ("eager", "compile-default", "compile-max-autotune", "fused", "fused-compile")
COMPILED_VARIANTS = ("compile-default", "compile-max-autotune", "fused-compile")
FUSED_VARIANTS = ("fused", "fused-compile")
BATCHES = (1, 8, 32, 64, 128, 256)
DTYPES = ("bfloat16", "float16")

CONVFIRSTNET_FAMILY = ("convfirstnet_p", "convfirstnet_n", "convfirstnet_h", "convfirstnet_t", "convfirstnet_s")
MBCONVNET_FAMILY = ("mbconvnet_p", "mbconvnet_n", "mbconvnet_h", "mbconvnet_t", "mbconvnet_s")
BASELINES = ("convnext_nano", "convnext_tiny", "convnext_small",
             "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
             "resnet50", "mobilenetv3_large_100")
ALL_MODELS = CONVFIRSTNET_FAMILY + MBCONVNET_FAMILY + BASELINES

#: The reference model of every speed-up: ConvNeXt-T under its best torch.compile mode.
REFERENCE_MODEL = "convnext_tiny"
#: The equal-shape control (ConvNeXt-T's widths and depths, ConvFirst blocks).
CONTROL_MODEL = "convfirstnet_t"
#: The member with about half of ConvNeXt-T's GMAC (the 4x target of the issue).
HALF_GMAC_MODEL = "convfirstnet_h"

#: Resolution at which the cited ImageNet top-1 of each EfficientNet was evaluated (timm's test size);
#: these models are also measured at 224 so that every model can be compared at one resolution.
NATIVE_RESOLUTION = {"efficientnet_b1": 240, "efficientnet_b2": 288, "efficientnet_b3": 320,
                     "efficientnet_b4": 384}

#: Columns that identify one measurement inside a run (with the provenance columns).
KEY_COLUMNS = ("model", "variant", "batch", "resolution", "dtype", "cuda_graphs")


def model_family(name: str) -> str:
    """Family label used by the plots: 'ConvFirstNet', 'MBConvNet', 'ConvNeXt', 'EfficientNet', ..."""
    for prefix, label in (("convfirstnet", "ConvFirstNet"), ("mbconvnet", "MBConvNet"),
                          ("convnext", "ConvNeXt"), ("efficientnet", "EfficientNet"),
                          ("resnet", "ResNet"), ("mobilenetv3", "MobileNetV3")):
        if name.startswith(prefix):
            return label
    return "other"


def is_fusable(name: str) -> bool:
    """Whether ``fuse(model)`` applies: the ConvFirstNet and MBConvNet families."""
    return name in CONVFIRSTNET_FAMILY or name in MBCONVNET_FAMILY


# ----------------------------------------------------------------------------------------------------------
# What to measure
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchCase:
    """One model under one variant at one resolution, timed at ``batches`` (CUDA graphs at ``graph_batches``)."""

    model: str
    variant: str
    batches: tuple[int, ...]
    resolution: int = 224
    graph_batches: tuple[int, ...] = ()
    priority: int = 5  # 0 first; a run that hits its time budget drops the highest numbers

    def __post_init__(self):
        check_choice("model", self.model, ALL_MODELS)
        check_choice("variant", self.variant, VARIANTS)
        if self.variant in FUSED_VARIANTS and not is_fusable(self.model):
            raise ParameterError(f"variant={self.variant!r} applies only to the ConvFirstNet/MBConvNet families, "
                                 f"not to model={self.model!r}")
        check_positive_ints("batches", list(self.batches))
        bad = [b for b in self.graph_batches if b not in self.batches]
        if bad:
            raise ParameterError(f"graph_batches {bad} are not among batches {list(self.batches)}")


def full_plan(models: Sequence[str] = ALL_MODELS, variants: Sequence[str] = VARIANTS,
              batches: Sequence[int] = BATCHES, graph_batches: Sequence[int] = BATCHES) -> list[BenchCase]:
    """Every applicable (model, variant) at every batch, with and without CUDA graphs; hours of GPU time."""
    models = check_choices("models", list(models), ALL_MODELS)
    variants = check_choices("variants", list(variants), VARIANTS)
    batches = tuple(check_positive_ints("batches", list(batches)))
    graphs = tuple(b for b in graph_batches if b in batches)
    cases = []
    for m in models:
        for v in variants:
            if v in FUSED_VARIANTS and not is_fusable(m):
                continue
            cases.append(BenchCase(m, v, batches, 224, graphs))
            if m in NATIVE_RESOLUTION:
                cases.append(BenchCase(m, v, batches, NATIVE_RESOLUTION[m], graphs))
    return cases


def budget_plan(batches: Sequence[int] = BATCHES, *, max_autotune: bool = False) -> list[BenchCase]:
    """The plan that fits one device call of about five minutes (what the recorded run measured).

    In priority order (a run that reaches its time budget drops the rest, and the chapter lists what it
    dropped): full batch sweeps, with CUDA graphs at batch 1 and 8, for the comparison the chapter rests on
    (ConvNeXt-T eager, the fused equal-shape control and the fused half-GMAC member) and ConvNeXt-T under
    torch.compile at batch 1, 32 and the largest batch (each new batch size is a new compile of 10-20 s);
    then the control compiled and eager; every other model in eager mode at batch 1 (with CUDA graphs) and
    the largest batch; the other family members fused (each new block shape autotunes the fused kernel);
    a few baselines compiled at the largest batch; the EfficientNets at their native resolution.
    ``max_autotune``: add ConvNeXt-T and the control under max-autotune-no-cudagraphs at the largest batch;
    its autotuning benchmarks Triton templates for every conv and matmul shape, minutes per model.
    """
    b = tuple(check_positive_ints("batches", list(batches)))
    big = (max(b),)
    ends = tuple(dict.fromkeys((min(b), max(b))))
    small = tuple(x for x in b if x <= 8)
    one = (min(b),) if min(b) <= 8 else ()
    mid = tuple(dict.fromkeys((min(b),) + tuple(x for x in b if x == 32) + (max(b),)))
    cases = [
        BenchCase(REFERENCE_MODEL, "compile-default", mid, 224, one, 0),
        BenchCase(CONTROL_MODEL, "fused", b, 224, small, 0),
        BenchCase(HALF_GMAC_MODEL, "fused", b, 224, small, 0),
        BenchCase(REFERENCE_MODEL, "eager", b, 224, small, 0),
        BenchCase(CONTROL_MODEL, "fused-compile", big, 224, (), 1),
        BenchCase(CONTROL_MODEL, "compile-default", big, 224, (), 1),
        BenchCase(CONTROL_MODEL, "eager", ends, 224, one, 1),
        BenchCase(HALF_GMAC_MODEL, "eager", ends, 224, one, 1),
    ]
    others = [m for m in CONVFIRSTNET_FAMILY + MBCONVNET_FAMILY if m not in (CONTROL_MODEL, HALF_GMAC_MODEL)]
    cases += [BenchCase(m, "eager", ends, 224, one, 2) for m in BASELINES if m != REFERENCE_MODEL]
    cases += [BenchCase(m, "eager", ends, 224, one, 2) for m in others]
    cases += [BenchCase(m, "fused", ends, 224, one, 3) for m in others]
    cases += [BenchCase(m, "compile-default", big, 224, (), 4)
              for m in ("efficientnet_b0", "resnet50", "mobilenetv3_large_100", "convnext_small", "convnext_nano")]
    cases += [BenchCase(m, "eager", big, r, (), 5) for m, r in NATIVE_RESOLUTION.items()]
    if max_autotune:
        cases += [BenchCase(REFERENCE_MODEL, "compile-max-autotune", big, 224, (), 1),
                  BenchCase(CONTROL_MODEL, "compile-max-autotune", big, 224, (), 4)]
    return sorted(cases, key=lambda c: c.priority)


def family_plan(batches: Sequence[int] = BATCHES) -> list[BenchCase]:
    """A second ~9-minute call that completes the budget plan's later priorities in a run of its own.

    The comparison it rests on first (ConvNeXt-T compiled, ConvFirstNet-T and -H fused, at the smallest and
    largest batch, ConvNeXt-T also with CUDA graphs at batch 1), so the run stands alone as the chapter's
    anchor; then every other family member fused, the baselines compiled at the largest batch, the
    EfficientNets at their native resolution. The fused models are also timed with CUDA graphs at the largest batch: without them the small
    members are bound by kernel-launch time even at batch 256 (ConvFirstNet-P on the H100: 3.1-5.3 ms in
    different runs without graphs, 1.9 ms with them).
    """
    b = tuple(check_positive_ints("batches", list(batches)))
    ends, big = tuple(dict.fromkeys((min(b), max(b)))), (max(b),)
    one = (min(b),) if min(b) <= 8 else ()
    graphs = tuple(dict.fromkeys(one + big))
    cases = [BenchCase(REFERENCE_MODEL, "compile-default", ends, 224, one, 0),
             BenchCase(CONTROL_MODEL, "fused", ends, 224, graphs, 0),
             BenchCase(HALF_GMAC_MODEL, "fused", ends, 224, graphs, 0)]
    others = [m for m in CONVFIRSTNET_FAMILY + MBCONVNET_FAMILY if m not in (CONTROL_MODEL, HALF_GMAC_MODEL)]
    cases += [BenchCase(m, "fused", ends, 224, graphs, 1) for m in others]
    cases += [BenchCase(m, "compile-default", big, 224, (), 2)
              for m in ("efficientnet_b0", "resnet50", "mobilenetv3_large_100", "convnext_small", "convnext_nano")]
    cases += [BenchCase(m, "eager", big, r, (), 3) for m, r in NATIVE_RESOLUTION.items()]
    return cases


# ----------------------------------------------------------------------------------------------------------
# Building the models
# ----------------------------------------------------------------------------------------------------------

def randomize_batchnorm(model, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters (in place).

    An untrained model's BatchNorms are identities (and ConvFirstNet zeroes the last one of each residual
    branch), which would make a fused-versus-unfused check pass trivially. Scales stay near 1 so activations
    stay O(1) through the network.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                if m.affine:
                    m.weight.copy_(0.3 + 0.4 * torch.rand(n, generator=g))
                    m.bias.copy_(0.1 * torch.randn(n, generator=g))
                if m.track_running_stats:
                    m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def create_model(name: str, *, dtype: str = "bfloat16", device: str = "cuda", seed: int = 0):
    """``name`` built by timm (ConvFirstNet/MBConvNet registered), random weights, eval, channels_last, ``dtype``."""
    import timm
    import torch

    from . import models as _family  # noqa: F401  (registers the families with timm)

    check_choice("model", name, ALL_MODELS)
    check_choice("dtype", dtype, DTYPES + ("float32",))
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    randomize_batchnorm(model, seed)
    return model.eval().to(device=device, dtype=getattr(torch, dtype), memory_format=torch.channels_last)


def fuse_model(model, resolution: int = 224, batch: int = 256, gpu: str | None = None, compiled: bool = False):
    """The model with each block swapped for the fastest of this study's implementations of it.

    The planner (:func:`convfirst.planner.block_planner`) decides per block shape from the block benchmark
    recorded for this GPU (``data/block_bench_<gpu>.csv``) at ``batch``: the fused one-kernel block, our
    unfused kernel sequence (Triton grouped conv + epilogue-fused 1x1 matmuls), or the block's own PyTorch layers
    (eager, or compiled when ``compiled=True``, i.e. for ``fused-compile``), whichever was measured fastest.
    Without recorded data for the GPU every block is fused.
    """
    from .kernels import fuse
    from .planner import block_planner
    from .provenance import gpu_short_name
    from .records import DataError

    if gpu is None:
        import torch

        gpu = gpu_short_name(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else "h100"
    try:
        alternatives = ("compile-default" if compiled else "eager", "unfused-triton")
        planner = block_planner(gpu, batch, alternatives=alternatives)
        return fuse(model, planner=planner, input_size=(3, resolution, resolution)).eval()
    except DataError:  # no ceilings or block benchmark recorded for this GPU: fuse every block
        return fuse(model).eval()


def fused_block_count(model) -> str:
    """How the residual blocks of a (possibly partly) fused model run, e.g. 'fused 6, triton-seq 12, pytorch 0'."""
    from .blocks import ConvFirstBlock, MBConvBlock
    from .kernels import count_fused_blocks, count_sequence_blocks

    pytorch = sum(isinstance(m, (ConvFirstBlock, MBConvBlock)) for m in model.modules())
    return f"fused {count_fused_blocks(model)}, triton-seq {count_sequence_blocks(model)}, pytorch {pytorch}"


def _compile(module, variant: str):
    import torch

    if variant in ("compile-default", "fused-compile"):
        return torch.compile(module, dynamic=False)
    if variant == "compile-max-autotune":
        return torch.compile(module, mode="max-autotune-no-cudagraphs", dynamic=False)
    raise ValueError(variant)


def build_variant(model, name: str, variant: str, resolution: int = 224, batch: int = 256) -> Callable:
    """The callable that the variant times (the unfused ``model`` is left untouched).

    Fused variants fuse the blocks the planner picks for ``batch`` at ``resolution`` (:func:`fuse_model`).
    """
    check_choice("variant", variant, VARIANTS)
    if variant == "eager":
        return model
    if variant in FUSED_VARIANTS:
        if not is_fusable(name):
            raise ParameterError(f"variant={variant!r} applies only to the ConvFirstNet/MBConvNet families, "
                                 f"not to model={name!r}")
        fused = fuse_model(model, resolution, batch, compiled=variant == "fused-compile")
        return fused if variant == "fused" else _compile(fused, variant)
    return _compile(model, variant)


def random_images(batch: int, resolution: int, *, sets: int, dtype: str = "bfloat16", device: str = "cuda",
                  seed: int = 0) -> list[tuple]:
    """``sets`` distinct random NCHW image batches (standard normal, never zeros) in channels_last."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(sets):
        x = torch.randn(batch, 3, resolution, resolution, generator=g, device=device, dtype=torch.float32)
        out.append((x.to(getattr(torch, dtype)).contiguous(memory_format=torch.channels_last),))
    return out


def relative_error(out, ref) -> float:
    """``||out - ref|| / ||ref||`` in float64."""
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


@dataclass
class FusedCheck:
    """Fused and unfused low-precision outputs, each against the unfused model run in float32."""

    fused_rel_err: float
    unfused_rel_err: float
    tolerance: float
    passed: bool


def check_fused_output(model, fused, resolution: int = 224, batch: int = 4, seed: int = 1) -> FusedCheck:
    """Compare the fused model with the unfused one on a fresh random batch, before any timing.

    The reference is the unfused model in float32. The fused output must be within
    ``max(3 * unfused_rel_err, 3e-2)`` of it, and never NaN: about as close as the unfused model run in the
    same low precision (rounding differs between the two, and accumulates over a network's depth), while a
    wrong index or a missing term moves the output by tens of percent.
    """
    import torch

    weight = next(model.parameters())
    x = random_images(batch, resolution, sets=1, seed=seed, dtype=str(weight.dtype).removeprefix("torch."),
                      device=weight.device.type)[0][0]
    reference_model = copy.deepcopy(model).float()
    with torch.inference_mode():
        ref = reference_model(x.float())
        low = model(x)
        out = fused(x)
    fused_err, unfused_err = relative_error(out, ref), relative_error(low, ref)
    tol = max(3 * unfused_err, 3e-2)
    passed = math.isfinite(fused_err) and fused_err <= tol
    return FusedCheck(fused_err, unfused_err, tol, passed)


# ----------------------------------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def model_gmac(name: str, resolution: int = 224) -> float:
    """Multiply-adds (GMAC) of one forward pass of one image at ``resolution``.

    From :mod:`convfirst.counting` (analytic, per layer) where it covers the model; otherwise counted by
    ``torch.utils.flop_counter.FlopCounterMode`` on a shape-only ("meta") copy of the model.
    """
    try:
        from .counting import model_summary
    except ImportError:
        return flop_counter_gmac(name, resolution)
    return float(model_summary(name, resolution=resolution)["gmac"])


def flop_counter_gmac(name: str, resolution: int = 224) -> float:
    """GMAC of one image counted by PyTorch's FlopCounterMode (2 FLOP per MAC) on the meta device."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from . import models as _family  # noqa: F401

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False).eval()
        x = torch.randn(1, 3, resolution, resolution)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2e9


def model_params_m(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def efficiency(gmac: float, batch: int, ms: float, peak_tflops: float) -> float:
    """Computational efficiency E = W / (T * P): W = 2 * GMAC * 1e9 * batch FLOP, T in ms, P in TFLOP/s."""
    return 2 * gmac * 1e9 * batch / (ms * 1e-3 * peak_tflops * 1e12)


# ----------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------

def time_forward_ms(fn: Callable, inputs: Sequence[tuple], *, cuda_graph: bool = False,
                    min_calls: int = 10) -> float:
    """Median ms of one forward call; the repeat window grows so that at least ``min_calls`` calls are timed."""
    import torch

    from .timing import bench_ms

    with torch.inference_mode():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for args in inputs:
            fn(*args)
        end.record()
        torch.cuda.synchronize()
        estimate = start.elapsed_time(end) / len(inputs)
        rep_ms = min(max(100.0, min_calls * estimate), 2000.0)
        return bench_ms(fn, inputs, warmup_ms=max(25.0, 2 * estimate), rep_ms=rep_ms, cuda_graph=cuda_graph)


@dataclass
class RunResult:
    """What one run produced: the rows, the cases skipped for time, and the cases that failed."""

    rows: pd.DataFrame
    skipped: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)


def _release(torch):
    import gc

    gc.collect()
    torch.cuda.empty_cache()


def measure_case(case: BenchCase, *, peak_tflops: float, dtype: str = "bfloat16",
                 deadline: float = math.inf, progress: Callable[[str], None] = print) -> tuple[list[dict], list[dict]]:
    """Rows for one :class:`BenchCase` (one per batch and CUDA-graph setting) and the batches it skipped."""
    import torch
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    model = create_model(case.model, dtype=dtype)
    gmac = model_gmac(case.model, case.resolution)
    params_m = model_params_m(model)
    check = None
    t_build = time.perf_counter()
    runner = build_variant(model, case.model, case.variant, case.resolution, max(case.batches))
    fused_blocks = fused_block_count(getattr(runner, "_orig_mod", runner)) if case.variant in FUSED_VARIANTS else ""
    if case.variant in FUSED_VARIANTS:
        # checked at the first timed batch, so a compiled variant compiles nothing extra for the check
        check = check_fused_output(model, runner, case.resolution, batch=case.batches[0])
        if not check.passed:
            raise AssertionError(f"{case.model} {case.variant}: fused output differs from the unfused model "
                                 f"(relative error {check.fused_rel_err:.3g} > tolerance {check.tolerance:.3g}; "
                                 f"unfused {dtype} error {check.unfused_rel_err:.3g})")
    build_s = time.perf_counter() - t_build  # fusing, and for fused-compile the compile of the first batch
    rows, skipped = [], []
    for batch in case.batches:
        if time.time() > deadline:
            skipped.append({**asdict(case), "batches": batch, "why": "time budget"})
            continue
        progress(f"{case.model} {case.variant} b={batch} r={case.resolution}")
        bytes_per_input = batch * 3 * case.resolution ** 2 * 2
        from .timing import l2_rotation_count

        inputs = random_images(batch, case.resolution, sets=l2_rotation_count(bytes_per_input), dtype=dtype)
        t0 = time.perf_counter()
        with torch.inference_mode():
            runner(*inputs[0])  # compilation (compiled variants), autotuning, cuDNN plan selection
        torch.cuda.synchronize()
        first_call_s = time.perf_counter() - t0
        for graphs in ([False, True] if batch in case.graph_batches else [False]):
            ms = time_forward_ms(runner, inputs, cuda_graph=graphs)
            rows.append({
                "model": case.model, "family": model_family(case.model), "variant": case.variant,
                "batch": batch, "resolution": case.resolution, "dtype": dtype, "layout": "channels_last",
                "cuda_graphs": graphs, "ms": ms, "img_per_s": batch / (ms * 1e-3), "gmac": gmac,
                "params_m": params_m, "tflops": 2 * gmac * 1e9 * batch / (ms * 1e-3) / 1e12,
                "efficiency": efficiency(gmac, batch, ms, peak_tflops), "peak_tflops": peak_tflops,
                "first_call_s": first_call_s + (build_s if batch == case.batches[0] else 0.0),
                "fused_blocks": fused_blocks,
                "fused_rel_err": check.fused_rel_err if check else float("nan"),
                "unfused_rel_err": check.unfused_rel_err if check else float("nan"),
            })
        del inputs
    del runner, model
    if case.variant in COMPILED_VARIANTS:
        torch._dynamo.reset()
    _release(torch)
    return rows, skipped


def run_plan(cases: Sequence[BenchCase], *, dtype: str = "bfloat16", budget_s: float = math.inf,
             save_to: str | Path | None = None, log: Callable[[str], None] | None = None) -> RunResult:
    """Measure the device ceilings, then every case (tqdm progress), stamping one provenance on all rows.

    Cases run in priority order; once ``budget_s`` seconds have passed the remaining batches are skipped and
    listed in :attr:`RunResult.skipped`. A case that fails (e.g. a fused check) is listed in
    :attr:`RunResult.failed` and the run goes on. With ``save_to``, rows are appended there
    (:func:`convfirst.records.save_measurements`) after every case, so a run cut short keeps what it measured.
    """
    import torch
    from tqdm.auto import tqdm

    from .ceilings import measure_ceilings
    from .provenance import environment_info
    from .records import save_measurements

    check_choice("dtype", dtype, DTYPES)
    if not torch.cuda.is_available():
        raise RuntimeError("run_plan needs a CUDA GPU; without one the chapter replays data/model_bench_<gpu>.csv")
    start = time.time()
    deadline = start + budget_s
    ceilings = measure_ceilings().iloc[0]
    peak = float(ceilings["bf16_tflops" if dtype == "bfloat16" else "fp16_tflops"])
    env = environment_info()  # one stamp (date) for the whole run: rows of one run share it
    result = RunResult(rows=pd.DataFrame())
    all_rows = []
    bar = tqdm(list(cases), desc="model benchmark", unit="case")
    for case in bar:
        if time.time() > deadline:
            result.skipped.append({**asdict(case), "why": "time budget"})
            continue
        try:
            rows, skipped = measure_case(case, peak_tflops=peak, dtype=dtype, deadline=deadline,
                                         progress=bar.set_postfix_str)
        except Exception as err:  # keep going: one broken case must not lose the run
            result.failed.append({**asdict(case), "error": f"{type(err).__name__}: {err}"})
            if log:
                log(f"FAILED {case.model} {case.variant}: {type(err).__name__}: {err}")
            _release(torch)
            continue
        result.skipped.extend(skipped)
        for r in rows:
            r.update(env, bandwidth_tbps=float(ceilings["copy_tbps"]))
        if rows and save_to is not None:
            save_measurements(pd.DataFrame(rows), save_to, key=KEY_COLUMNS)
        all_rows.extend(rows)
        if log:
            for r in rows:
                log(f"{r['model']:<22} {r['variant']:<21} b={r['batch']:<4} r={r['resolution']} "
                    f"graphs={int(r['cuda_graphs'])} {r['ms']:9.3f} ms {r['img_per_s']:10.0f} img/s "
                    f"E={100 * r['efficiency']:5.1f}%")
    result.rows = pd.DataFrame(all_rows)
    return result


# ----------------------------------------------------------------------------------------------------------
# Reading a run back: the tables of the chapter
# ----------------------------------------------------------------------------------------------------------

def load_model_bench(gpu: str) -> pd.DataFrame:
    """All recorded rows of ``data/model_bench_<gpu>.csv`` (a clear error listing GPUs with data if none)."""
    from .records import load_measurements, recorded_file

    df = load_measurements(recorded_file(MODEL_BENCH_PREFIX, gpu))
    df["cuda_graphs"] = df["cuda_graphs"].astype(str).str.lower().isin(["true", "1"])
    return df


def latest_run(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of the most recent run (all rows of one run share one ``date`` stamp)."""
    if df.empty:
        raise ParameterError("no model benchmark rows to select a run from")
    return df[df["date"] == df["date"].max()].reset_index(drop=True)


def recorded_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows a chapter shows: the anchor run in full, plus, for every case the anchor run did not reach, the
    most recent measurement of it from another run.

    The anchor is the most recent run that measured the comparison the targets rest on: fused rows and a
    torch.compile row of the reference model (else the most recent run with fused rows, else the most recent
    run), so that a later run that only re-times one model, say after a kernel change, does not become the
    chapter's anchor on its own, and the speed targets are read from one run. A case is a (model, variant,
    batch, resolution, CUDA graphs) combination; a run that ran out of time, or a later run that adds, say, one
    max-autotune case, leaves cases that other runs fill in, the most recent winning. For the fused variants
    this means rows of other commits (what ``fused`` installs changes as the kernels and the planner improve),
    so the chapters show each row's commit. Only runs made from a committed tree are used to fill in (a
    ``commit`` without ``+dirty``), so every row shown can be traced to code in the repository. Every row keeps
    its own ``date``, ``commit`` and ``peak_tflops`` (E uses the P of its own run).
    """
    is_fused = df["variant"].isin(FUSED_VARIANTS)
    is_ref = (df["model"] == REFERENCE_MODEL) & df["variant"].isin(["compile-default", "compile-max-autotune"])
    complete = df["date"].isin(set(df.loc[is_fused, "date"]) & set(df.loc[is_ref, "date"]))
    anchor = latest_run(df[complete] if complete.any() else df[is_fused] if is_fused.any() else df)
    anchor = df[df["date"] == anchor["date"].iloc[0]].reset_index(drop=True)
    clean = ~df["commit"].astype(str).str.contains("dirty")
    other = df[(df["date"] != anchor["date"].iloc[0]) & clean]
    other = other[other["date"] == other.groupby(list(KEY_COLUMNS))["date"].transform("max")]
    have = set(map(tuple, anchor[list(KEY_COLUMNS)].astype(str).values))
    missing = [tuple(r) not in have for r in other[list(KEY_COLUMNS)].astype(str).values]
    return pd.concat([anchor, other[missing]], ignore_index=True)


def best_latency(df: pd.DataFrame, variants: Sequence[str] | None = None) -> pd.DataFrame:
    """Per (model, resolution, batch): the fastest row among ``variants`` (any CUDA-graph setting).

    The row keeps its ``variant`` and ``cuda_graphs`` so a table can say which setting won.
    """
    sel = df if variants is None else df[df["variant"].isin(variants)]
    idx = sel.groupby(["model", "resolution", "batch"])["ms"].idxmin()
    return sel.loc[idx].reset_index(drop=True)


def reference_throughput(df: pd.DataFrame, batch: int, reference: str = REFERENCE_MODEL,
                         resolution: int = 224) -> pd.Series:
    """The reference model's best torch.compile row at ``batch`` (the denominator of every speed-up)."""
    ref = best_latency(df[(df["model"] == reference) & (df["resolution"] == resolution) & (df["batch"] == batch)],
                       ["compile-default", "compile-max-autotune"])
    if ref.empty:
        raise ParameterError(f"no torch.compile measurement of {reference} at batch {batch} in this run")
    return ref.iloc[0]


def model_table(df: pd.DataFrame, batches: Sequence[int] = (1, 256), reference: str = REFERENCE_MODEL,
                accuracy: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (model, resolution): params, GMAC, best latency at each of ``batches`` (and which variant),
    img/s and E at the largest batch, speed-up over the reference's best torch.compile throughput at that
    batch, and the cited top-1 if ``accuracy`` is given.

    ``accuracy``: a cited table with columns model, top1, source (and ``eval_img_size``, the input size the
    top-1 belongs to). Our families get "not measured here": they were not trained on ImageNet here.
    """
    big = max(batches)
    best = best_latency(df)
    ref = reference_throughput(df, big, reference)
    out = best.groupby(["model", "resolution"]).agg(family=("family", "first"), params_m=("params_m", "first"),
                                                   gmac=("gmac", "first")).reset_index()
    key = list(zip(out["model"], out["resolution"]))
    for b in batches:
        at = best[best["batch"] == b].set_index(["model", "resolution"])
        out[f"ms_b{b}"] = [at["ms"].get(k, float("nan")) for k in key]
        out[f"variant_b{b}"] = [_setting(at, k) for k in key]
    at = best[best["batch"] == big].set_index(["model", "resolution"])
    out[f"img_per_s_b{big}"] = [at["img_per_s"].get(k, float("nan")) for k in key]
    out[f"efficiency_b{big}"] = [at["efficiency"].get(k, float("nan")) for k in key]
    out[f"speedup_vs_{reference}"] = out[f"img_per_s_b{big}"] / ref["img_per_s"]
    if accuracy is not None:
        cols = [c for c in ("model", "top1", "eval_img_size", "source") if c in accuracy.columns]
        acc = accuracy[cols].drop_duplicates("model").rename(columns={"eval_img_size": "top1_img_size",
                                                                     "source": "top1_source"})
        out = out.merge(acc, on="model", how="left")
        ours = out["model"].map(is_fusable)
        out["top1"] = out["top1"].astype(object).where(~ours, "not measured here")
        out.loc[ours, "top1_source"] = "no ImageNet training was run in this study"
    return out.sort_values(["family", "gmac", "resolution"]).reset_index(drop=True)


def _setting(rows: pd.DataFrame, key) -> str:
    """'variant' or 'variant + graphs' of a best_latency row (empty when the key is absent)."""
    if key not in rows.index:
        return ""
    r = rows.loc[key]
    return f"{r['variant']} + graphs" if bool(r["cuda_graphs"]) else str(r["variant"])


def four_x_decomposition(df: pd.DataFrame, batch: int = 256, reference: str = REFERENCE_MODEL,
                         members: Sequence[str] = CONVFIRSTNET_FAMILY,
                         variants: Sequence[str] = FUSED_VARIANTS) -> pd.DataFrame:
    """speed-up = (W_ref / W_member) x (E_member / E_ref), per ConvFirstNet member, at ``batch``.

    The reference is ConvNeXt-T under its best torch.compile mode; each member under its best fused variant.
    The product of the two measured ratios equals the measured throughput ratio exactly (same P, same batch).
    """
    ref = reference_throughput(df, batch, reference)
    best = best_latency(df[(df["batch"] == batch) & (df["resolution"] == 224)], variants)
    rows = []
    for m in members:
        r = best[best["model"] == m]
        if r.empty:
            continue
        r = r.iloc[0]
        arithmetic = ref["gmac"] / r["gmac"]
        eff = r["efficiency"] / ref["efficiency"]
        rows.append({"model": m, "variant": r["variant"], "gmac": r["gmac"], "arithmetic_ratio": arithmetic,
                     "efficiency": r["efficiency"], "efficiency_ratio": eff, "speedup": arithmetic * eff,
                     "measured_throughput_ratio": r["img_per_s"] / ref["img_per_s"],
                     "reaches_4x": arithmetic * eff >= 4.0})
    return pd.DataFrame(rows, columns=["model", "variant", "gmac", "arithmetic_ratio", "efficiency",
                                       "efficiency_ratio", "speedup", "measured_throughput_ratio", "reaches_4x"])


def benchmark_rows(mode: str, gpu: str, *, plan: str = "budget", batches: Sequence[int] = BATCHES,
                   budget_s: float = math.inf, max_autotune: bool = False,
                   log: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, str]:
    """The rows a chapter shows, and the GPU they belong to.

    ``mode='measure'``: run ``plan`` ('budget' or 'full') now on this machine's GPU, append the rows to
    ``data/model_bench_<gpu>.csv`` and return them (``gpu`` becomes this machine's); ``mode='replay'``: the
    most recent recorded run of ``gpu`` with earlier runs' PyTorch rows for the cases it lacks
    (:func:`recorded_rows`).
    """
    from .provenance import DATA_DIR, gpu_short_name

    check_choice("plan", plan, ("budget", "full"))
    if mode == "measure":
        import torch

        gpu = gpu_short_name(torch.cuda.get_device_name(0))
        cases = budget_plan(batches, max_autotune=max_autotune) if plan == "budget" else full_plan(batches=batches)
        result = run_plan(cases, budget_s=budget_s, save_to=DATA_DIR / f"{MODEL_BENCH_PREFIX}_{gpu}.csv", log=log)
        for f in result.failed:
            print(f"FAILED {f['model']} {f['variant']}: {f['error']}")
        if result.rows.empty:
            raise RuntimeError("the model benchmark measured nothing (see the failures above)")
        return result.rows, gpu
    if mode != "replay":
        raise ParameterError(f"mode={mode!r}: expected 'measure' or 'replay' (see convfirst.params.resolve_mode)")
    return recorded_rows(load_model_bench(gpu)), gpu


def plan_coverage(df: pd.DataFrame, cases: Sequence[BenchCase]) -> pd.DataFrame:
    """For each planned case: the batches measured in ``df`` and the batches planned but not measured."""
    rows = []
    for c in cases:
        got = df[(df["model"] == c.model) & (df["variant"] == c.variant) & (df["resolution"] == c.resolution)]
        measured = sorted(set(int(b) for b in got["batch"]))
        rows.append({"model": c.model, "variant": c.variant, "resolution": c.resolution,
                     "measured_batches": measured, "missing_batches": [b for b in c.batches if b not in measured]})
    return pd.DataFrame(rows)


#: The throughput each target member must reach, as a multiple of the reference's best torch.compile throughput.
TARGET_SPEEDUPS = {CONTROL_MODEL: 2.5, HALF_GMAC_MODEL: 4.0}


def speed_targets(df: pd.DataFrame, batch: int = 256, reference: str = REFERENCE_MODEL) -> pd.DataFrame:
    """The issue's three speed targets, measured: required value, measured value, met or not (NaN: not measured).

    - the equal-shape control, fused: throughput >= 2.5x the reference's best torch.compile throughput;
    - the equal-shape control, fused: E >= 50 % of the measured bf16 peak;
    - the half-GMAC member, fused: throughput >= 4x the reference's best torch.compile throughput.
    """
    ref = reference_throughput(df, batch, reference)
    best = best_latency(df[(df["batch"] == batch) & (df["resolution"] == 224)], FUSED_VARIANTS).set_index("model")

    def get(model, col):
        return float(best.loc[model, col]) if model in best.index else float("nan")

    rows = [
        ("equal-shape control: throughput over ConvNeXt-T (best torch.compile)", CONTROL_MODEL,
         TARGET_SPEEDUPS[CONTROL_MODEL], get(CONTROL_MODEL, "img_per_s") / ref["img_per_s"]),
        ("equal-shape control: computational efficiency E", CONTROL_MODEL, 0.5, get(CONTROL_MODEL, "efficiency")),
        ("half-GMAC member: throughput over ConvNeXt-T (best torch.compile)", HALF_GMAC_MODEL,
         TARGET_SPEEDUPS[HALF_GMAC_MODEL], get(HALF_GMAC_MODEL, "img_per_s") / ref["img_per_s"]),
    ]
    out = pd.DataFrame(rows, columns=["target", "model", "required", "measured"])
    out["met"] = [bool(m >= r) if m == m else None for r, m in zip(out["required"], out["measured"])]
    out["reference"] = f"{reference} {ref['variant']} at {ref['ms']:.2f} ms"
    return out


def sequence_runs_pair(width: int, expansion: int = 4) -> bool:
    """Whether a ConvFirst sequence block of this width runs its two 1x1 layers as the pair kernel: the models'
    sequence backend is "pair" (``kernels.unfused.SEQUENCE_GEMM``) and the kernel takes the width (where it was
    also timed faster at the shape's first call; at the widths the families use on the H100 it was)."""
    from convfirst.kernels import pair_ws, unfused

    return unfused.SEQUENCE_GEMM == "pair" and pair_ws.pair_supported(width, expansion * width) is None


def matmul_headroom(df: pd.DataFrame, epilogue: pd.DataFrame, models: Sequence[str] = (CONTROL_MODEL, HALF_GMAC_MODEL),
                    batch: int = 256, reference: str = REFERENCE_MODEL) -> pd.DataFrame:
    """An estimate, from measured rows, of what the 1x1 layers of the unfused stages cost against cuBLAS: for
    each stage of ``models`` and each layer (expand, project) timed in ``epilogue`` (``compare_gemm``'s rows:
    ours with its epilogue = the faster of ``triton-tma`` (part ``epilogue``) and ``gluon-ws-ordered`` (part
    ``gemm``), the kernels the models run under CUDA graphs; ``cublas-mm`` = the library's matmul alone, no
    bias, no epilogue (part ``epilogue``); the most recent row of each), blocks x (ours - cuBLAS's matmul).
    This is the time the model would save if those layers ran at cuBLAS's matmul time with a free epilogue,
    beside the model's best fused time in ``df`` and the time each speed target needs (``speed_targets``'s
    reference at ``batch``).

    Stages whose sequence blocks run both 1x1 layers as one pair-kernel launch (:func:`sequence_runs_pair`) are
    left out: the model does not run those two products there.

    Columns: model, stage, C, H, layer, blocks, ours_ms, cublas_mm_ms, saving_ms, then per model (repeated on
    its rows) model_ms (measured), model_ms_with_saving (estimate) and target_ms (needed for its target)."""
    from .models import MODEL_SPECS, stage_resolutions

    if "part" in epilogue:
        ordered = epilogue[(epilogue["part"] == "gemm") & (epilogue["impl"] == "gluon-ws-ordered")]
        epi = pd.concat([epilogue[epilogue["part"] == "epilogue"], ordered])
    else:
        epi = epilogue
    if "silu_tanh" in epi:  # only the SiLU as shipped (hardware tanh in fp32)
        epi = epi[epi["silu_tanh"].isna() | (epi["silu_tanh"].astype(str).isin(["", "f32"]))]
    if "layer" not in epi:
        epi = epi.assign(layer="expand")
    latest = epi.sort_values("date").groupby(["block", "C", "H", "layer", "impl"])["ms"].last()
    ref = reference_throughput(df, batch, reference)
    best = best_latency(df[(df["batch"] == batch) & (df["resolution"] == 224)], FUSED_VARIANTS).set_index("model")
    rows = []
    for name in models:
        spec = MODEL_SPECS[name]
        model_ms = float(best.loc[name, "ms"]) if name in best.index else float("nan")
        target_ms = float(ref["ms"]) / TARGET_SPEEDUPS[name] if name in TARGET_SPEEDUPS else float("nan")
        per_model = []
        for stage, (width, depth, h) in enumerate(zip(spec.widths, spec.depths, stage_resolutions(224))):
            if spec.block == "convfirst" and sequence_runs_pair(width, spec.expansion):
                continue
            for layer in ("expand", "project"):
                lib = (spec.block, width, h, layer, "cublas-mm")
                mine = [float(latest[key]) for key in ((spec.block, width, h, layer, impl)
                                                       for impl in ("triton-tma", "gluon-ws-ordered"))
                        if key in latest.index]
                if not mine or lib not in latest.index:
                    continue
                ours = min(mine)
                per_model.append({"model": name, "stage": stage, "C": width, "H": h, "layer": layer, "blocks": depth,
                                  "ours_ms": ours, "cublas_mm_ms": float(latest[lib]),
                                  "saving_ms": depth * (ours - float(latest[lib]))})
        saving = sum(r["saving_ms"] for r in per_model)
        for r in per_model:
            r.update(model_ms=model_ms, model_ms_with_saving=model_ms - saving, target_ms=target_ms)
        rows += per_model
    return pd.DataFrame(rows, columns=["model", "stage", "C", "H", "layer", "blocks", "ours_ms", "cublas_mm_ms",
                                       "saving_ms", "model_ms", "model_ms_with_saving", "target_ms"])


def throughput_points(df: pd.DataFrame, batch: int = 256, resolution: int = 224) -> pd.DataFrame:
    """Per model the best PyTorch setting (eager or torch.compile) and, for our families, the best fused one,
    at ``batch``: the points of the throughput-against-GMAC and efficiency-gap figures."""
    sel = df[(df["batch"] == batch) & (df["resolution"] == resolution)].copy()
    sel["implementation"] = sel["variant"].map(lambda v: "fused kernels" if v in FUSED_VARIANTS
                                               else "PyTorch (eager or torch.compile)")
    idx = sel.groupby(["model", "implementation"])["ms"].idxmin()
    out = sel.loc[idx].reset_index(drop=True)
    out["gflop"] = 2 * out["gmac"] * out["batch"]
    return out.sort_values(["family", "gmac"]).reset_index(drop=True)


def latency_by_batch(df: pd.DataFrame, models: Sequence[str], resolution: int = 224) -> pd.DataFrame:
    """Per (model, variant, batch) of ``models`` the faster of with and without CUDA graphs."""
    sel = df[df["model"].isin(list(models)) & (df["resolution"] == resolution)]
    idx = sel.groupby(["model", "variant", "batch"])["ms"].idxmin()
    return sel.loc[idx].sort_values(["model", "variant", "batch"]).reset_index(drop=True)


def model_waterline_from_profile(gpu: str, model: str = CONTROL_MODEL, batch: int = 256,
                                 variants: Sequence[str] = ("fused", "compile-default", "eager")) -> dict | None:
    """The waterline of ``model`` from the kernel profile recorded on ``gpu`` (``data/kernel_profile_<gpu>.csv``).

    Takes the first of ``variants`` that has a recorded profile at ``batch``; returns
    :func:`convfirst.analysis.model_waterline`'s dict plus ``variant`` and ``peak_flops``/``bandwidth`` of the
    recorded ceilings, or None when no profile of the model is recorded.
    """
    from .analysis import count_model_layers, model_waterline
    from .ceilings import bandwidth_bytes_per_s, load_ceilings, peak_flops
    from .profiling import load_kernel_profiles
    from .records import DataError

    try:
        profiles = load_kernel_profiles(gpu)
        ceilings = load_ceilings(gpu)
    except DataError:
        return None
    for variant in variants:
        kernels = profiles[(profiles["model"] == model) & (profiles["variant"] == variant)
                           & (profiles["batch"] == batch) & (profiles["dtype"] == "bfloat16")]
        if kernels.empty:
            continue
        kernels = kernels.sort_values("index").reset_index(drop=True)
        P, B = peak_flops(ceilings), bandwidth_bytes_per_s(ceilings)
        layers = count_model_layers(model, batch)
        result = model_waterline(kernels, layers, P, B, fused_kernels=variant.startswith("fused"))
        result.update(variant=variant, peak_flops=P, bandwidth=B, date=str(kernels["date"].iloc[0]))
        return result
    return None


def kernels_holding_back(table: pd.DataFrame, top: int = 8) -> pd.DataFrame:
    """The kernel groups of a profile table with the most time above their roofline floor."""
    out = table.assign(excess_us=table["time_us"] - table["floor_us"],
                       kernels=table["kernels"].astype(str).str.slice(0, 60))
    out["share_of_excess"] = out["excess_us"] / out["excess_us"].clip(lower=0).sum()
    cols = ["kernels", "layers", "time_us", "floor_us", "excess_us", "share_of_excess", "fraction_of_floor", "bound"]
    return out.sort_values("excess_us", ascending=False)[cols].head(top).reset_index(drop=True)


def stage_breakdown(gpu: str, model: str = CONTROL_MODEL, batch: int = 256) -> pd.DataFrame | None:
    """Per block shape of ``model``: the block benchmark's fused and best unfused time per block, its roofline
    floor, and the stage totals (blocks x time), from ``data/block_bench_<gpu>.csv`` (chapter 3's run).

    Block times are measured on single blocks in isolation; the stage totals say which stages of the model
    the fused kernels speed up and which they slow down. None when no block benchmark is recorded; shapes the
    benchmark did not measure have NaN times.
    """
    from .models import family_block_shapes
    from .planner import UNFUSED_IMPLS, load_block_bench

    bench = load_block_bench(gpu)
    if bench is None:
        return None
    bench = bench[(bench["batch"] == batch) & (bench["dtype"] == "bfloat16")]
    shapes = family_block_shapes(names=[model])
    rows = []
    for shape in shapes.itertuples():
        sel = bench[(bench["block"] == shape.block) & (bench["C"] == shape.C) & (bench["H"] == shape.H)
                    & (bench["W"] == shape.W) & (bench["E"] == shape.E)]
        fused = sel.loc[sel["impl"] == "fused", "ms"].min()
        unfused = sel[sel["impl"].isin(UNFUSED_IMPLS)]
        best = unfused.loc[unfused["ms"].idxmin()] if len(unfused) else None
        rows.append({"block": shape.block, "C": shape.C, "H": shape.H, "blocks": shape.count,
                     "fused_ms": fused, "best_unfused_ms": best["ms"] if best is not None else float("nan"),
                     "best_unfused_impl": best["impl"] if best is not None else "",
                     "floor_ms": sel["floor_ms"].min() if len(sel) else float("nan")})
    out = pd.DataFrame(rows)
    out["fused_speedup"] = out["best_unfused_ms"] / out["fused_ms"]
    out["fused_share_of_floor"] = out["floor_ms"] / out["fused_ms"]
    out["stage_fused_ms"] = out["blocks"] * out["fused_ms"]
    out["stage_best_ms"] = out["blocks"] * out[["fused_ms", "best_unfused_ms"]].min(axis=1, skipna=False)
    out.attrs["date"] = str(bench["date"].max()) if len(bench) else ""
    return out.sort_values("H", ascending=False).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------

def main(argv: Iterable[str] | None = None) -> RunResult:
    from .provenance import DATA_DIR, gpu_short_name

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-autotune", action="store_true", help="with --plan budget: add max-autotune cases")
    ap.add_argument("--plan", choices=["budget", "family", "full", "custom"], default="custom",
                    help="budget: the recorded ~10-minute plan; family: its later priorities with the comparison "
                         "(a second call); full: everything; custom: --models/--variants")
    ap.add_argument("--models", nargs="+", default=[REFERENCE_MODEL, CONTROL_MODEL])
    ap.add_argument("--variants", nargs="+", default=["eager", "compile-default", "fused"])
    ap.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    ap.add_argument("--graph-batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    ap.add_argument("--budget-s", type=float, default=math.inf, help="skip what is left after this many seconds")
    ap.add_argument("--out", default=None, help="CSV to append rows to (default data/model_bench_<gpu>.csv)")
    args = ap.parse_args(None if argv is None else list(argv))

    import torch

    if args.plan == "budget":
        cases = budget_plan(args.batches, max_autotune=args.max_autotune)
    elif args.plan == "family":
        cases = family_plan(args.batches)
    else:
        cases = full_plan(args.models if args.plan == "custom" else ALL_MODELS,
                          args.variants if args.plan == "custom" else VARIANTS, args.batches, args.graph_batches)
    if not torch.cuda.is_available():
        raise SystemExit("python -m convfirst.bench_models needs a CUDA GPU")
    out = Path(args.out) if args.out else DATA_DIR / f"{MODEL_BENCH_PREFIX}_{gpu_short_name(torch.cuda.get_device_name(0))}.csv"
    result = run_plan(cases, dtype=args.dtype, budget_s=args.budget_s, save_to=out, log=print)
    print(f"\n{len(result.rows)} rows appended to {out}")
    for s in result.skipped:
        print("skipped (time budget):", s["model"], s["variant"], s["batches"], s["resolution"])
    for f in result.failed:
        print("FAILED:", f["model"], f["variant"], f["error"])
    return result


if __name__ == "__main__":
    main()
