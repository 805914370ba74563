"""A ConvFirst block's grouped 3x3 conv and expanding 1x1 layer in one Hopper kernel (Gluon): ``h = silu(g @ We + be)``
with ``g = gconv3x3_gw8(x) + bg`` computed inside the kernel and kept in shared memory.

Why: at the 14x14 and 7x7 stages the models run the block unfused (the fused kernel's [pixels, C] accumulator does
not fit in registers there), as three launches: the grouped conv writes g to DRAM, the expanding matmul reads it
back, the projecting matmul follows. In ConvFirstNet-H's profile the grouped conv of the 256@14 stage is about a
tenth of the model's time. Here a program owns BLOCK_M consecutive pixels: it computes their grouped conv, 16
channels at a time on the tensor cores (mma.sync with 16x16 block-diagonal tap weights, the same packing as
:mod:`gconv`), rounds g to the activation dtype (as the unfused sequence stores it) and stores it in shared memory;
then it runs the expanding matmul over all E*C hidden channels from that shared-memory copy (wgmma), the weight
tiles arriving by TMA a few steps ahead, with the bias and SiLU in the epilogue. g never reaches DRAM, and while one
program computes its grouped conv another program on the same SM keeps the tensor cores busy with its matmul (two
programs fit where g and the weight ring take at most half of the shared memory).

Gluon runs only on a GPU (the interpreter does not execute it); on the CPU the tests compile it for sm_90.
"""
from __future__ import annotations

import functools

import torch
import triton

from ._common import KernelInputError, check_activation, check_same_device, check_shape, packed_taps_rows
from .gemm_ws import HAVE_GLUON, ws_available

if HAVE_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import mma_v2
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                   warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    from .gemm_ws import _silu

    #: A barrier across the program's threads (named ``thread_barrier`` in Triton 3.6, ``barrier`` in 3.8).
    _cta_barrier = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier

#: Pixels per program, weight-tile shape [BLOCK_K, BLOCK_N] of the expanding matmul, and weight stages in flight.
BLOCK_M, BLOCK_K, BLOCK_N, STAGES = 128, 64, 128, 2
#: Shared memory per SM on Hopper (bytes) and a register cap under which two 4-warp programs share an SM.
SMEM_PER_SM = 228 * 1024
MAXNREG = 240


if HAVE_GLUON:
    @gluon.jit
    def _slice_sum(x_ptr, w_taps_ptr, rows, pix_h, pix_w, pix_ok, k_in, w_rows, w_cols, s, H, W, C: gl.constexpr,
                   C16: gl.constexpr, acc, a_layout: gl.constexpr, b_layout: gl.constexpr):
        """acc + the 9-tap sum of 16-channel slice ``s``: the nine shifted [M, 16] loads of x (zero outside the image)
        are all issued first, then each is moved into the mma operand layout and multiplied by the tap's 16x16
        block-diagonal weight (mma.sync)."""
        taps = ()
        for t in gl.static_range(9):
            dy = t // 3 - 1
            dx = t % 3 - 1
            ok = pix_ok & (pix_h + dy >= 0) & (pix_h + dy < H) & (pix_w + dx >= 0) & (pix_w + dx < W)
            src = (rows + (dy * W + dx)).to(gl.int64) * C + s * 16
            taps = taps + (gl.load(x_ptr + gl.expand_dims(src, 1) + k_in, mask=gl.expand_dims(ok, 1), other=0.0),)
        for t in gl.static_range(9):
            b = gl.convert_layout(gl.load(w_taps_ptr + (t * C16 + s * 16 + w_rows) * 16 + w_cols), b_layout)
            acc = mma_v2(gl.convert_layout(taps[t], a_layout), b, acc)
        return acc

    @gluon.jit
    def _grouped_conv_to_smem(x_ptr, w_taps_ptr, b_g_ptr, g_smem, off_m, NPIX, H, W, C: gl.constexpr,
                              C16: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_K: gl.constexpr):
        """g[off_m : off_m + BLOCK_M, :] = gconv3x3_gw8(x) + b_g into ``g_smem`` [C/BLOCK_K, M, BLOCK_K] (the
        matmul's A tiles), 16 channels at a time (:func:`_slice_sum`), rounded to x's dtype."""
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[gl.num_warps(), 1],
                                                      instr_shape=[16, 8])
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
        b_layout: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
        # x is read with 16-byte vectors (8 channels per thread), then moved into the mma operand layout
        load_layout: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [gl.num_warps(), 1], [1, 0])
        rows = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, load_layout))
        k_in = gl.expand_dims(gl.arange(0, 16, layout=gl.SliceLayout(0, load_layout)), 0)
        pix_w = rows % W
        pix_h = (rows // W) % H
        pix_ok = rows < NPIX
        w_rows = gl.expand_dims(gl.arange(0, 16, layout=gl.SliceLayout(1, load_layout)), 1)
        w_cols = gl.expand_dims(gl.arange(0, 16, layout=gl.SliceLayout(0, load_layout)), 0)
        bias_cols = gl.arange(0, 16, layout=gl.SliceLayout(0, mma))
        for kb in range(C // BLOCK_K):  # one A tile: BLOCK_K // 16 = 4 slices
            s0 = kb * 4
            g0 = _slice_sum(x_ptr, w_taps_ptr, rows, pix_h, pix_w, pix_ok, k_in, w_rows, w_cols, s0, H, W, C, C16,
                            gl.zeros([BLOCK_M, 16], gl.float32, mma), a_layout, b_layout)
            g1 = _slice_sum(x_ptr, w_taps_ptr, rows, pix_h, pix_w, pix_ok, k_in, w_rows, w_cols, s0 + 1, H, W, C,
                            C16, gl.zeros([BLOCK_M, 16], gl.float32, mma), a_layout, b_layout)
            g2 = _slice_sum(x_ptr, w_taps_ptr, rows, pix_h, pix_w, pix_ok, k_in, w_rows, w_cols, s0 + 2, H, W, C,
                            C16, gl.zeros([BLOCK_M, 16], gl.float32, mma), a_layout, b_layout)
            g3 = _slice_sum(x_ptr, w_taps_ptr, rows, pix_h, pix_w, pix_ok, k_in, w_rows, w_cols, s0 + 3, H, W, C,
                            C16, gl.zeros([BLOCK_M, 16], gl.float32, mma), a_layout, b_layout)
            g0 = g0 + gl.expand_dims(gl.load(b_g_ptr + s0 * 16 + bias_cols), 0)
            g1 = g1 + gl.expand_dims(gl.load(b_g_ptr + s0 * 16 + 16 + bias_cols), 0)
            g2 = g2 + gl.expand_dims(gl.load(b_g_ptr + s0 * 16 + 32 + bias_cols), 0)
            g3 = g3 + gl.expand_dims(gl.load(b_g_ptr + s0 * 16 + 48 + bias_cols), 0)
            # [M, 16] x 4 -> [M, 64]: channel 16 * (2 * i + j) + k of the tile is quad[:, k, j, i]
            quad = gl.join(gl.join(g0, g1), gl.join(g2, g3))
            tile = gl.reshape(gl.permute(quad, [0, 3, 2, 1]), [BLOCK_M, BLOCK_K])
            g_smem.index(kb).store(tile.to(x_ptr.dtype.element_ty))

    @gluon.jit
    def gconv_expand_kernel(x_ptr, w_taps_ptr, b_g_ptr, we_desc, b_e_ptr, h_ptr, NPIX, H, W, C: gl.constexpr,
                            C16: gl.constexpr, HID: gl.constexpr, G_TILES: gl.constexpr, BLOCK_M: gl.constexpr,
                            STAGES: gl.constexpr):
        """One program: BLOCK_M pixels' grouped conv into shared memory, then silu(g @ We + be) for all HID
        channels, BLOCK_N at a time. ``G_TILES`` is C / BLOCK_K rounded up to a power of two (shared-memory
        shapes)."""
        BLOCK_K: gl.constexpr = we_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = we_desc.block_type.shape[1]
        K_STEPS: gl.constexpr = C // BLOCK_K
        TOTAL: gl.constexpr = K_STEPS * (HID // BLOCK_N)
        dtype: gl.constexpr = x_ptr.dtype.element_ty
        off_m = gl.program_id(0) * BLOCK_M

        g_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        g_smem = gl.allocate_shared_memory(dtype, [G_TILES, BLOCK_M, BLOCK_K], g_layout)
        w_bufs = gl.allocate_shared_memory(we_desc.dtype, [STAGES, BLOCK_K, BLOCK_N], we_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
        # the first weight tiles travel while the grouped conv runs
        for i in gl.static_range(STAGES):
            mbarrier.expect(ready.index(i), we_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(we_desc, [(i % K_STEPS) * BLOCK_K, (i // K_STEPS) * BLOCK_N],
                                            ready.index(i), w_bufs.index(i))

        _grouped_conv_to_smem(x_ptr, w_taps_ptr, b_g_ptr, g_smem, off_m, NPIX, H, W, C, C16, BLOCK_M, BLOCK_K)
        fence_async_shared()  # g, written by ordinary stores, is read by the tensor cores' asynchronous proxy
        _cta_barrier()

        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[gl.num_warps(), 1],
                                                             instr_shape=[16, BLOCK_N, 16])
        rows = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, acc_layout))
        row_off = gl.expand_dims(rows.to(gl.int64) * HID, 1)
        row_ok = gl.expand_dims(rows < NPIX, 1)
        cols0 = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, acc_layout))
        for n in range(HID // BLOCK_N):
            acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, acc_layout)
            for kk in range(K_STEPS):
                step = n * K_STEPS + kk
                s = step % STAGES
                mbarrier.wait(ready.index(s), (step // STAGES) & 1)
                w_s = w_bufs.index(s)
                a_s = g_smem.index(kk)
                acc = warpgroup_mma(a_s, w_s, acc, is_async=True)
                acc = warpgroup_mma_wait(0, deps=[acc, a_s, w_s])[0]
                nxt = step + STAGES
                if nxt < TOTAL:  # this stage is free again: its next tile
                    mbarrier.expect(ready.index(s), we_desc.block_type.nbytes)
                    tma.async_copy_global_to_shared(we_desc, [(nxt % K_STEPS) * BLOCK_K, (nxt // K_STEPS) * BLOCK_N],
                                                    ready.index(s), w_s)
            cols = n * BLOCK_N + cols0
            acc = _silu(acc + gl.expand_dims(gl.load(b_e_ptr + cols), 0))
            gl.store(h_ptr + row_off + gl.expand_dims(cols, 0), acc.to(dtype), mask=row_ok)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))


def _g_tiles(channels: int) -> int:
    return triton.next_power_of_2(channels // BLOCK_K)


def smem_bytes(channels: int, itemsize: int = 2) -> int:
    """Shared memory of one program: g (C / BLOCK_K tiles, rounded up to a power of two) and the weight stages."""
    return (_g_tiles(channels) * BLOCK_K * BLOCK_M + STAGES * BLOCK_K * BLOCK_N) * itemsize


def programs_per_sm(channels: int) -> int:
    return SMEM_PER_SM // (smem_bytes(channels) + 1024)


def usable(x: torch.Tensor, hidden: int) -> bool:
    """Whether this kernel can run the block: Gluon on a Hopper GPU, C a multiple of BLOCK_K, the hidden width a
    multiple of BLOCK_N, and at least one program's shared memory on an SM."""
    c = x.shape[1]
    return (ws_available(x.device) and c % BLOCK_K == 0 and hidden % BLOCK_N == 0 and programs_per_sm(c) >= 1)


@functools.cache
def _layout(dtype: torch.dtype):
    return gl.NVMMASharedLayout.get_default_for([BLOCK_K, BLOCK_N], gl.bfloat16 if dtype == torch.bfloat16
                                                else gl.float16)


def gconv_expand(x: torch.Tensor, w_taps: torch.Tensor, b_g: torch.Tensor, we_t: torch.Tensor,
                 b_e: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``silu((gconv3x3_gw8(x) + b_g) @ we_t + b_e)`` as the [N*H*W, hidden] matrix the projecting layer reads.

    ``x``: [N, C, H, W] channels_last, bf16 or fp16; weights packed as for the fused kernels
    (:func:`convfirst.kernels.pack_block_params`); ``out``: an optional [N*H*W, hidden] contiguous result buffer."""
    check_activation(x)
    n, c, h, w = x.shape
    if we_t.dim() != 2 or we_t.shape[0] != c:
        raise KernelInputError(f"we_t (expand weight, transposed): expected [{c}, hidden], got {tuple(we_t.shape)}")
    hid = we_t.shape[1]
    check_shape("w_taps (packed grouped-conv weight)", w_taps, (9, packed_taps_rows(c), 16))
    check_shape("b_g", b_g, (c,))
    check_shape("b_e", b_e, (hid,))
    check_same_device(x, w_taps=w_taps, b_g=b_g, we_t=we_t, b_e=b_e)
    if we_t.dtype != x.dtype or w_taps.dtype != x.dtype:
        raise KernelInputError(f"weights must have the activation's dtype {x.dtype}: we_t {we_t.dtype}, "
                               f"w_taps {w_taps.dtype}")
    if not usable(x, hid):
        raise KernelInputError(f"gconv_expand needs Gluon on a Hopper GPU, C a multiple of {BLOCK_K} and a hidden "
                               f"width that is a multiple of {BLOCK_N}; got C={c}, hidden={hid}, device {x.device}")
    npix = n * h * w
    if out is None:
        out = torch.empty(npix, hid, dtype=x.dtype, device=x.device)
    elif out.shape != (npix, hid) or out.dtype != x.dtype or not out.is_contiguous() or out.device != x.device:
        raise KernelInputError(f"out: expected a contiguous [{npix}, {hid}] {x.dtype} tensor on {x.device}, got "
                               f"{tuple(out.shape)} {out.dtype} on {out.device}")
    if npix == 0:
        return out
    we_desc = GluonDescriptor.from_tensor(we_t.contiguous(), [BLOCK_K, BLOCK_N], _layout(x.dtype))
    rows = x.permute(0, 2, 3, 1)  # the NHWC memory of a channels_last tensor, no copy
    gconv_expand_kernel[(triton.cdiv(npix, BLOCK_M),)](
        rows, w_taps, b_g, we_desc, b_e, out, npix, h, w, C=c, C16=packed_taps_rows(c), HID=hid,
        G_TILES=_g_tiles(c), BLOCK_M=BLOCK_M, STAGES=STAGES, num_warps=4, maxnreg=MAXNREG)
    return out


@functools.cache
def signature(dtype: str = "bf16") -> dict:
    """The kernel's argument types for an sm_90 compile without a GPU."""
    from triton.runtime.jit import mangle_type

    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
    desc = GluonDescriptor.from_tensor(torch.empty(256, 1024, dtype=torch_dtype), [BLOCK_K, BLOCK_N],
                                       _layout(torch_dtype))
    return {"x_ptr": f"*{dtype}", "w_taps_ptr": f"*{dtype}", "b_g_ptr": "*fp32", "we_desc": mangle_type(desc),
            "b_e_ptr": "*fp32", "h_ptr": f"*{dtype}", "NPIX": "i32", "H": "i32", "W": "i32", "C": "constexpr",
            "C16": "constexpr", "HID": "constexpr", "G_TILES": "constexpr", "BLOCK_M": "constexpr",
            "STAGES": "constexpr"}
