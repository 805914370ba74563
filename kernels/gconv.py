"""Grouped 3x3 convolution, group width 8, NHWC, on the tensor cores (a standalone op and a shared helper).

Design in two lines: a program owns BLOCK_M consecutive pixels (flattened n, h, w order) and CK channels;
for each of the 9 taps it loads the shifted [pixels, CK] input (masked at image borders, so no padded
copy is needed) and multiplies each 16-channel slice by a 16x16 block-diagonal matrix (two 8x8 groups)
with one batched ``tl.dot``; the tensor cores do 2x the useful FLOPs, which is cheap next to the bytes.

Bytes per pixel (bf16): read C*2, write C*2, so at C=96@56x56, N=256 the floor is 308 MB / B, about
0.10 ms on an H100; the 9 shifted reads of the same rows hit L1/L2 (neighbouring programs share halos).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (LAST_COMPILED, LAUNCH_OPTIONS, autotuning, check_activation, check_same_device, check_shape,
                      check_weight_dtype, interpreting, launch_options, next_pow2, packed_taps_rows, pick_fastest)
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


@triton.jit
def grouped3x3_rows_kernel(x_ptr, w_taps_ptr, bias_ptr, out_ptr, N, H, W, C: tl.constexpr, C16: tl.constexpr,
                           IMGS: tl.constexpr, TW: tl.constexpr, ROWS: tl.constexpr, CK: tl.constexpr,
                           APPLY_SILU: tl.constexpr, FP32_DOT: tl.constexpr):
    """The rows form: a program walks down ROWS image rows of a strip (IMGS images x TW columns, CK channels),
    one output row per step, so each input row is read from L2 once and its nine uses hit L1.

    Step r computes output row r of the strip from input rows r-1, r, r+1, each at column shifts -1, 0, +1: nine
    plain (L1-allocating) loads of [IMGS*TW, CK], of which only the three of row r+1 are new to the program (the
    others were loaded by the two steps before). The product is :func:`slice_product`, as in the pixel-run form.
    """
    BLOCK_M: tl.constexpr = IMGS * TW
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    n_strips = tl.cdiv(W, TW)
    n_bands = tl.cdiv(H, ROWS)
    strip = pid % n_strips
    band = (pid // n_strips) % n_bands
    group = pid // (n_strips * n_bands)
    m = tl.arange(0, BLOCK_M)
    img = m // TW                                   # image of pixel m within the group
    col = strip * TW + m % TW                       # its image column
    pix_ok = (group * IMGS + img < N) & (col < W)
    base = (group * IMGS).to(tl.int64) * H * W * C  # offsets below are int32, relative to the group's image 0
    c0 = pid_c * CK
    cols = c0 + tl.arange(0, CK)
    col_ok = cols < C
    w_off, w_ok = tap_weight_offsets(c0, CK, C16)
    taps = ()                                       # the nine taps' weight slices, loaded once per program
    for t in tl.static_range(9):
        taps = taps + (tl.load(w_taps_ptr + t * C16 * 16 + w_off, mask=w_ok, other=0.0),)
    bias = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    h0 = band * ROWS
    for r in range(h0, tl.minimum(h0 + ROWS, H)):
        acc = tl.zeros([CK // 16, BLOCK_M, 16], dtype=tl.float32)
        for t in tl.static_range(9):
            rr = r + (t // 3 - 1)
            cc = col + (t % 3 - 1)
            ok = pix_ok & (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
            src = x_ptr + base + (((img * H + rr) * W + cc) * C)[:, None] + cols[None, :]
            a = tl.load(src, mask=ok[:, None] & col_ok[None, :], other=0.0)
            a = tl.permute(tl.reshape(a, (BLOCK_M, CK // 16, 16)), (1, 0, 2))
            w = taps[t]
            if FP32_DOT:
                a = a.to(tl.float32)
                w = w.to(tl.float32)
            acc = tl.dot(a, w, acc)
        y = tl.reshape(tl.permute(acc, (1, 0, 2)), (BLOCK_M, CK)) + bias[None, :]
        if APPLY_SILU:
            y = silu(y, FP32_DOT)
        dst = out_ptr + base + (((img * H + r) * W + col) * C)[:, None] + cols[None, :]
        tl.store(dst, y.to(out_ptr.dtype.element_ty), mask=pix_ok[:, None] & col_ok[None, :])


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


def _rows_configs():
    """Candidates of the rows form: strips of TW columns x IMGS images (32, 64 or 128 pixels per step), bands of
    16 or 64 rows, 32 or 64 channels; plain loads (one stage), so that the nine uses of a row hit L1. The pruning
    keeps the two widest strips that waste at most 15% of an image row, and 32-pixel steps only for batches too
    small to fill 64."""
    configs = []
    for tw in (8, 16, 32, 64):
        for pixels in (32, 64, 128):
            for rows in (16, 64):
                for ck in (32, 64):
                    if pixels >= tw:
                        configs.append(triton.Config({"IMGS": pixels // tw, "TW": tw, "ROWS": rows, "CK": ck},
                                                     num_warps=8 if pixels == 128 else 4, num_stages=1))
    return configs


def strip_waste(width: int, tw: int) -> float:
    """Fraction of a row's TW-wide strips that falls past the image's last column."""
    return -(-width // tw) * tw / width - 1


def strip_widths(width: int) -> list[int]:
    """The rows form's strip widths for an image ``width`` wide: the two widest (of 8-64, at most the image's
    power of two) that waste at most 15% of a row, else the one that wastes least."""
    widths = [t for t in (8, 16, 32, 64) if t <= max(8, next_pow2(width))]
    good = [t for t in widths if strip_waste(width, t) <= 0.15]
    return good[-2:] if good else [min(reversed(widths), key=lambda t: strip_waste(width, t))]


def _prune_rows(configs, named_args, **kwargs):
    c16, n, h, w = named_args["C16"], named_args["N"], named_args["H"], named_args["W"]
    widths = strip_widths(w)
    small = n * widths[-1] < 64  # the batch cannot fill a 64-pixel step: 32-pixel steps, images past it allowed

    def keep(kw):
        pixels = kw["IMGS"] * kw["TW"]
        return (kw["CK"] <= max(16, next_pow2(c16)) and kw["TW"] in widths
                and (kw["ROWS"] == 16 or next_pow2(h) > 16)
                and (pixels == 32 if small else pixels > 32 and kw["IMGS"] <= max(1, next_pow2(n))))
    kept = [cf for cf in configs if keep(cf.kwargs)]
    return kept or configs[:1]


_tuned_gconv = None
_tuned_rows = None
#: Per (C, H, W, N, SiLU): the autotuner (pixel runs or rows) whose best config was fastest.
_FORM_CHOICE: dict = {}


def _gconv_launcher():
    global _tuned_gconv
    if _tuned_gconv is None:
        _tuned_gconv = triton.autotune(configs=_gconv_configs(), key=["C", "H", "W", "NPIX"],
                                       prune_configs_by={"early_config_prune": _prune_gconv})(grouped3x3_kernel)
    return _tuned_gconv


def _rows_launcher():
    global _tuned_rows
    if _tuned_rows is None:
        _tuned_rows = triton.autotune(configs=_rows_configs(), key=["C", "H", "W", "N"],
                                      prune_configs_by={"early_config_prune": _prune_rows})(grouped3x3_rows_kernel)
    return _tuned_rows


def last_tuner():
    """The autotuner of the grouped conv's last autotuned launch (None before any)."""
    return _LAST_TUNER[0]


_LAST_TUNER = [None]


def heuristic_config(channels: int, npix: int) -> dict:
    """A fixed config (no autotuning): the interpreter's small tile, else 64 pixels x 32 channels, unrolled."""
    if interpreting():
        return {"BLOCK_M": 32, "CK": min(32, next_pow2(packed_taps_rows(channels))), "UNROLL_TAPS": False}
    return {"BLOCK_M": 64, "CK": 32, "UNROLL_TAPS": True, "num_warps": 4, "num_stages": 1}


def rows_config(channels: int, width: int) -> dict:
    """A fixed config of the rows form: the narrower of :func:`strip_widths`, 64 pixels a step (16 in the
    interpreter), bands of 16 rows."""
    tw = strip_widths(width)[0]
    pixels = 16 if interpreting() else 64
    ck = min(32, max(16, next_pow2(packed_taps_rows(channels))))
    return {"IMGS": max(1, pixels // tw), "TW": tw, "ROWS": 16, "CK": ck, "num_warps": 4, "num_stages": 1}


def check_gconv_inputs(x: torch.Tensor, w_taps: torch.Tensor, bias: torch.Tensor) -> None:
    check_activation(x)
    c = x.shape[1]
    check_shape("w_taps (packed grouped-conv weight, see pack_grouped_taps)", w_taps, (9, packed_taps_rows(c), 16))
    check_shape("bias", bias, (c,))
    check_weight_dtype(x, w_taps=w_taps)
    check_same_device(x, w_taps=w_taps, bias=bias)


def launch_grouped_conv3x3(x: torch.Tensor, w_taps: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
                           apply_silu: bool = False, config: dict | None = None) -> torch.Tensor:
    """Launch the grouped conv into ``out`` (same shape/layout as ``x``). ``config`` fixes the form and tile (a
    config with ``TW`` is the rows form, else the pixel-run form); without one both forms are autotuned on the
    GPU and the faster kept per shape."""
    n, c, h, w = x.shape
    npix = n * h * w
    c16 = packed_taps_rows(c)
    fp32_dot = interpreting()
    if npix == 0:
        return out
    if config is None and not autotuning():
        config = heuristic_config(c, npix)
    if config is not None and "TW" in config:
        extra = launch_options(config)
        meta = {k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}
        grid = (triton.cdiv(n, meta["IMGS"]) * triton.cdiv(h, meta["ROWS"]) * triton.cdiv(w, meta["TW"]),
                triton.cdiv(c, meta["CK"]))
        compiled = grouped3x3_rows_kernel[grid](x, w_taps, bias, out, n, h, w, c, c16, APPLY_SILU=apply_silu,
                                                FP32_DOT=fp32_dot, **meta, **extra)
    elif config is not None:
        extra = launch_options(config)
        config = {"UNROLL_TAPS": False, **{k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}}
        grid = (triton.cdiv(npix, config["BLOCK_M"]), triton.cdiv(c, config["CK"]))
        compiled = grouped3x3_kernel[grid](x, w_taps, bias, out, npix, h, w, c, c16, APPLY_SILU=apply_silu,
                                           FP32_DOT=fp32_dot, **config, **extra)
    else:
        def run_pixels():
            grid = lambda meta: (triton.cdiv(npix, meta["BLOCK_M"]), triton.cdiv(c, meta["CK"]))  # noqa: E731
            return _gconv_launcher()[grid](x, w_taps, bias, out, npix, h, w, c, c16, APPLY_SILU=apply_silu,
                                           FP32_DOT=fp32_dot)

        def run_rows():
            grid = lambda meta: (triton.cdiv(n, meta["IMGS"]) * triton.cdiv(h, meta["ROWS"])  # noqa: E731
                                 * triton.cdiv(w, meta["TW"]), triton.cdiv(c, meta["CK"]))
            return _rows_launcher()[grid](x, w_taps, bias, out, n, h, w, c, c16, APPLY_SILU=apply_silu,
                                          FP32_DOT=fp32_dot)

        runs = {"pixels": run_pixels, "rows": run_rows}
        key = (c, h, w, n, apply_silu)
        if key not in _FORM_CHOICE:
            _FORM_CHOICE[key] = pick_fastest({name: run for name, run in runs.items()})
        compiled = runs[_FORM_CHOICE[key]]()
        _LAST_TUNER[0] = _gconv_launcher() if _FORM_CHOICE[key] == "pixels" else _rows_launcher()
    LAST_COMPILED["gconv"] = compiled
    return out


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
