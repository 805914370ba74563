"""The MBConv block (gw8, no SE) in one kernel: 1x1 expand -> SiLU -> grouped 3x3 gw8 -> SiLU -> 1x1 project -> + x.

Design in two lines: the grouped conv runs on the *expanded* hidden activation, so each output tile needs
the expansion of its halo pixels, shifted in space, and registers cannot be shifted. We stage it: for each
slice of BLOCK_H hidden channels the program expands its tile plus halo (rows ``p0 - W - 1`` to
``p0 + BLOCK_M + W``), writes that [BLOCK_M + HALO_B, BLOCK_H] slice to a small per-program scratch buffer
that stays in L2, synchronises the CTA, and reads it back 9 times shifted for the grouped conv (tensor
cores, block-diagonal 16x16 slices). The alternative, recomputing the expansion per tap, would cost 9x the
expand FLOPs; staging costs (BLOCK_M + HALO_B) / BLOCK_M x the expand FLOPs (1.5x at W=56, BLOCK_M=256)
and a few hundred KB of L2 traffic per tile.

The grid is persistent (a few programs per SM walking tiles), so the scratch of all programs together is a
few MB and never leaves L2: DRAM traffic per pixel stays 4C bytes (read x, write out).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (LAST_COMPILED, KernelInputError, accumulator_fits, autotuning, check_activation,
                      check_same_device, check_shape, check_weight_dtype, interpreting, launch_options, next_pow2,
                      num_sms, packed_taps_rows, tracing)
from .activation import silu
from .convfirst_fused import add_bias_residual_store, project_accumulate, slices_to_tile
from .gconv import grouped3x3_tap_sum


@triton.jit
def expand_rows(xa, xb, we_t_ptr, b_e_ptr, ca, ca_ok, cb, cb_ok, hcol, h_ok, HID, CB: tl.constexpr,
                FP32_DOT: tl.constexpr):
    """silu(x_rows @ We[:, hcol] + be) for a block of pixel rows held as channel parts xa [R, CA], xb [R, CB]."""
    we_a = tl.load(we_t_ptr + ca[:, None] * HID + hcol[None, :], mask=ca_ok[:, None] & h_ok[None, :], other=0.0)
    if FP32_DOT:
        we_a = we_a.to(tl.float32)
    hpre = tl.dot(xa, we_a)
    if CB > 0:
        we_b = tl.load(we_t_ptr + cb[:, None] * HID + hcol[None, :], mask=cb_ok[:, None] & h_ok[None, :],
                       other=0.0)
        if FP32_DOT:
            we_b = we_b.to(tl.float32)
        hpre = tl.dot(xb, we_b, hpre)
    hpre += tl.load(b_e_ptr + hcol, mask=h_ok, other=0.0).to(tl.float32)[None, :]
    return silu(hpre, FP32_DOT)


@triton.jit
def load_rows(x_ptr, q, q_ok, cols, col_ok, C, FP32_DOT: tl.constexpr):
    v = tl.load(x_ptr + q.to(tl.int64)[:, None] * C + cols[None, :], mask=q_ok[:, None] & col_ok[None, :],
                other=0.0)
    if FP32_DOT:
        v = v.to(tl.float32)
    return v


@triton.jit
def mbconv_block_kernel(x_ptr, we_t_ptr, b_e_ptr, w_taps_ptr, b_g_ptr, wp_t_ptr, b_p_ptr, out_ptr, scratch_ptr,
                        NPIX, H, W, C: tl.constexpr, HID: tl.constexpr, HID16: tl.constexpr,
                        CA: tl.constexpr, CB: tl.constexpr, BLOCK_M: tl.constexpr, HALO_B: tl.constexpr,
                        BLOCK_H: tl.constexpr, PROGRAMS_PER_SM: tl.constexpr, UNROLL_TAPS: tl.constexpr,
                        FP32_DOT: tl.constexpr):
    act = out_ptr.dtype.element_ty
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    ROWS: tl.constexpr = BLOCK_M + HALO_B
    scratch = scratch_ptr + pid.to(tl.int64) * (ROWS * BLOCK_H)
    ra = tl.arange(0, BLOCK_M)
    rb = BLOCK_M + tl.arange(0, HALO_B)
    ca = tl.arange(0, CA)
    ca_ok = ca < C
    hh = tl.arange(0, BLOCK_H)
    num_tiles = tl.cdiv(NPIX, BLOCK_M)
    if CB > 0:
        cb = CA + tl.arange(0, CB)
        cb_ok = cb < C
    else:
        cb = ca
        cb_ok = ca_ok

    for tile in range(pid, num_tiles, nprog):
        p0 = tile * BLOCK_M
        offs = p0 + ra
        pix_ok = offs < NPIX
        pix_w = offs % W
        pix_h = (offs // W) % H
        # halo rows: scratch row r holds pixel q = p0 - W - 1 + r, r in [0, BLOCK_M + HALO_B)
        qa = p0 - W - 1 + ra
        qb = p0 - W - 1 + rb
        qa_ok = (qa >= 0) & (qa < NPIX)
        qb_ok = (qb >= 0) & (qb < NPIX) & (rb < BLOCK_M + 2 * W + 2)
        xa_a = load_rows(x_ptr, qa, qa_ok, ca, ca_ok, C, FP32_DOT)
        xb_a = load_rows(x_ptr, qb, qb_ok, ca, ca_ok, C, FP32_DOT)
        xa_b = xa_a
        xb_b = xb_a
        if CB > 0:
            xa_b = load_rows(x_ptr, qa, qa_ok, cb, cb_ok, C, FP32_DOT)
            xb_b = load_rows(x_ptr, qb, qb_ok, cb, cb_ok, C, FP32_DOT)
        acc_a = tl.zeros([BLOCK_M, CA], dtype=tl.float32)
        if CB > 0:
            acc_b = tl.zeros([BLOCK_M, CB], dtype=tl.float32)

        # no software pipelining here: the scratch reads of slice j must not be hoisted above its barrier
        for j in tl.range(0, HID, BLOCK_H, num_stages=1):
            hcol = j + hh
            h_ok = hcol < HID
            # 1. expand + SiLU for tile and halo rows, staged in the scratch (activation dtype)
            ha = expand_rows(xa_a, xa_b, we_t_ptr, b_e_ptr, ca, ca_ok, cb, cb_ok, hcol, h_ok, HID, CB, FP32_DOT)
            hb = expand_rows(xb_a, xb_b, we_t_ptr, b_e_ptr, ca, ca_ok, cb, cb_ok, hcol, h_ok, HID, CB, FP32_DOT)
            tl.debug_barrier()  # every thread is done reading the previous slice
            tl.store(scratch + ra[:, None] * BLOCK_H + hh[None, :], ha.to(act))
            tl.store(scratch + rb[:, None] * BLOCK_H + hh[None, :], hb.to(act))
            tl.debug_barrier()  # the whole slice is written before anyone reads it shifted
            # 2. grouped 3x3 on hidden channels [j, j + BLOCK_H): output pixel m's centre is scratch row m + W + 1
            g3 = grouped3x3_tap_sum(scratch, ra + W + 1, BLOCK_H, 0, BLOCK_H, w_taps_ptr, j, HID16,
                                    pix_h, pix_w, pix_ok, H, W, BLOCK_H, BLOCK_M, UNROLL_TAPS, FP32_DOT)
            g = slices_to_tile(g3, BLOCK_M, BLOCK_H)
            g += tl.load(b_g_ptr + hcol, mask=h_ok, other=0.0).to(tl.float32)[None, :]
            g = silu(g, FP32_DOT).to(act)
            # 3. project this hidden slice into the [BLOCK_M, C] accumulator
            if FP32_DOT:
                g = g.to(tl.float32)
            acc_a = project_accumulate(g, wp_t_ptr, hcol, h_ok, C, ca, ca_ok, acc_a, FP32_DOT)
            if CB > 0:
                acc_b = project_accumulate(g, wp_t_ptr, hcol, h_ok, C, cb, cb_ok, acc_b, FP32_DOT)

        # 4. + project bias + residual
        row = offs.to(tl.int64) * C
        add_bias_residual_store(acc_a, x_ptr, b_p_ptr, out_ptr, row, pix_ok, ca, ca_ok)
        if CB > 0:
            add_bias_residual_store(acc_b, x_ptr, b_p_ptr, out_ptr, row, pix_ok, cb, cb_ok)


_CONFIGS = [  # BLOCK_M, BLOCK_H, PROGRAMS_PER_SM, num_warps, num_stages (tap loop), UNROLL_TAPS, maxnreg
    (64, 64, 4, 4, 2, False, 128), (64, 64, 3, 4, 2, False, 168), (64, 32, 4, 4, 2, False, 128),
    (128, 64, 2, 8, 2, False, 128), (128, 64, 1, 8, 1, False, None), (64, 64, 2, 4, 2, False, None),
    (64, 64, 2, 4, 1, False, None), (64, 32, 2, 4, 2, False, None), (32, 32, 2, 4, 1, False, None),
]


def _configs():
    return [triton.Config({"BLOCK_M": m, "BLOCK_H": bh, "PROGRAMS_PER_SM": p, "UNROLL_TAPS": u}, num_warps=w,
                          num_stages=st, maxnreg=r) for m, bh, p, w, st, u, r in _CONFIGS]


def _prune(configs, named_args, **kwargs):
    c, npix = named_args["C"], named_args["NPIX"]
    width = max(16, next_pow2(c))
    kept = [cf for cf in configs
            if accumulator_fits(cf.kwargs["BLOCK_M"], width, cf)  # the fp32 accumulator is [BLOCK_M, C]
            and cf.kwargs["BLOCK_M"] <= max(64, next_pow2(npix))]
    return kept or [min(configs, key=lambda cf: cf.kwargs["BLOCK_M"] * 1000 + cf.kwargs["BLOCK_H"])]


_tuned = None


def _launcher():
    global _tuned
    if _tuned is None:
        _tuned = triton.autotune(configs=_configs(), key=["C", "HID", "H", "W", "NPIX"],
                                 prune_configs_by={"early_config_prune": _prune})(mbconv_block_kernel)
    return _tuned


def halo_rows(width: int) -> int:
    """Rows of the halo block: the 2W + 2 pixels beyond a tile, rounded up to a power of two (>= 16)."""
    return max(16, next_pow2(2 * width + 2))


def heuristic_config(channels: int, npix: int) -> dict:
    """A fixed config (no autotuning): the interpreter's small tile, else a tile sized by the channel count."""
    if interpreting():
        return {"BLOCK_M": 32, "BLOCK_H": 32, "PROGRAMS_PER_SM": 1, "UNROLL_TAPS": False}
    if channels >= 256:
        return {"BLOCK_M": 32, "BLOCK_H": 32, "PROGRAMS_PER_SM": 2, "UNROLL_TAPS": False, "num_warps": 4,
                "num_stages": 1}
    return {"BLOCK_M": 64, "BLOCK_H": 32, "PROGRAMS_PER_SM": 2, "UNROLL_TAPS": False, "num_warps": 4,
            "num_stages": 2}


def check_mbconv_inputs(x, we_t, b_e, w_taps, b_g, wp_t, b_p) -> None:
    check_activation(x)
    c = x.shape[1]
    if we_t.dim() != 2 or we_t.shape[0] != c:
        raise KernelInputError(f"we_t (expand weight, transposed): expected [{c}, E*{c}] for {c} input "
                               f"channels, got {tuple(we_t.shape)}")
    hid = we_t.shape[1]
    if hid % 8:
        raise KernelInputError(f"we_t: {hid} hidden channels is not a multiple of the group width 8")
    check_shape("b_e", b_e, (hid,))
    check_shape("w_taps (packed grouped-conv weight on the hidden channels)", w_taps, (9, packed_taps_rows(hid), 16))
    check_shape("b_g", b_g, (hid,))
    check_shape("wp_t (project weight, transposed)", wp_t, (hid, c))
    check_shape("b_p", b_p, (c,))
    check_weight_dtype(x, w_taps=w_taps, we_t=we_t, wp_t=wp_t)
    check_same_device(x, w_taps=w_taps, b_g=b_g, we_t=we_t, b_e=b_e, wp_t=wp_t, b_p=b_p)


def launch_mbconv_block(x, we_t, b_e, w_taps, b_g, wp_t, b_p, out, config: dict | None = None):
    n, c, h, w = x.shape
    npix, hid = n * h * w, we_t.shape[1]
    if npix == 0:
        return out
    # one power-of-two channel part (C=80 runs as 128): the two-part split of the ConvFirst kernel gave wrong
    # results in this kernel on the H100 (triton 3.6) for 64-wide hidden slices; see NOTES_mbconv.md
    ca, cb = max(16, next_pow2(c)), 0
    halo = halo_rows(w)
    sms = num_sms(x.device)
    if config is None and not autotuning():
        config = heuristic_config(c, npix)
    if config is not None:
        cfgs = [(config["BLOCK_M"], config["BLOCK_H"], config.get("PROGRAMS_PER_SM", 1))]
    else:
        cfgs = [(cf.kwargs["BLOCK_M"], cf.kwargs["BLOCK_H"], cf.kwargs["PROGRAMS_PER_SM"]) for cf in _configs()]
    # one scratch big enough for every candidate config: programs x (BLOCK_M + HALO_B) x BLOCK_H
    scratch_elems = max(min(triton.cdiv(npix, m), sms * p) * (m + halo) * bh for m, bh, p in cfgs)
    scratch = torch.empty(scratch_elems, dtype=x.dtype, device=x.device)

    def grid(meta):
        tiles = triton.cdiv(npix, meta["BLOCK_M"])
        return (min(tiles, sms * meta["PROGRAMS_PER_SM"]),)

    common = (x, we_t, b_e, w_taps, b_g, wp_t, b_p, out, scratch, npix, h, w, c, hid, packed_taps_rows(hid))
    if config is not None:
        m = config["BLOCK_M"]
        meta = {"BLOCK_M": m, "PROGRAMS_PER_SM": config.get("PROGRAMS_PER_SM", 1)}
        extra = launch_options(config)
        compiled = mbconv_block_kernel[grid(meta)](*common, CA=ca, CB=cb, BLOCK_M=m, HALO_B=halo,
                                                   BLOCK_H=config["BLOCK_H"],
                                                   PROGRAMS_PER_SM=meta["PROGRAMS_PER_SM"],
                                                   UNROLL_TAPS=config.get("UNROLL_TAPS", False),
                                                   FP32_DOT=interpreting(), **extra)
    else:
        compiled = _launcher()[grid](*common, CA=ca, CB=cb, HALO_B=halo, FP32_DOT=False)
    LAST_COMPILED["mbconv"] = compiled
    return out


def _mbconv_fused_impl(x, we_t, b_e, w_taps, b_g, wp_t, b_p):
    check_mbconv_inputs(x, we_t, b_e, w_taps, b_g, wp_t, b_p)
    out = torch.empty_like(x, memory_format=torch.channels_last)
    return launch_mbconv_block(x, we_t, b_e, w_taps, b_g, wp_t, b_p, out)


@torch.library.custom_op("convfirst::mbconv_block_fused", mutates_args=())
def mbconv_block_fused(x: torch.Tensor, we_t: torch.Tensor, b_e: torch.Tensor, w_taps: torch.Tensor,
                       b_g: torch.Tensor, wp_t: torch.Tensor, b_p: torch.Tensor) -> torch.Tensor:
    """The folded MBConv block (see :func:`convfirst.reference.mbconv_folded_forward`) in one kernel.

    ``x``: [N, C, H, W] channels_last, bf16 or fp16. Weights as packed by
    :func:`convfirst.kernels.pack_block_params`. Returns a new channels_last tensor like ``x``.
    """
    return _mbconv_fused_impl(x, we_t, b_e, w_taps, b_g, wp_t, b_p)


def run_mbconv_fused(x, we_t, b_e, w_taps, b_g, wp_t, b_p) -> torch.Tensor:
    """:func:`mbconv_block_fused` for eager code, called directly (see
    :func:`convfirst.kernels.convfirst_fused.run_convfirst_fused`); the op under compile/export."""
    if tracing(x):
        return mbconv_block_fused(x, we_t, b_e, w_taps, b_g, wp_t, b_p)
    return _mbconv_fused_impl(x, we_t, b_e, w_taps, b_g, wp_t, b_p)


@mbconv_block_fused.register_fake
def _(x, we_t, b_e, w_taps, b_g, wp_t, b_p):
    check_mbconv_inputs(x, we_t, b_e, w_taps, b_g, wp_t, b_p)
    return torch.empty_like(x, memory_format=torch.channels_last)
