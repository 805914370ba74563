"""Grouped 3x3 convolution, group width 8, NHWC, on the tensor cores (a standalone op and a shared helper).

Design in two lines: a program owns BLOCK_M consecutive pixels (flattened n, h, w order) and CK channels;
for each of the 9 taps it loads the shifted [pixels, CK] input (masked at image borders, so no padded
copy is needed) and multiplies each 16-channel slice by a 16x16 block-diagonal matrix (two 8x8 groups)
with one batched ``tl.dot``; the tensor cores do 2x the useful FLOPs, which is cheap next to the bytes.

Bytes per pixel (bf16): read C*2, write C*2, so at C=96@56x56, N=256 the floor is 308 MB / B, about
0.10 ms on an H100; the 9 shifted reads of the same rows hit L1/L2 (neighbouring programs share halos).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._common import (LAST_COMPILED, LAUNCH_OPTIONS, KernelInputError, autotuning, check_activation,
                      check_same_device, check_shape, check_weight_dtype, interpreting, launch_options, next_pow2,
                      packed_taps_rows, pick_fastest)
from .activation import silu


@triton.jit
def load_shifted_tap(tile_ptr, t, rows, ROW_STRIDE, cols, col_ok, pix_h, pix_w, pix_ok, H, W):
    """The [BLOCK_M, CK] input under tap t (dy, dx = t // 3 - 1, t % 3 - 1): row ``rows[m] + dy*W + dx`` of the
    tile, columns ``cols``; zero where the neighbour falls outside the image ('same' padding, no padded copy).

    The pixels' CK channels are contiguous, so a warp reads whole cache lines. Offsets are int32, relative to
    the tile's first row."""
    dy = t // 3 - 1
    dx = t % 3 - 1
    hh = pix_h + dy
    ww = pix_w + dx
    ok = pix_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
    a_off = (rows + (dy * W + dx)) * ROW_STRIDE
    return tl.load(tile_ptr + a_off[:, None] + cols[None, :], mask=ok[:, None] & col_ok[None, :], other=0.0)


@triton.jit
def slice_product(a, t, acc, w_taps_ptr, w_off, w_ok, C16, CK: tl.constexpr, BLOCK_M: tl.constexpr,
                  FP32_DOT: tl.constexpr):
    """acc += the [BLOCK_M, CK] tap tile ``a`` viewed as [CK//16, BLOCK_M, 16] channel slices @ tap t's 16x16
    block-diagonal weight slices (one batched dot); ``a`` is loaded whole first, so a warp reads whole lines."""
    a = tl.permute(tl.reshape(a, (BLOCK_M, CK // 16, 16)), (1, 0, 2))
    w = tl.load(w_taps_ptr + t * C16 * 16 + w_off, mask=w_ok, other=0.0)
    if FP32_DOT:
        a = a.to(tl.float32)
        w = w.to(tl.float32)
    return tl.dot(a, w, acc)


@triton.jit
def tap_weight_offsets(wc0, CK: tl.constexpr, C16):
    """Offsets (and mask) of channels [wc0, wc0 + CK)'s 16x16 slices within one tap's packed weight [C16, 16],
    shaped [CK//16, 16, 16] for :func:`slice_product`."""
    w_row = wc0 + tl.arange(0, CK // 16)[:, None, None] * 16 + tl.arange(0, 16)[None, :, None]  # input channel
    return w_row * 16 + tl.arange(0, 16)[None, None, :], w_row < C16


@triton.jit
def grouped3x3_one_tap(acc, t, tile_ptr, rows, ROW_STRIDE, cols, col_ok, w_taps_ptr, w_off, w_ok, C16,
                       pix_h, pix_w, pix_ok, H, W, CK: tl.constexpr, BLOCK_M: tl.constexpr,
                       FP32_DOT: tl.constexpr):
    """acc += (input rows shifted by tap t) @ (block-diagonal 16x16 weight slices of tap t)."""
    a = load_shifted_tap(tile_ptr, t, rows, ROW_STRIDE, cols, col_ok, pix_h, pix_w, pix_ok, H, W)
    return slice_product(a, t, acc, w_taps_ptr, w_off, w_ok, C16, CK, BLOCK_M, FP32_DOT)


@triton.jit
def grouped3x3_tap_sum(tile_ptr, rows, ROW_STRIDE, c0, C, w_taps_ptr, wc0, C16, pix_h, pix_w, pix_ok, H, W,
                       CK: tl.constexpr, BLOCK_M: tl.constexpr, UNROLL_TAPS: tl.constexpr,
                       FP32_DOT: tl.constexpr):
    """Sum over the 9 taps of a grouped 3x3 gw8 conv for BLOCK_M pixels and CK channels.

    Activation: ``tile_ptr`` points at the tile's row 0; row ``r`` starts at ``tile_ptr + r * ROW_STRIDE``
    (int32 offsets relative to the tile keep the address arithmetic narrow). Pixel ``m`` of the tile is row
    ``rows[m]``; its neighbour at (dy, dx) is row ``rows[m] + dy*W + dx``. ``pix_h``/``pix_w`` are the image
    row/column of each pixel and ``pix_ok`` marks real pixels; neighbours outside the image read as 0.
    Columns [c0, c0 + CK) are read, those at or past ``C`` as 0. Weights: packed rows [wc0, wc0 + CK) of
    ``w_taps`` [9, C16, 16]. ``UNROLL_TAPS``: unrolled taps (all loads issued early, many registers) or a
    loop the compiler can software-pipeline. Returns fp32 [CK//16, BLOCK_M, 16]: output channel
    ``16*s + k`` of the slice for pixel ``m`` at ``[s, m, k]``, without bias.
    """
    cols = c0 + tl.arange(0, CK)                       # input columns of the tile
    col_ok = cols < C
    w_off, w_ok = tap_weight_offsets(wc0, CK, C16)
    acc = tl.zeros([CK // 16, BLOCK_M, 16], dtype=tl.float32)
    if UNROLL_TAPS:
        for t in tl.static_range(9):
            acc = grouped3x3_one_tap(acc, t, tile_ptr, rows, ROW_STRIDE, cols, col_ok, w_taps_ptr, w_off, w_ok,
                                     C16, pix_h, pix_w, pix_ok, H, W, CK, BLOCK_M, FP32_DOT)
    else:
        for t in range(9):
            acc = grouped3x3_one_tap(acc, t, tile_ptr, rows, ROW_STRIDE, cols, col_ok, w_taps_ptr, w_off, w_ok,
                                     C16, pix_h, pix_w, pix_ok, H, W, CK, BLOCK_M, FP32_DOT)
    return acc


@triton.jit
def grouped3x3_kernel(x_ptr, w_taps_ptr, bias_ptr, out_ptr, NPIX, H, W, C: tl.constexpr, C16: tl.constexpr,
                      BLOCK_M: tl.constexpr, CK: tl.constexpr, APPLY_SILU: tl.constexpr,
                      UNROLL_TAPS: tl.constexpr, FP32_DOT: tl.constexpr):
    """out = [silu](grouped3x3_gw8(x) + bias) for one [BLOCK_M pixels, CK channels] tile."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pix_ok = offs < NPIX
    pix_w = offs % W
    pix_h = (offs // W) % H
    c0 = pid_c * CK
    tile_ptr = x_ptr + (pid_m * BLOCK_M).to(tl.int64) * C
    rows = tl.arange(0, BLOCK_M)
    acc = grouped3x3_tap_sum(tile_ptr, rows, C, c0, C, w_taps_ptr, c0, C16, pix_h, pix_w, pix_ok, H, W,
                             CK, BLOCK_M, UNROLL_TAPS, FP32_DOT)
    acc = tl.reshape(tl.permute(acc, (1, 0, 2)), (BLOCK_M, CK))   # [pixels, channels] for a coalesced store
    ch = c0 + tl.arange(0, CK)
    ch_ok = ch < C
    acc += tl.load(bias_ptr + ch, mask=ch_ok, other=0.0).to(tl.float32)[None, :]
    if APPLY_SILU:
        acc = silu(acc, FP32_DOT)
    dst = out_ptr + offs.to(tl.int64)[:, None] * C + ch[None, :]
    tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=pix_ok[:, None] & ch_ok[None, :])


def _gconv_configs():
    configs = []
    for block_m, ck, warps, stages, unroll in [(64, 32, 4, 1, True), (64, 64, 4, 1, True), (128, 32, 4, 1, True),
                                               (128, 64, 8, 1, True), (128, 32, 4, 3, False), (64, 64, 4, 3, False),
                                               (128, 64, 4, 3, False), (256, 32, 8, 3, False)]:
        configs.append(triton.Config({"BLOCK_M": block_m, "CK": ck, "UNROLL_TAPS": unroll}, num_warps=warps,
                                     num_stages=stages))
    return configs


def _prune_gconv(configs, named_args, **kwargs):
    c16 = named_args["C16"]
    npix = named_args["NPIX"]
    kept = [cf for cf in configs if cf.kwargs["CK"] <= max(16, next_pow2(c16))
            and cf.kwargs["BLOCK_M"] <= max(64, next_pow2(npix))]
    return kept or configs[:1]


_tuned_gconv = None


def _gconv_launcher():
    global _tuned_gconv
    if _tuned_gconv is None:
        _tuned_gconv = triton.autotune(configs=_gconv_configs(), key=["C", "H", "W", "NPIX"],
                                       prune_configs_by={"early_config_prune": _prune_gconv})(grouped3x3_kernel)
    return _tuned_gconv


def heuristic_config(channels: int, npix: int) -> dict:
    """A fixed config (no autotuning): the interpreter's small tile, else 64 pixels x 32 channels, unrolled."""
    if interpreting():
        return {"BLOCK_M": 32, "CK": min(32, next_pow2(packed_taps_rows(channels))), "UNROLL_TAPS": False}
    return {"BLOCK_M": 64, "CK": 32, "UNROLL_TAPS": True, "num_warps": 4, "num_stages": 1}


def check_gconv_inputs(x: torch.Tensor, w_taps: torch.Tensor, bias: torch.Tensor) -> None:
    check_activation(x)
    c = x.shape[1]
    check_shape("w_taps (packed grouped-conv weight, see pack_grouped_taps)", w_taps, (9, packed_taps_rows(c), 16))
    check_shape("bias", bias, (c,))
    check_weight_dtype(x, w_taps=w_taps)
    check_same_device(x, w_taps=w_taps, bias=bias)


#: The warp-specialised form's config per (C, H, W, pixels, dtype, SiLU), or None where the Triton kernel was faster
#: (:func:`_ws_choice`).
WS_CHOICE: dict = {}
#: ``CONVFIRST_WS_GCONV=0`` leaves the warp-specialised form (:mod:`gconv_ws`) out of the choice.
WS_GCONV = os.environ.get("CONVFIRST_WS_GCONV", "1") != "0"

#: What the last launch ran: ``{"ws": config}`` for the warp-specialised form, ``None`` for the Triton kernel (the
#: benchmarks' config labels read it).
LAST_LAUNCH: dict = {"ws": None}


def graph_ms(run) -> float:
    """GPU milliseconds of ``run()`` replayed from a CUDA graph (:func:`convfirst.timing.bench_ms`): its launch's
    host time left out, as inside a captured model (an eager timing of a ~50 us kernel whose launch builds four TMA
    descriptors measures the host)."""
    from convfirst.timing import bench_ms

    return bench_ms(run, [()], warmup_ms=10, rep_ms=50, cuda_graph=True)


def _ws_choice(x, w_taps, bias, out, apply_silu: bool, run_triton) -> dict | None:
    """The warp-specialised kernel's config for this shape if, replayed from a CUDA graph, it beats ``run_triton``
    (the autotuned Triton kernel); timed once per shape at its first call outside a capture, and used only when
    the launch is being captured (eagerly its launch's host time, four TMA descriptors, would cost more than the
    kernel saves at the 14 x 14 stages). None where it cannot run, was slower, or the launch is eager."""
    from .gconv_ws import launch_ws_gconv, ws_gconv_configs, ws_gconv_usable

    if not WS_GCONV or ws_gconv_usable(x, w_taps, out):
        return None
    n, c, h, w = x.shape
    key = (c, h, w, n * h * w, str(x.dtype), bool(apply_silu))
    capturing = torch.cuda.is_current_stream_capturing()
    if key not in WS_CHOICE and not capturing:
        configs = {str(cf): cf for cf in ws_gconv_configs(c)}
        runs = {"triton": run_triton}
        runs.update({name: (lambda cf: lambda: launch_ws_gconv(x, w_taps, bias, out, cf, apply_silu))(cf)
                     for name, cf in configs.items()})
        WS_CHOICE[key] = configs.get(pick_fastest(runs, timer=graph_ms))
    return WS_CHOICE.get(key) if capturing else None


def launch_grouped_conv3x3(x: torch.Tensor, w_taps: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
                           apply_silu: bool = False, config: dict | None = None) -> torch.Tensor:
    """Launch the grouped conv into ``out`` (same shape/layout as ``x``). ``config`` fixes the kernel and tile: one
    with ``TAP_STAGES`` runs the warp-specialised form (:mod:`gconv_ws`), any other the Triton kernel. Without one,
    the autotuned Triton kernel, or inside a CUDA graph capture on a Hopper GPU the faster of it and the
    warp-specialised configs (:func:`_ws_choice`)."""
    n, c, h, w = x.shape
    npix = n * h * w
    c16 = packed_taps_rows(c)
    fp32_dot = interpreting()
    if npix == 0:
        return out
    LAST_LAUNCH["ws"] = None
    if config is not None and "TAP_STAGES" in config:
        from .gconv_ws import launch_ws_gconv, ws_gconv_usable

        why = ws_gconv_usable(x, w_taps, out)
        if why:
            raise KernelInputError(f"the warp-specialised form (config with TAP_STAGES) cannot run: {why}")
        LAST_LAUNCH["ws"] = config
        LAST_COMPILED["gconv"] = launch_ws_gconv(x, w_taps, bias, out, config, apply_silu)
        return out
    if config is None and not autotuning():
        config = heuristic_config(c, npix)
    if config is not None:
        extra = launch_options(config)
        config = {"UNROLL_TAPS": False, **{k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}}
        grid = (triton.cdiv(npix, config["BLOCK_M"]), triton.cdiv(c, config["CK"]))
        compiled = grouped3x3_kernel[grid](x, w_taps, bias, out, npix, h, w, c, c16, APPLY_SILU=apply_silu,
                                           FP32_DOT=fp32_dot, **config, **extra)
        LAST_COMPILED["gconv"] = compiled
        return out

    def run_triton():
        grid = lambda meta: (triton.cdiv(npix, meta["BLOCK_M"]), triton.cdiv(c, meta["CK"]))  # noqa: E731
        return _gconv_launcher()[grid](x, w_taps, bias, out, npix, h, w, c, c16, APPLY_SILU=apply_silu,
                                       FP32_DOT=fp32_dot)

    ws = _ws_choice(x, w_taps, bias, out, apply_silu, run_triton)
    LAST_LAUNCH["ws"] = ws
    if ws is not None:
        from .gconv_ws import launch_ws_gconv

        LAST_COMPILED["gconv"] = launch_ws_gconv(x, w_taps, bias, out, ws, apply_silu)
    else:
        LAST_COMPILED["gconv"] = run_triton()
    return out


def last_ws_config(x: torch.Tensor, apply_silu: bool = False) -> dict | None:
    """The warp-specialised config chosen for x's shape inside CUDA graphs, None where the Triton kernel runs it
    (or not yet timed)."""
    n, c, h, w = x.shape
    return WS_CHOICE.get((c, h, w, n * h * w, str(x.dtype), bool(apply_silu)))


@torch.library.custom_op("convfirst::grouped_conv3x3_gw8", mutates_args=())
def grouped_conv3x3_gw8(x: torch.Tensor, w_taps: torch.Tensor, bias: torch.Tensor,
                        apply_silu: bool = False) -> torch.Tensor:
    """Grouped 3x3 conv (group width 8, stride 1, 'same' padding) + bias [+ SiLU] on a channels_last tensor.

    ``w_taps`` is the packed weight from :func:`convfirst.kernels.pack_grouped_taps`, in x's dtype;
    ``bias`` [C] in any float dtype. Returns a new channels_last tensor like ``x``.
    """
    check_gconv_inputs(x, w_taps, bias)
    out = torch.empty_like(x, memory_format=torch.channels_last)
    return launch_grouped_conv3x3(x, w_taps, bias, out, apply_silu)


@grouped_conv3x3_gw8.register_fake
def _(x, w_taps, bias, apply_silu=False):
    check_gconv_inputs(x, w_taps, bias)
    return torch.empty_like(x, memory_format=torch.channels_last)
