"""The ConvFirst block in one kernel: grouped 3x3 gw8 -> 1x1 expand -> SiLU -> 1x1 project -> + x.

Design in two lines: a program owns BLOCK_M consecutive pixels; it computes the grouped conv g [M, C]
straight from the input (halo read through L1/L2 with border masks), then walks the E*C hidden channels in
slices of BLOCK_H: h = silu(g @ We[:, slice] + be) stays in registers and is immediately multiplied into the
[M, C] fp32 accumulator by Wp[slice, :], so the E*C-wide hidden activation never reaches DRAM.

DRAM bytes per pixel (bf16): read x (2C), write out (2C) = 4C. FLOP per pixel: 2C(72 + 2EC) useful.
At C=64, E=4, 56x56, N=256 on an H100: Q = 205 MB (0.068 ms), W = 60 GFLOP (0.086 ms at 695 TFLOP/s).

The grouped conv has two forms, chosen per config by the constexpr ``DENSE_GCONV``:

- sliced (v2, ``False``): per tap, the [M, C] tile viewed as [C/16, M, 16] slices, one batched 3D dot with
  16x16 block-diagonal weights; tensor cores execute 2x the useful grouped-conv FLOP (2C*144 per pixel).
- dense (v3, ``True``): per tap, one plain 2D dot [M, CK] @ [CK, CK] with the tap's whole block-diagonal
  weight (zero outside the 8x8 group blocks), expanded from the packed 16x16 slices as it is loaded; no
  permutes, and Triton lowers it to wgmma. The tensor cores execute 2*9*CK per pixel per channel (8x the
  useful work at C=64). Measured slower than v2 at 64@56, 96@56 and 192@28 (H100), so the default and the
  autotuner use the sliced form; the dense form stays reachable through a config with ``DENSE_GCONV=True``
  (see ``compare_forms.py``).

Tiles of C channels are held as two power-of-two parts CA + CB (96 = 64 + 32), see ``split_channels``.

Kernels (versions in ``NOTES_convfirst.md``): v4 ``convfirst_block_kernel`` (the walk above), v5
``convfirst_resident_kernel`` (persistent programs keeping We and Wp in shared memory) and v6
``convfirst_tma_kernel`` (a program owns an 8 x 8 patch of one image and moves its tap tiles, residual and output
as TMA box copies whose zero fill is the 'same' padding; fastest at 56 x 56 on the H100). The launcher autotunes
each candidate kernel and keeps the fastest per shape.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from ._common import (LAST_COMPILED, LAUNCH_OPTIONS, KernelInputError, accumulator_fits, autotuning,
                      check_activation, check_same_device, check_shape, check_weight_dtype, interpreting,
                      median_ms, next_pow2, launch_options, num_sms, packed_taps_rows, pick_fastest, split_channels,
                      tracing)
from .activation import silu
from .gconv import grouped3x3_tap_sum, load_shifted_tap, slice_product, tap_weight_offsets


@triton.jit
def slices_to_tile(acc, BLOCK_M: tl.constexpr, CK: tl.constexpr):
    """[CK//16, BLOCK_M, 16] (channel slices) -> [BLOCK_M, CK] (pixels x channels)."""
    return tl.reshape(tl.permute(acc, (1, 0, 2)), (BLOCK_M, CK))


@triton.jit
def project_accumulate(h, wp_t_ptr, hcol, h_ok, C, cols, col_ok, acc, FP32_DOT: tl.constexpr):
    """acc += h @ Wp[hcol, cols]: one hidden slice projected into one channel part of the [M, C] accumulator."""
    wp = tl.load(wp_t_ptr + hcol[:, None] * C + cols[None, :], mask=h_ok[:, None] & col_ok[None, :], other=0.0)
    if FP32_DOT:
        wp = wp.to(tl.float32)
    return tl.dot(h, wp, acc)


@triton.jit
def add_bias_residual_store(acc, x_ptr, b_p_ptr, out_ptr, row, pix_ok, cols, col_ok):
    """out[row, cols] = acc + b_p[cols] + x[row, cols] for one channel part of the tile: the block's only write."""
    mask = pix_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + row[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    acc += tl.load(b_p_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :] + x
    tl.store(out_ptr + row[:, None] + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def grouped3x3_dense_tap_sum(tile_ptr, c0, C, w_taps_ptr, C16, pix_h, pix_w, pix_ok, H, W,
                             CK: tl.constexpr, BLOCK_M: tl.constexpr, FP32_DOT: tl.constexpr):
    """Sum over the 9 taps of (shifted [BLOCK_M, CK] input) @ (dense block-diagonal [CK, CK] tap weight).

    Channels [c0, c0 + CK) in and out (c0 is a multiple of 16). The dense weight of tap t is
    ``w[ci, co] = w_taps[t, ci, co % 16]`` where ci and co share a group of 8, else 0: the loads read whole
    16-wide packed rows (contiguous, vectorised) and ``tl.where`` zeroes the other groups. Returns fp32
    [BLOCK_M, CK] without bias.
    """
    rows = tl.arange(0, BLOCK_M)
    cols = c0 + tl.arange(0, CK)
    col_ok = cols < C
    ci = cols[:, None]
    co = cols[None, :]
    w_off = ci * 16 + co % 16                           # [CK, CK] offsets into one tap's [C16, 16] slices
    w_ok = ci < C16
    same_group = (ci // 8) == (co // 8)
    acc = tl.zeros([BLOCK_M, CK], dtype=tl.float32)
    for t in range(9):
        a = load_shifted_tap(tile_ptr, t, rows, C, cols, col_ok, pix_h, pix_w, pix_ok, H, W)
        w = tl.load(w_taps_ptr + t * C16 * 16 + w_off, mask=w_ok, other=0.0)
        w = tl.where(same_group, w, tl.zeros_like(w))
        if FP32_DOT:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc)
    return acc


@triton.jit
def grouped3x3_tile(tile_ptr, w_taps_ptr, b_ptr, c0, C, C16, pix_h, pix_w, pix_ok, H, W,
                    CK: tl.constexpr, BLOCK_M: tl.constexpr, UNROLL_TAPS: tl.constexpr, DENSE_GCONV: tl.constexpr,
                    FP32_DOT: tl.constexpr):
    """Grouped 3x3 conv + bias of channels [c0, c0 + CK) for the tile, as [BLOCK_M, CK] fp32."""
    if DENSE_GCONV:
        g = grouped3x3_dense_tap_sum(tile_ptr, c0, C, w_taps_ptr, C16, pix_h, pix_w, pix_ok, H, W,
                                     CK, BLOCK_M, FP32_DOT)
    else:
        acc = grouped3x3_tap_sum(tile_ptr, tl.arange(0, BLOCK_M), C, c0, C, w_taps_ptr, c0, C16, pix_h, pix_w,
                                 pix_ok, H, W, CK, BLOCK_M, UNROLL_TAPS, FP32_DOT)
        g = slices_to_tile(acc, BLOCK_M, CK)
    ch = c0 + tl.arange(0, CK)
    return g + tl.load(b_ptr + ch, mask=ch < C, other=0.0).to(tl.float32)[None, :]


@triton.jit
def grouped3x3_parts(tile_ptr, w_taps_ptr, b_g_ptr, out_ptr, C, C16, pix_h, pix_w, pix_ok, H, W,
                     CA: tl.constexpr, CB: tl.constexpr, BLOCK_M: tl.constexpr, UNROLL_TAPS: tl.constexpr,
                     DENSE_GCONV: tl.constexpr, FP32_DOT: tl.constexpr):
    """Grouped 3x3 + bias of both channel parts of a tile, rounded to the activation dtype (as the unfused
    sequence stores it): (ga [BLOCK_M, CA], gb [BLOCK_M, CB]); gb is ga when CB == 0."""
    act = out_ptr.dtype.element_ty
    ga = grouped3x3_tile(tile_ptr, w_taps_ptr, b_g_ptr, 0, C, C16, pix_h, pix_w, pix_ok, H, W,
                         CA, BLOCK_M, UNROLL_TAPS, DENSE_GCONV, FP32_DOT).to(act)
    if FP32_DOT:
        ga = ga.to(tl.float32)
    gb = ga
    if CB > 0:
        gb = grouped3x3_tile(tile_ptr, w_taps_ptr, b_g_ptr, CA, C, C16, pix_h, pix_w, pix_ok, H, W,
                             CB, BLOCK_M, UNROLL_TAPS, DENSE_GCONV, FP32_DOT).to(act)
        if FP32_DOT:
            gb = gb.to(tl.float32)
    return ga, gb


@triton.jit
def hidden_chain(ga, gb, we_t_ptr, b_e_ptr, wp_t_ptr, C, HID: tl.constexpr, CA: tl.constexpr, CB: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, FP32_DOT: tl.constexpr):
    """The 1x1 chain of one tile: for each slice of BLOCK_H hidden channels, h = silu(g @ We[:, slice] + be),
    rounded to the activation dtype, then acc += h @ Wp[slice, :]. ``ga``/``gb`` are the grouped conv's two
    channel parts; returns the fp32 accumulators (acc_a [BLOCK_M, CA], acc_b [BLOCK_M, CB]; acc_b is acc_a
    when CB == 0). The hidden activation lives one slice at a time in registers."""
    act = we_t_ptr.dtype.element_ty
    ca = tl.arange(0, CA)
    ca_ok = ca < C
    acc_a = tl.zeros([BLOCK_M, CA], dtype=tl.float32)
    acc_b = acc_a
    if CB > 0:
        cb = CA + tl.arange(0, CB)
        cb_ok = cb < C
        acc_b = tl.zeros([BLOCK_M, CB], dtype=tl.float32)
    for j in range(0, HID, BLOCK_H):
        hcol = j + tl.arange(0, BLOCK_H)
        h_ok = hcol < HID
        we_a = tl.load(we_t_ptr + ca[:, None] * HID + hcol[None, :], mask=ca_ok[:, None] & h_ok[None, :], other=0.0)
        if FP32_DOT:
            we_a = we_a.to(tl.float32)
        hpre = tl.dot(ga, we_a)
        if CB > 0:
            we_b = tl.load(we_t_ptr + cb[:, None] * HID + hcol[None, :], mask=cb_ok[:, None] & h_ok[None, :],
                           other=0.0)
            if FP32_DOT:
                we_b = we_b.to(tl.float32)
            hpre = tl.dot(gb, we_b, hpre)
        hpre += tl.load(b_e_ptr + hcol, mask=h_ok, other=0.0).to(tl.float32)[None, :]
        h = silu(hpre, FP32_DOT).to(act)
        if FP32_DOT:
            h = h.to(tl.float32)
        acc_a = project_accumulate(h, wp_t_ptr, hcol, h_ok, C, ca, ca_ok, acc_a, FP32_DOT)
        if CB > 0:
            acc_b = project_accumulate(h, wp_t_ptr, hcol, h_ok, C, cb, cb_ok, acc_b, FP32_DOT)
    return acc_a, acc_b


@triton.jit
def convfirst_block_kernel(x_ptr, w_taps_ptr, b_g_ptr, we_t_ptr, b_e_ptr, wp_t_ptr, b_p_ptr, out_ptr,
                           NPIX, H, W, C: tl.constexpr, C16: tl.constexpr, HID: tl.constexpr,
                           CA: tl.constexpr, CB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
                           UNROLL_TAPS: tl.constexpr, DENSE_GCONV: tl.constexpr, FP32_DOT: tl.constexpr):
    act = out_ptr.dtype.element_ty
    pid = tl.program_id(0)
    offs = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    pix_ok = offs < NPIX
    pix_w = offs % W
    pix_h = (offs // W) % H
    ca = tl.arange(0, CA)
    ca_ok = ca < C

    # 1. grouped 3x3 + bias, rounded to the activation dtype (as the unfused sequence stores it)
    tile_ptr = x_ptr + (pid * BLOCK_M).to(tl.int64) * C
    ga, gb = grouped3x3_parts(tile_ptr, w_taps_ptr, b_g_ptr, out_ptr, C, C16, pix_h, pix_w, pix_ok, H, W,
                              CA, CB, BLOCK_M, UNROLL_TAPS, DENSE_GCONV, FP32_DOT)
    acc_a, acc_b = hidden_chain(ga, gb, we_t_ptr, b_e_ptr, wp_t_ptr, C, HID, CA, CB, BLOCK_M, BLOCK_H, FP32_DOT)

    # 3. + project bias + residual, one write of C channels per pixel
    row = offs.to(tl.int64) * C
    add_bias_residual_store(acc_a, x_ptr, b_p_ptr, out_ptr, row, pix_ok, ca, ca_ok)
    if CB > 0:
        cb = CA + tl.arange(0, CB)
        add_bias_residual_store(acc_b, x_ptr, b_p_ptr, out_ptr, row, pix_ok, cb, cb < C)


@triton.jit
def load_resident_weights(we_t_ptr, wp_t_ptr, HID: tl.constexpr, C, cols, col_ok, BLOCK_H: tl.constexpr,
                          FP32_DOT: tl.constexpr):
    """We[cols, :] and Wp[:, cols] as tuples of HID // BLOCK_H hidden slices, loaded once per program.

    A persistent program keeps them for all its tiles: loop-invariant dot operands, which the compiler
    places in shared memory once (one local_alloc before the tile loop) instead of re-reading them through
    L2 for every tile. (The expand bias is not among them: a loop-invariant bias is folded into the dot's
    initial accumulator and hoisted as a [BLOCK_M, BLOCK_H] fp32 register tile per slice.)"""
    hh = tl.arange(0, BLOCK_H)
    wes = ()
    wps = ()
    for j in tl.static_range(0, HID, BLOCK_H):
        we = tl.load(we_t_ptr + cols[:, None] * HID + (j + hh)[None, :], mask=col_ok[:, None], other=0.0)
        wp = tl.load(wp_t_ptr + (j + hh)[:, None] * C + cols[None, :], mask=col_ok[None, :], other=0.0)
        if FP32_DOT:
            we = we.to(tl.float32)
            wp = wp.to(tl.float32)
        wes = wes + (we,)
        wps = wps + (wp,)
    return wes, wps


@triton.jit
def convfirst_resident_kernel(x_ptr, w_taps_ptr, b_g_ptr, we_t_ptr, b_e_ptr, wp_t_ptr, b_p_ptr, out_ptr,
                              NPIX, H, W, C: tl.constexpr, C16: tl.constexpr, HID: tl.constexpr,
                              CA: tl.constexpr, CB: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
                              PROGRAMS_PER_SM: tl.constexpr, UNROLL_TAPS: tl.constexpr,
                              FP32_DOT: tl.constexpr):
    """v5: the v4 tile walk in a persistent program whose 1x1 weights stay on chip (HID % BLOCK_H == 0).

    Per 64-pixel tile, v4 re-reads both 1x1 weight matrices through L2 (64 KB at C=64, 40% of its L2
    traffic). Here each program loads We and Wp once, as tuples of hidden slices, and walks tiles
    ``pid, pid + nprog, ...``; the tile body is v4's (the expand bias is read per tile, see
    :func:`load_resident_weights`)."""
    act = out_ptr.dtype.element_ty
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    ca = tl.arange(0, CA)
    ca_ok = ca < C
    wes_a, wps_a = load_resident_weights(we_t_ptr, wp_t_ptr, HID, C, ca, ca_ok, BLOCK_H, FP32_DOT)
    if CB > 0:
        cb = CA + tl.arange(0, CB)
        cb_ok = cb < C
        wes_b, wps_b = load_resident_weights(we_t_ptr, wp_t_ptr, HID, C, cb, cb_ok, BLOCK_H, FP32_DOT)
    num_tiles = tl.cdiv(NPIX, BLOCK_M)
    for tile in range(pid, num_tiles, nprog):
        offs = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        pix_ok = offs < NPIX
        pix_w = offs % W
        pix_h = (offs // W) % H
        tile_ptr = x_ptr + tl.cast(tile, tl.int64) * (BLOCK_M * C)
        # 1. grouped 3x3 + bias, rounded to the activation dtype
        ga, gb = grouped3x3_parts(tile_ptr, w_taps_ptr, b_g_ptr, out_ptr, C, C16, pix_h, pix_w, pix_ok, H, W,
                                  CA, CB, BLOCK_M, UNROLL_TAPS, False, FP32_DOT)
        acc_a = tl.zeros([BLOCK_M, CA], dtype=tl.float32)
        if CB > 0:
            acc_b = tl.zeros([BLOCK_M, CB], dtype=tl.float32)
        # 2. hidden slices from the resident weights
        for k in tl.static_range(HID // BLOCK_H):
            hpre = tl.dot(ga, wes_a[k])
            if CB > 0:
                hpre = tl.dot(gb, wes_b[k], hpre)
            hpre += tl.load(b_e_ptr + k * BLOCK_H + tl.arange(0, BLOCK_H)).to(tl.float32)[None, :]
            h = silu(hpre, FP32_DOT).to(act)
            if FP32_DOT:
                h = h.to(tl.float32)
            acc_a = tl.dot(h, wps_a[k], acc_a)
            if CB > 0:
                acc_b = tl.dot(h, wps_b[k], acc_b)
        # 3. + project bias + residual
        row = offs.to(tl.int64) * C
        add_bias_residual_store(acc_a, x_ptr, b_p_ptr, out_ptr, row, pix_ok, ca, ca_ok)
        if CB > 0:
            add_bias_residual_store(acc_b, x_ptr, b_p_ptr, out_ptr, row, pix_ok, cb, cb_ok)


@triton.jit
def tma_tap(x_desc, n, h0, w0, t, c0: tl.constexpr, BLOCK_M: tl.constexpr, CK: tl.constexpr):
    """Tap t (dy, dx = t // 3 - 1, t % 3 - 1) of a patch as [BLOCK_M, CK]: the box [1, TILE_H, TILE_W, CK] at
    (n, h0 + dy, w0 + dx, c0) of the NHWC input, moved by the Tensor Memory Accelerator, which fills what lies
    outside the image with zeros (negative coordinates included): the 'same' padding costs no address or mask
    arithmetic, and the tap is one bulk copy instead of BLOCK_M * CK / (32 * warps) pointer loads per thread."""
    return tl.reshape(x_desc.load([n, h0 + t // 3 - 1, w0 + t % 3 - 1, c0]), (BLOCK_M, CK))


@triton.jit
def tma_tap_sum(x_desc, n, h0, w0, c0: tl.constexpr, w_taps_ptr, C16: tl.constexpr, CK: tl.constexpr,
                TILE_H: tl.constexpr, TILE_W: tl.constexpr, FP32_DOT: tl.constexpr):
    """The 9-tap sum of a grouped 3x3 gw8 conv for a TILE_H x TILE_W patch of image ``n`` (top-left pixel
    (h0, w0)), channels [c0, c0 + CK), without bias; fp32 [CK//16, TILE_H*TILE_W, 16] as
    :func:`grouped3x3_tap_sum` returns it. Each tap is a box copy (:func:`tma_tap`)."""
    BLOCK_M: tl.constexpr = TILE_H * TILE_W
    w_off, w_ok = tap_weight_offsets(c0, CK, C16)
    acc = tl.zeros([CK // 16, BLOCK_M, 16], dtype=tl.float32)
    for t in range(9):
        acc = slice_product(tma_tap(x_desc, n, h0, w0, t, c0, BLOCK_M, CK), t, acc, w_taps_ptr, w_off, w_ok, C16,
                            CK, BLOCK_M, FP32_DOT)
    return acc


@triton.jit
def tma_tap_sums_joint(xa_desc, xb_desc, n, h0, w0, w_taps_ptr, C16: tl.constexpr, CA: tl.constexpr,
                       CB: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, FP32_DOT: tl.constexpr):
    """:func:`tma_tap_sum` of both channel parts in one tap loop: per tap the two parts' boxes are copied in the
    same pipeline stage, so a tile waits 9 times instead of 18; returns (acc_a, acc_b)."""
    BLOCK_M: tl.constexpr = TILE_H * TILE_W
    wa_off, wa_ok = tap_weight_offsets(0, CA, C16)
    wb_off, wb_ok = tap_weight_offsets(CA, CB, C16)
    acc_a = tl.zeros([CA // 16, BLOCK_M, 16], dtype=tl.float32)
    acc_b = tl.zeros([CB // 16, BLOCK_M, 16], dtype=tl.float32)
    for t in range(9):
        a = tma_tap(xa_desc, n, h0, w0, t, 0, BLOCK_M, CA)
        b = tma_tap(xb_desc, n, h0, w0, t, CA, BLOCK_M, CB)
        acc_a = slice_product(a, t, acc_a, w_taps_ptr, wa_off, wa_ok, C16, CA, BLOCK_M, FP32_DOT)
        acc_b = slice_product(b, t, acc_b, w_taps_ptr, wb_off, wb_ok, C16, CB, BLOCK_M, FP32_DOT)
    return acc_a, acc_b


@triton.jit
def finish_grouped3x3(acc, b_g_ptr, c0: tl.constexpr, C: tl.constexpr, CK: tl.constexpr, BLOCK_M: tl.constexpr,
                      dtype: tl.constexpr, FP32_DOT: tl.constexpr):
    """A part's tap sum [CK//16, BLOCK_M, 16] as [BLOCK_M, CK] + bias, rounded to the activation dtype as the
    unfused sequence stores it (fp32 again in the interpreter)."""
    ch = c0 + tl.arange(0, CK)
    g = slices_to_tile(acc, BLOCK_M, CK) + tl.load(b_g_ptr + ch, mask=ch < C, other=0.0).to(tl.float32)[None, :]
    g = g.to(dtype)
    if FP32_DOT:
        g = g.to(tl.float32)
    return g


@triton.jit
def tma_grouped3x3_part(x_desc, w_taps_ptr, b_g_ptr, n, h0, w0, c0: tl.constexpr, C: tl.constexpr,
                        C16: tl.constexpr, CK: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
                        FP32_DOT: tl.constexpr):
    """Grouped 3x3 + bias of one channel part of the patch as [TILE_H*TILE_W, CK] (see :func:`finish_grouped3x3`)."""
    return finish_grouped3x3(tma_tap_sum(x_desc, n, h0, w0, c0, w_taps_ptr, C16, CK, TILE_H, TILE_W, FP32_DOT),
                             b_g_ptr, c0, C, CK, TILE_H * TILE_W, x_desc.dtype, FP32_DOT)


@triton.jit
def tma_bias_residual_store(acc, x_desc, out_desc, b_p_ptr, n, h0, w0, c0: tl.constexpr, C: tl.constexpr,
                            CK: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """out[patch, c0:c0+CK] = acc + b_p + x, the residual and the store as bulk copies (the store is clipped at
    the image edges and at C)."""
    BLOCK_M: tl.constexpr = TILE_H * TILE_W
    x = tl.reshape(x_desc.load([n, h0, w0, c0]), (BLOCK_M, CK)).to(tl.float32)
    ch = c0 + tl.arange(0, CK)
    acc += tl.load(b_p_ptr + ch, mask=ch < C, other=0.0).to(tl.float32)[None, :] + x
    out_desc.store([n, h0, w0, c0], tl.reshape(acc.to(out_desc.dtype), (1, TILE_H, TILE_W, CK)))


@triton.jit
def convfirst_tma_kernel(xa_desc, xb_desc, outa_desc, outb_desc, w_taps_ptr, b_g_ptr, we_t_ptr, b_e_ptr,
                         wp_t_ptr, b_p_ptr, N, H, W, C: tl.constexpr, C16: tl.constexpr, HID: tl.constexpr,
                         CA: tl.constexpr, CB: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
                         BLOCK_H: tl.constexpr, JOINT_TAPS: tl.constexpr, FP32_DOT: tl.constexpr):
    """v6: v4's tile walk on a TILE_H x TILE_W patch of one image, every activation tile moved by TMA.

    The nine shifted input tiles, the residual and the output are box copies of the NHWC tensor through
    descriptors (``xa_desc``/``outa_desc`` for channels [0, CA), ``xb_desc``/``outb_desc`` for [CA, CA + CB));
    the copy engine handles the image border, so the program holds no per-pixel offsets or masks. The 1x1
    chain is v4's (:func:`hidden_chain`). A patch that overhangs the image computes on zeros and its store is
    clipped, so H and W need not be multiples of the patch."""
    BLOCK_M: tl.constexpr = TILE_H * TILE_W
    pid = tl.program_id(0)
    tiles_w = tl.cdiv(W, TILE_W)
    tiles_img = tl.cdiv(H, TILE_H) * tiles_w
    n = pid // tiles_img
    h0 = (pid % tiles_img) // tiles_w * TILE_H
    w0 = (pid % tiles_w) * TILE_W
    if CB > 0 and JOINT_TAPS:  # both parts in one tap loop
        acc_a, acc_b = tma_tap_sums_joint(xa_desc, xb_desc, n, h0, w0, w_taps_ptr, C16, CA, CB, TILE_H, TILE_W,
                                          FP32_DOT)
        ga = finish_grouped3x3(acc_a, b_g_ptr, 0, C, CA, BLOCK_M, xa_desc.dtype, FP32_DOT)
        gb = finish_grouped3x3(acc_b, b_g_ptr, CA, C, CB, BLOCK_M, xa_desc.dtype, FP32_DOT)
    else:
        ga = tma_grouped3x3_part(xa_desc, w_taps_ptr, b_g_ptr, n, h0, w0, 0, C, C16, CA, TILE_H, TILE_W, FP32_DOT)
        gb = ga
        if CB > 0:
            gb = tma_grouped3x3_part(xb_desc, w_taps_ptr, b_g_ptr, n, h0, w0, CA, C, C16, CB, TILE_H, TILE_W,
                                     FP32_DOT)
    acc_a, acc_b = hidden_chain(ga, gb, we_t_ptr, b_e_ptr, wp_t_ptr, C, HID, CA, CB, BLOCK_M, BLOCK_H, FP32_DOT)
    tma_bias_residual_store(acc_a, xa_desc, outa_desc, b_p_ptr, n, h0, w0, 0, C, CA, TILE_H, TILE_W)
    if CB > 0:
        tma_bias_residual_store(acc_b, xb_desc, outb_desc, b_p_ptr, n, h0, w0, CA, C, CB, TILE_H, TILE_W)


#: Sliced grouped-conv candidates: (BLOCK_M, BLOCK_H, warps, stages, UNROLL_TAPS, maxnreg). A register cap of
#: 128 lets four 4-warp programs share an SM (the unrolled hidden loop of v4 otherwise takes 140-180). With one
#: stage the loads would be plain (L1-cached) loads instead of cp.async copies that bypass L1, but the two
#: single-stage 64x64 tiles under the 128 cap faulted (illegal address) at C=80 on the H100 (triton 3.6) and
#: are not candidates (NOTES_convfirst.md, v4). Three stages keep two taps in flight (as fast as v5 at 64@56,
#: 6% faster than two stages at 96@56; NOTES_convfirst.md, v5).
SLICED_CONFIGS = ((64, 64, 4, 2, False, 128), (64, 32, 4, 2, False, 128), (64, 64, 4, 2, False, 168),
                  (64, 32, 4, 2, False, 168), (64, 64, 4, 2, False, None), (64, 64, 4, 2, True, 128),
                  (128, 64, 8, 2, False, 128), (128, 64, 8, 2, False, None), (32, 32, 4, 1, False, None),
                  (64, 64, 4, 3, False, 128), (64, 32, 4, 3, False, 128))
#: v3 (dense block-diagonal grouped conv) candidates: (BLOCK_M, BLOCK_H, warps, stages); C <= 128 only.
#: BLOCK_M=128 with 8 warps gives each wgmma M=128 over two warp groups. Measured slower than v2 at every
#: benchmark shape (NOTES_convfirst.md, v3), so they are not autotuning candidates unless asked for.
DENSE_CONFIGS = ((64, 64, 4, 2), (64, 32, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 32, 8, 2),
                 (128, 64, 8, 3))
#: Widest channel count for which the dense grouped conv is a candidate (its waste grows as C/8).
DENSE_MAX_CHANNELS = 128


def _configs(include_dense: bool = False):
    """Autotuning candidates: the v2 (sliced grouped conv) tiles, plus the v3 dense ones if ``include_dense``."""
    out = []
    for block_m, block_h, warps, stages, unroll, maxnreg in SLICED_CONFIGS:
        out.append(triton.Config({"BLOCK_M": block_m, "BLOCK_H": block_h, "UNROLL_TAPS": unroll,
                                  "DENSE_GCONV": False}, num_warps=warps, num_stages=stages, maxnreg=maxnreg))
    for block_m, block_h, warps, stages in DENSE_CONFIGS if include_dense else ():
        out.append(triton.Config({"BLOCK_M": block_m, "BLOCK_H": block_h, "UNROLL_TAPS": False,
                                  "DENSE_GCONV": True}, num_warps=warps, num_stages=stages))
    return out


def _prune(configs, named_args, **kwargs):
    c, npix = named_args["C"], named_args["NPIX"]
    kept = []
    for cf in configs:
        m, bh = cf.kwargs["BLOCK_M"], cf.kwargs["BLOCK_H"]
        width = sum(split_channels(c))
        if not accumulator_fits(m, width, cf):  # the fp32 accumulator is [M, C]
            continue
        if bh > max(32, next_pow2(named_args["HID"])):
            continue
        if m > max(64, next_pow2(npix)):
            continue
        if m == 32 and c <= 192:  # the smallest tile only pays where the accumulator is wide
            continue
        if cf.kwargs.get("DENSE_GCONV") and c > DENSE_MAX_CHANNELS:
            continue
        kept.append(cf)
    return kept or [min(configs, key=lambda cf: cf.kwargs["BLOCK_M"] * 1000 + cf.kwargs["BLOCK_H"])]


#: v5 (resident 1x1 weights, persistent) candidates: (BLOCK_M, BLOCK_H, PROGRAMS_PER_SM, warps, stages, maxnreg).
#: Programs per SM is what shared memory allows: the weights take 2 * (CA + CB) * HID * 2 bytes per program
#: (64 KB at C=64, 144 KB at C=96), the tap pipeline about 12 KB more.
RESIDENT_CONFIGS = ((64, 64, 3, 4, 2, None), (64, 64, 3, 4, 2, 168), (64, 64, 2, 4, 2, None),
                    (64, 32, 3, 4, 2, None), (128, 64, 1, 8, 2, None))
#: Hopper shared memory per SM (228 KB in all, 227 KB for one block) and what v5 uses besides the weights.
SMEM_PER_SM = 228 * 1024
RESIDENT_PIPELINE_BYTES = 12 * 1024
#: Where v5 is a candidate beside v4 (autotuning keeps the faster): weights of 40-64 KB (C=48 and 64 at E=4),
#: so that three programs share an SM. On the H100 v5 was 2-6% faster than v4's two-stage tiles there; at C=32
#: v4 fits five programs per SM and is 11% faster, and at C >= 80 only one v5 program fits and it spills
#: (NOTES_convfirst.md, v5). The fixed (heuristic) config takes v5 there.
RESIDENT_PREFERRED_BYTES = (40 * 1024, 64 * 1024)


def resident_weight_bytes(channels: int, hidden: int, itemsize: int = 2) -> int:
    """Bytes of We and Wp as the v5 kernel keeps them in shared memory (channel parts padded to powers of two)."""
    return 2 * sum(split_channels(channels)) * hidden * itemsize


def resident_fits(channels: int, hidden: int) -> bool:
    """Whether the v5 kernel can run a block: its 1x1 weights fit in one SM's shared memory and its hidden width
    splits into slices of 32."""
    return resident_weight_bytes(channels, hidden) + RESIDENT_PIPELINE_BYTES <= SMEM_PER_SM - 1024 \
        and hidden % 32 == 0


def resident_preferred(channels: int, hidden: int) -> bool:
    """Whether v5 is a candidate for an autotuned launch, and the heuristic config's kernel (see above)."""
    low, high = RESIDENT_PREFERRED_BYTES
    return resident_fits(channels, hidden) and low <= resident_weight_bytes(channels, hidden) <= high


def _resident_configs():
    return [triton.Config({"BLOCK_M": m, "BLOCK_H": bh, "PROGRAMS_PER_SM": p, "UNROLL_TAPS": False}, num_warps=w,
                          num_stages=st, maxnreg=r) for m, bh, p, w, st, r in RESIDENT_CONFIGS]


def _prune_resident(configs, named_args, **kwargs):
    c, hid = named_args["C"], named_args["HID"]
    width = sum(split_channels(c))
    per_program = resident_weight_bytes(c, hid) + RESIDENT_PIPELINE_BYTES
    kept = [cf for cf in configs if hid % cf.kwargs["BLOCK_H"] == 0
            and accumulator_fits(cf.kwargs["BLOCK_M"], width, cf)
            and cf.kwargs["PROGRAMS_PER_SM"] * per_program <= SMEM_PER_SM]
    return kept or [min(configs, key=lambda cf: cf.kwargs["BLOCK_H"])]


_tuned_resident = None


def _resident_launcher():
    global _tuned_resident
    if _tuned_resident is None:
        _tuned_resident = triton.autotune(configs=_resident_configs(), key=["C", "HID", "H", "W", "NPIX"],
                                          prune_configs_by={"early_config_prune": _prune_resident})(
                                              convfirst_resident_kernel)
    return _tuned_resident


#: v6 (TMA tiles) candidates: (TILE_H, TILE_W, BLOCK_H, warps, stages, maxnreg). The patch is TILE_H x TILE_W
#: pixels of one image (64 pixels: v4's best tile size); 8 x 8 covers a 56 x 56 image exactly, 4 x 16 and
#: 16 x 4 waste less at 28 x 28 (7 x 2 patches) than 8 x 8 (4 x 4 patches, 23% overhang). Each stage holds one
#: tap's boxes (8-12 KB at C = 64-96), so deeper pipelines cost no registers. 128-pixel patches of 8 warps
#: under a 128-register cap (half the weight reads per pixel) were 41-43% slower (NOTES_convfirst.md) and are
#: not offered.
TMA_CONFIGS = ((8, 8, 64, 4, 2, 128), (8, 8, 32, 4, 2, 128), (8, 8, 64, 4, 3, 128), (8, 8, 32, 4, 3, 128),
               (8, 8, 32, 4, 3, 168), (8, 8, 64, 4, 3, None), (8, 8, 32, 4, 4, 128), (8, 8, 64, 4, 4, 128),
               (4, 16, 32, 4, 3, 128), (16, 4, 32, 4, 3, 128), (4, 16, 64, 4, 3, 128), (8, 16, 64, 8, 3, None),
               (4, 8, 32, 4, 2, None))


def _set_tma_block_shapes(nargs: dict) -> None:
    """Autotuner pre-hook: the descriptors' boxes follow the config's patch (their channel width stays)."""
    for name in ("xa_desc", "xb_desc", "outa_desc", "outb_desc"):
        desc = nargs[name]
        desc.block_shape = [1, nargs["TILE_H"], nargs["TILE_W"], desc.block_shape[3]]


#: Whether v6 runs both channel parts (where C has two) in one tap loop: 9 waits per patch instead of 18. On the
#: H100 2.7% faster at 96@56 with the best tile (0.541 against 0.556 ms), 4-8% with the others, equal at 80@56
#: (NOTES_convfirst.md, v6c).
TMA_JOINT_TAPS = True


def _tma_configs():
    return [triton.Config({"TILE_H": th, "TILE_W": tw, "BLOCK_H": bh, "JOINT_TAPS": TMA_JOINT_TAPS}, num_warps=w,
                          num_stages=st, maxnreg=r, pre_hook=_set_tma_block_shapes)
            for th, tw, bh, w, st, r in TMA_CONFIGS]


def _prune_tma(configs, named_args, **kwargs):
    c, hid, h, w = named_args["C"], named_args["HID"], named_args["H"], named_args["W"]
    width = sum(split_channels(c))
    kept = []
    for cf in configs:
        th, tw = cf.kwargs["TILE_H"], cf.kwargs["TILE_W"]
        if not accumulator_fits(th * tw, width, cf) or cf.kwargs["BLOCK_H"] > max(32, next_pow2(hid)):
            continue
        if th > max(4, next_pow2(h)) or tw > max(4, next_pow2(w)):
            continue
        if th * tw == 32 and c <= 192:  # as for v4: the small patch only where the accumulator is wide
            continue
        kept.append(cf)
    return kept or [min(configs, key=lambda cf: cf.kwargs["TILE_H"] * cf.kwargs["TILE_W"])]


@functools.cache
def _tma_launcher():
    """The v6 kernel autotuned per (C, hidden, H, W, N); built once, on first use."""
    return triton.autotune(configs=_tma_configs(), key=["C", "HID", "H", "W", "N"],
                           prune_configs_by={"early_config_prune": _prune_tma})(convfirst_tma_kernel)


def tma_usable(*tensors: torch.Tensor) -> bool:
    """TMA needs 16-byte aligned base addresses (row strides are: C is a multiple of 8)."""
    return all(t.data_ptr() % 16 == 0 for t in tensors)


def tma_config(channels: int) -> dict:
    """A fixed v6 config: 8 x 8 patches with v4's heuristic hidden slice and register cap; 4 x 8 patches where
    C >= 384 (the [pixels, C] fp32 accumulator must fit, as for v4's 32-pixel tile); 4 x 4 in the interpreter."""
    if interpreting():
        return {"TILE_H": 4, "TILE_W": 4, "BLOCK_H": 32}
    tile = heuristic_config(channels, 1 << 20)
    if tile["BLOCK_M"] == 32:
        return {"TILE_H": 4, "TILE_W": 8, "BLOCK_H": 32, "num_warps": 4, "num_stages": 2}
    return {"TILE_H": 8, "TILE_W": 8, "BLOCK_H": tile["BLOCK_H"], "num_warps": 4, "num_stages": 3,
            "maxnreg": tile.get("maxnreg")}


def _nhwc_descriptors(x: torch.Tensor, out: torch.Tensor, tile_h: int, tile_w: int):
    """Descriptors of the NHWC views of ``x`` and ``out`` for both channel parts: (xa, xb, outa, outb); the
    second part's are the first's when C is one part."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    ca, cb = split_channels(x.shape[1])
    xv, ov = x.permute(0, 2, 3, 1), out.permute(0, 2, 3, 1)
    descs = []
    for part in (ca, cb or ca):
        descs.append((TensorDescriptor.from_tensor(xv, [1, tile_h, tile_w, part]),
                      TensorDescriptor.from_tensor(ov, [1, tile_h, tile_w, part])))
    (xa, oa), (xb, ob) = descs
    return xa, xb, oa, ob


def candidate_configs():
    """Every autotuning candidate of the three kernels: v4's tiles, v5's (``PROGRAMS_PER_SM`` marks them) and
    v6's (``TILE_H`` marks them)."""
    return _configs() + _resident_configs() + _tma_configs()


_tuned = None
_last_tuner = None


def last_tuner():
    """The autotuner (v4's, v5's or v6's) of the last autotuned launch, None before one."""
    return _last_tuner


_last_ws = None


def last_ws_config() -> dict | None:
    """The warp-specialised kernel's config if the last autotuned launch ran it (:func:`_ws_choice`), else None."""
    return _last_ws


#: Per shape where several kernels are candidates: the autotuner whose best config was fastest.
_KERNEL_CHOICE: dict = {}


def _pick_tuner(key: tuple, run_with, tuners=None, timer=median_ms):
    """Autotune each candidate kernel on this launch's arguments (each over its own tiles), time each one's best
    config, and keep the fastest for ``key``; ``run_with(tuner)`` launches through one autotuner."""
    if key not in _KERNEL_CHOICE:
        tuners = tuple(tuners or (_launcher(), _resident_launcher()))
        runs = {i: (lambda tuner=tuner: run_with(tuner)) for i, tuner in enumerate(tuners)}
        _KERNEL_CHOICE[key] = tuners[pick_fastest(runs, timer)]
    return _KERNEL_CHOICE[key]


def _launcher():
    global _tuned
    if _tuned is None:
        _tuned = triton.autotune(configs=_configs(), key=["C", "HID", "H", "W", "NPIX"],
                                 prune_configs_by={"early_config_prune": _prune})(convfirst_block_kernel)
    return _tuned


def resident_config(channels: int, hidden: int) -> dict:
    """A fixed v5 config: 64-pixel tiles, as many programs per SM (at most 3) as shared memory holds; in the
    interpreter 16-pixel tiles, so that a program walks several tiles even at tiny shapes."""
    if interpreting():
        return {"BLOCK_M": 16, "BLOCK_H": 32, "PROGRAMS_PER_SM": 1, "UNROLL_TAPS": False}
    per_sm = SMEM_PER_SM // (resident_weight_bytes(channels, hidden) + RESIDENT_PIPELINE_BYTES)
    return {"BLOCK_M": 64, "BLOCK_H": 64 if hidden % 64 == 0 else 32, "PROGRAMS_PER_SM": max(1, min(per_sm, 3)),
            "UNROLL_TAPS": False, "num_warps": 4, "num_stages": 2}


def heuristic_config(channels: int, npix: int, hidden: int | None = None) -> dict:
    """A fixed config (no autotuning): the interpreter's small tile, else a tile sized by the channel count.
    With ``hidden`` given, the v5 (resident-weight) config where v5 is preferred (:func:`resident_preferred`)."""
    if interpreting():
        return {"BLOCK_M": 32, "BLOCK_H": 32, "UNROLL_TAPS": False, "DENSE_GCONV": False}
    if hidden is not None and resident_preferred(channels, hidden):
        return resident_config(channels, hidden)
    if channels >= 384:
        return {"BLOCK_M": 32, "BLOCK_H": 32, "UNROLL_TAPS": False, "num_warps": 4, "num_stages": 1}
    # register caps as the autotuner picked them on the H100 (64@56: 128, 192@28: 168); none above 192; three
    # stages measured best at 96@56
    cap = 128 if channels <= 96 else (168 if channels <= 192 else None)
    return {"BLOCK_M": 64, "BLOCK_H": 64 if channels <= 64 else 32, "UNROLL_TAPS": False, "num_warps": 4,
            "num_stages": 3 if 64 < channels <= 96 else 2, "maxnreg": cap}


def check_convfirst_inputs(x, w_taps, b_g, we_t, b_e, wp_t, b_p) -> None:
    check_activation(x)
    c = x.shape[1]
    if we_t.dim() != 2 or we_t.shape[0] != c:
        raise KernelInputError(f"we_t (expand weight, transposed): expected [{c}, E*{c}] for {c} input "
                               f"channels, got {tuple(we_t.shape)}")
    hid = we_t.shape[1]
    check_shape("w_taps (packed grouped-conv weight)", w_taps, (9, packed_taps_rows(c), 16))
    check_shape("b_g", b_g, (c,))
    check_shape("b_e", b_e, (hid,))
    check_shape("wp_t (project weight, transposed)", wp_t, (hid, c))
    check_shape("b_p", b_p, (c,))
    check_weight_dtype(x, w_taps=w_taps, we_t=we_t, wp_t=wp_t)
    check_same_device(x, w_taps=w_taps, b_g=b_g, we_t=we_t, b_e=b_e, wp_t=wp_t, b_p=b_p)


def launch_convfirst_block(x, w_taps, b_g, we_t, b_e, wp_t, b_p, out, config: dict | None = None):
    """Launch the fused block into ``out``. ``config`` fixes the kernel and tile: one with ``PROGRAMS_PER_SM``
    runs the v5 kernel (resident weights, persistent), one with ``TILE_H`` the v6 kernel (TMA tiles), any
    other the v4 kernel. Without one, on the GPU each candidate kernel autotunes over its own tiles (v4 always,
    v5 where :func:`resident_preferred`, v6 where the tensors suit TMA), the best of each is timed and the
    fastest is kept for that shape (:func:`_pick_tuner`)."""
    n, c, h, w = x.shape
    npix, hid = n * h * w, we_t.shape[1]
    if npix == 0:
        return out
    ca, cb = split_channels(c)
    c16 = packed_taps_rows(c)
    args = (x, w_taps, b_g, we_t, b_e, wp_t, b_p, out, npix, h, w, c, c16, hid)
    if config is None and not autotuning():
        config = heuristic_config(c, npix, hid)
    sms = num_sms(x.device)

    def grid_for(resident: bool):
        def grid(meta):
            tiles = triton.cdiv(npix, meta["BLOCK_M"])
            return (min(tiles, sms * meta["PROGRAMS_PER_SM"]) if resident else tiles,)
        return grid

    def tma_grid(meta):
        return (n * triton.cdiv(h, meta["TILE_H"]) * triton.cdiv(w, meta["TILE_W"]),)

    def tma_args(tile_h: int, tile_w: int):
        return (*_nhwc_descriptors(x, out, tile_h, tile_w), w_taps, b_g, we_t, b_e, wp_t, b_p, n, h, w, c, c16, hid)

    if config is not None and "TAP_STAGES" in config:
        from .convfirst_ws import launch_ws_block, ws_block_usable

        why = ws_block_usable(x, w_taps, we_t, wp_t, out)
        if why:
            raise KernelInputError(f"the warp-specialised form (config with TAP_STAGES) cannot run: {why}")
        compiled = launch_ws_block(x, w_taps, b_g, we_t, b_e, wp_t, b_p, out, config)
    elif config is not None and "TILE_H" in config:
        if not tma_usable(x, out):
            raise KernelInputError("the TMA form (config with TILE_H) needs x and out at 16-byte aligned addresses")
        meta = {"JOINT_TAPS": TMA_JOINT_TAPS, **{k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}}
        compiled = convfirst_tma_kernel[tma_grid(meta)](*tma_args(meta["TILE_H"], meta["TILE_W"]), CA=ca, CB=cb,
                                                        FP32_DOT=interpreting(), **meta, **launch_options(config))
    elif config is not None and "PROGRAMS_PER_SM" in config:
        if hid % config["BLOCK_H"]:
            raise KernelInputError(f"config BLOCK_H={config['BLOCK_H']} does not divide the {hid} hidden channels "
                                   f"(the resident-weight kernel needs whole slices)")
        compiled = convfirst_resident_kernel[grid_for(True)(config)](
            *args, CA=ca, CB=cb, BLOCK_M=config["BLOCK_M"], BLOCK_H=config["BLOCK_H"],
            PROGRAMS_PER_SM=config["PROGRAMS_PER_SM"], UNROLL_TAPS=config.get("UNROLL_TAPS", False),
            FP32_DOT=interpreting(), **launch_options(config))
    elif config is not None:
        compiled = convfirst_block_kernel[grid_for(False)(config)](*args, CA=ca, CB=cb, BLOCK_M=config["BLOCK_M"],
                                                                   BLOCK_H=config["BLOCK_H"],
                                                                   UNROLL_TAPS=config.get("UNROLL_TAPS", False),
                                                                   DENSE_GCONV=config.get("DENSE_GCONV", False),
                                                                   FP32_DOT=interpreting(), **launch_options(config))
    else:
        def run_with(tuner):
            if tuner is _tma_launcher():
                # placeholder boxes; the autotuner's pre-hook sets each config's patch
                return tuner[tma_grid](*tma_args(8, 8), CA=ca, CB=cb, FP32_DOT=False)
            return tuner[grid_for(tuner is _tuned_resident)](*args, CA=ca, CB=cb, FP32_DOT=False)

        global _last_tuner
        tuners = [_launcher()]
        if resident_preferred(c, hid):
            tuners.append(_resident_launcher())
        if tma_usable(x, out):
            tuners.append(_tma_launcher())
        if len(tuners) > 1:
            _last_tuner = _pick_tuner((c, hid, h, w, npix, str(x.dtype), len(tuners)), run_with, tuners)
        else:
            _last_tuner = tuners[0]
        global _last_ws
        ws_config = _last_ws = _ws_choice(x, w_taps, b_g, we_t, b_e, wp_t, b_p, out, lambda: run_with(_last_tuner))
        if ws_config is not None:
            from .convfirst_ws import launch_ws_block

            compiled = launch_ws_block(x, w_taps, b_g, we_t, b_e, wp_t, b_p, out, ws_config)
        else:
            compiled = run_with(_last_tuner)
    LAST_COMPILED["convfirst"] = compiled
    return out


#: Per (C, hidden width, H, W, pixels, dtype): the warp-specialised kernel's config where it was faster than the
#: best Triton kernel, else None.
WS_CHOICE: dict = {}
#: ``CONVFIRST_WS_BLOCK=0`` leaves the warp-specialised kernel out of the choice.
WS_BLOCK = os.environ.get("CONVFIRST_WS_BLOCK", "1") != "0"


def _ws_choice(x, w_taps, b_g, we_t, b_e, wp_t, b_p, out, run_triton) -> dict | None:
    """The warp-specialised kernel's config for this shape if it beats ``run_triton`` (the Triton kernels' best),
    timed once per shape at its first call outside a CUDA graph capture; None where it cannot run or was slower."""
    from .convfirst_ws import launch_ws_block, ws_block_usable, ws_configs

    if not WS_BLOCK or ws_block_usable(x, w_taps, we_t, wp_t, out):
        return None
    n, c, h, w = x.shape
    key = (c, we_t.shape[1], h, w, n * h * w, str(x.dtype))
    if key not in WS_CHOICE and not torch.cuda.is_current_stream_capturing():
        configs = {str(cf): cf for cf in ws_configs(c)}
        runs = {"triton": run_triton}
        runs.update({name: (lambda cf: lambda: launch_ws_block(x, w_taps, b_g, we_t, b_e, wp_t, b_p, out, cf))(cf)
                     for name, cf in configs.items()})
        WS_CHOICE[key] = configs.get(pick_fastest(runs))
    return WS_CHOICE.get(key)


def _convfirst_fused_impl(x, w_taps, b_g, we_t, b_e, wp_t, b_p):
    check_convfirst_inputs(x, w_taps, b_g, we_t, b_e, wp_t, b_p)
    out = torch.empty_like(x, memory_format=torch.channels_last)
    return launch_convfirst_block(x, w_taps, b_g, we_t, b_e, wp_t, b_p, out)


@torch.library.custom_op("convfirst::convfirst_block_fused", mutates_args=())
def convfirst_block_fused(x: torch.Tensor, w_taps: torch.Tensor, b_g: torch.Tensor, we_t: torch.Tensor,
                          b_e: torch.Tensor, wp_t: torch.Tensor, b_p: torch.Tensor) -> torch.Tensor:
    """The folded ConvFirst block (see :func:`convfirst.reference.convfirst_folded_forward`) in one kernel.

    ``x``: [N, C, H, W] channels_last, bf16 or fp16. Weights as packed by
    :func:`convfirst.kernels.pack_block_params`. Returns a new channels_last tensor like ``x``.
    """
    return _convfirst_fused_impl(x, w_taps, b_g, we_t, b_e, wp_t, b_p)


def run_convfirst_fused(x, w_taps, b_g, we_t, b_e, wp_t, b_p) -> torch.Tensor:
    """:func:`convfirst_block_fused` for eager code: the same checks and launch, called directly.

    The dispatcher adds 10-30 µs of CPU time per call of a Python custom op (measured on the H100 machine,
    torch 2.11: 118-138 µs per call through the op, 108-111 µs direct, of which about 60-75 µs is Triton's
    autotuned launch), comparable to the kernel itself at small batches. While tracing (see
    :func:`convfirst.kernels._common.tracing`) this calls the op."""
    if tracing(x):
        return convfirst_block_fused(x, w_taps, b_g, we_t, b_e, wp_t, b_p)
    return _convfirst_fused_impl(x, w_taps, b_g, we_t, b_e, wp_t, b_p)


@convfirst_block_fused.register_fake
def _(x, w_taps, b_g, we_t, b_e, wp_t, b_p):
    check_convfirst_inputs(x, w_taps, b_g, we_t, b_e, wp_t, b_p)
    return torch.empty_like(x, memory_format=torch.channels_last)
