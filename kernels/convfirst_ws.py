"""The whole ConvFirst block as one warp-specialised Hopper kernel (Gluon), v8 of ``NOTES_convfirst.md``:
grouped 3x3 gw8 + bias -> 1x1 expand + bias -> SiLU -> 1x1 project + bias -> + x, NHWC, one launch.

Why: the Triton kernels (v4-v6) are bound by the latency of their nine tap loads per tile (``NOTES_convfirst.md``):
a program waits for a tap's copy, runs its small products, then waits for the next, and only three or four
programs share an SM. Here each kind of work has warps of its own, joined by rings of shared-memory stages::

    tap loader (1 warp)        per 32-channel box of both patches of a tile pair: with HALO, per kernel column dx
                               the patch's TILE_H + 2 rows shifted by dx - 1 (two TMA copies, borders zero-filled
                               by the copy engine); without, each of the nine taps as one copy
    grouped conv (4 warps)     per tap four wgmma (two patches x two 16-channel slices, 16 x 16 block-diagonal
                               weights kept on chip), + b_g -> bf16 -> a two-stage ring of g
    weight loader (1 warp)     chunks of BH hidden channels of We ([16, BH] boxes) and Wp ([BH, CPAD])
    chain consumers (4 warps   per patch (64 pixels) and chunk j, as in the pair kernel (:mod:`pair_ws`):
      x 2)                         S = g @ We[:, j]; P = silu(S + b_e[j]) in registers; O += P @ Wp[j, :]
                               out = O + b_p + x, stored through pointers (masked at the image border)

A program walks pairs of TILE_H x TILE_W patches of one image (8 x 8 or 4 x 16), one per chain consumer. With
HALO the kernel rows of a tap are views of the staged rows that start whole image rows in (whole swizzle atoms):
Gluon's ``slice`` refuses such views, and Triton 3.6 takes them as a reinterpreted row of the staged buffer,
which 3.8's verifier refuses (:data:`HALO_VIEWS` picks the form this Triton compiles). The projecting weight's
box is CPAD = next power of two >= C columns wide; the copy engine zero-fills the columns past C. The chain holds
the output columns as one [64, C] fp32 accumulator, or, where C is not a power of two, as two of power-of-two
widths (96 = 64 + 32, 192 = 128 + 64; :func:`split_channels`), each with its own product on a column slice of the
Wp stage. They must fit under the launch's 128-register cap (16 warps), so C <= 192; past 128 columns the hidden
chunk is 32 wide and the grouped-conv ring one stage deep (:data:`WIDE_CONFIGS`).

Measured (H100, batch 256, ``NOTES_convfirst.md`` v8, v8g): 64@56 0.249 ms, 96@56 0.407 ms, 128@28 0.178 ms,
192@28 0.398 ms against 0.272, 0.533, 0.214 and 0.468 for the best Triton kernel; the launcher times both at a
shape's first call and keeps the faster (:func:`convfirst_fused._ws_choice`).

Gluon runs only on a GPU: on the CPU the tests compile this kernel for sm_90 and read its PTX; on the GPU they
check its values against the fp32 reference.
"""
from __future__ import annotations

import torch
import triton

from ._common import next_pow2, split_channels
from .gemm_ws import HAVE_GLUON, _cached_layout

if HAVE_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                   warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    from .pair_ws import hidden_chain, load_weight_chunks

#: Channels per grouped-conv slice (one packed 16 x 16 block-diagonal weight), and per TMA box of x (two slices:
#: 64-byte rows; 16-channel boxes, 32-byte rows, made v8b twice as slow, bound by the copies).
SLICE = 16
BOX = 32
#: Candidate configs: patch shape (TILE_H, TILE_W), hidden chunk BH, weight-ring STAGES, tap-ring TAP_STAGES (with
#: HALO_VIEWS; twice as many single-tap stages without).
WS_CONFIGS = ((8, 8, 64, 2, 3), (8, 8, 64, 2, 4), (8, 8, 32, 2, 3), (4, 16, 64, 2, 3), (8, 8, 64, 3, 3), (8, 8, 64, 4, 3),
              (4, 16, 64, 3, 3))
#: Candidates where the accumulators are wider than 128 columns (C = 160, 192): 32-wide hidden chunks (a 64-wide
#: chunk's S and P beside [64, 192] of accumulators spill under the 128-register cap) and one stage of grouped-conv
#: output (two do not fit in shared memory beside the resident grouped-conv weights).
WIDE_CONFIGS = ((8, 8, 32, 2, 3), (4, 16, 32, 2, 3), (8, 8, 32, 2, 2))
#: Whether the tap loader stages each patch's rows with their halo once per kernel column (three copies per
#: 32-channel box instead of nine): the kernel rows are then views of the staged rows that start whole image rows
#: in. Gluon's ``slice`` refuses such views, so they are taken by reinterpreting a row of the staged buffer to the
#: patch's extent; Triton 3.6 (the GPU machine's) accepts that, 3.8's verifier refuses any reinterpretation of a
#: subview. Elsewhere each tap is its own copy (v8c's form).
HALO_VIEWS = tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 7)
#: Stages of grouped-conv output (both patches of a tile pair each) between the producer and the chain consumers
#: (one where two do not fit in shared memory).
G_STAGES = 2
#: Accumulator columns a chain consumer can hold (:func:`split_channels` widths summed) under the launch's cap.
MAX_WIDTH = 192
#: Shared memory a config may take (of the 227 KB of an H100 SM; barriers and alignment need the rest).
SMEM_LIMIT = 220 * 1024
#: Registers per thread: the chain consumers, the grouped-conv warp group (what is left of the 64 K registers of
#: an SM after the two chain consumers and the two 24-register loader warps), and the launch's cap (14 warps, padded
#: to 16: 65536 / 512 = 128).
CHAIN_REGS = 208
GCONV_REGS = 80
LAUNCH_REGS = 128


if HAVE_GLUON:
    # a barrier across the warps of a partition: ``thread_barrier`` in Triton 3.6, ``barrier`` from 3.7 on
    _group_barrier = getattr(gl, "thread_barrier", None) or gl.barrier

    @gluon.jit
    def _patch_origin(q, PPI, PW, TILE_H: gl.constexpr, TILE_W: gl.constexpr):
        """Image and top-left pixel of patch ``q`` (patches in row-major order within an image)."""
        n = q // PPI
        rem = q % PPI
        return n, (rem // PW) * TILE_H, (rem % PW) * TILE_W

    @gluon.jit
    def copy_taps(xm_desc, xt_desc, buf, bar, n, h0, w0, c, i, HALO: gl.constexpr):
        """Into stage buffer ``buf``, for the patch at (h0, w0) of image n and the box of channels c ...: with HALO the
        patch's TILE_H + 2 rows with their halo shifted by kernel column i - 1 (a copy of TILE_H rows and one of 2;
        ``buf`` holds 2 TILE_H rows); without, tap i's shifted patch as one copy. The copy engine zero-fills what
        lies outside the image. Shared by the loaders of this kernel and the grouped conv's (:mod:`gconv_ws`)."""
        if HALO:
            TILE_H: gl.constexpr = xm_desc.block_type.shape[1]
            TILE_W: gl.constexpr = xm_desc.block_type.shape[2]
            BOX: gl.constexpr = xm_desc.block_type.shape[3]
            row_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([TILE_W, BOX], buf.dtype)
            # Triton 3.6 takes these views of a subview (3.8's verifier refuses them)
            tma.async_copy_global_to_shared(xm_desc, [n, h0 - 1, w0 - 1 + i, c], bar,
                                            buf._reinterpret(buf.dtype, xm_desc.block_type.shape, xm_desc.layout))
            tail = buf._reinterpret(buf.dtype, buf.shape, row_layout).index(TILE_H)
            tma.async_copy_global_to_shared(xt_desc, [n, h0 - 1 + TILE_H, w0 - 1 + i, c], bar,
                                            tail._reinterpret(buf.dtype, xt_desc.block_type.shape, xt_desc.layout))
        else:
            tma.async_copy_global_to_shared(xm_desc, [n, h0 - 1 + i // 3, w0 - 1 + i % 3, c], bar, buf)

    @gluon.jit
    def _tap_loader(xm_desc, xt_desc, gw_desc, tap_bufs, gw_bufs, tap_ready, tap_empty, gw_ready, n_patches, PPI,
                    PW, C: gl.constexpr, HALO: gl.constexpr):
        """One warp: the grouped conv's weights once (every tap's 16 x 16 slices, kept for the program's life);
        then for both patches of each tile pair and each 32-channel box: with HALO, per kernel column dx the
        patch's rows with their halo (TILE_H + 2 rows, shifted by dx - 1 columns) as two copies of TILE_H rows
        and 2 rows; without, each of the nine taps as one copy of the shifted patch."""
        TILE_H: gl.constexpr = xm_desc.block_type.shape[1]
        TILE_W: gl.constexpr = xm_desc.block_type.shape[2]
        BOX: gl.constexpr = xm_desc.block_type.shape[3]
        TAP_STAGES: gl.constexpr = tap_bufs.type.shape[0] // 2
        mbarrier.expect(gw_ready, 9 * C * 16 * 2)
        for j in range(9 * C // 16):
            tma.async_copy_global_to_shared(gw_desc, [j * 16, 0], gw_ready, gw_bufs.index(j))
        nbytes: gl.constexpr = 2 * (xm_desc.block_type.nbytes + (xt_desc.block_type.nbytes if HALO else 0))
        n_pairs = gl.cdiv(n_patches, 2)
        k = 0
        for t in range(gl.program_id(0), n_pairs, gl.num_programs(0)):
            # an odd last patch is loaded twice (its second copy's output is masked off)
            n0, h0, w0 = _patch_origin(2 * t, PPI, PW, TILE_H, TILE_W)
            n1, h1, w1 = _patch_origin(gl.minimum(2 * t + 1, n_patches - 1), PPI, PW, TILE_H, TILE_W)
            for q in range(C // BOX):
                for i in gl.static_range(3 if HALO else 9):  # kernel column dx (HALO) or tap
                    s = k % TAP_STAGES
                    mbarrier.wait(tap_empty.index(s), ((k // TAP_STAGES) & 1) ^ 1)  # fresh barriers pass
                    bar = tap_ready.index(s)
                    mbarrier.expect(bar, nbytes)
                    for c in gl.static_range(2):
                        copy_taps(xm_desc, xt_desc, tap_bufs.index(2 * s + c), bar, n0 if c == 0 else n1,
                                  h0 if c == 0 else h1, w0 if c == 0 else w1, q * BOX, i, HALO)
                    k += 1

    @gluon.jit
    def _weight_loader(we_desc, wp_desc, we_bufs, wp_bufs, w_ready, w_empty, n_patches, C: gl.constexpr,
                       HIDDEN: gl.constexpr):
        """One warp: per tile pair, every hidden chunk's expanding and projecting weights, STAGES chunks ahead."""
        n_pairs = gl.cdiv(n_patches, 2)
        chunk = 0
        for t in range(gl.program_id(0), n_pairs, gl.num_programs(0)):
            chunk = load_weight_chunks(we_desc, wp_desc, we_bufs, wp_bufs, w_ready, w_empty, chunk, HIDDEN)

    @gluon.jit
    def _rows_from(buf, dy, ROWS: gl.constexpr, layout: gl.constexpr):
        """The [ROWS, BOX] view of a [rows, TILE_W, BOX] stage buffer that starts at image row ``dy`` (rows are
        whole swizzle atoms, so the view is a valid wgmma operand; Gluon's ``slice`` only takes views at a
        multiple of their own length, hence the two reinterpretations)."""
        by_row = buf._reinterpret(buf.dtype, buf.shape, layout)  # the rank-2 layout, so that index() keeps it
        return by_row.index(dy)._reinterpret(buf.dtype, [ROWS, buf.shape[2]], layout)

    @gluon.jit
    def _gconv_producer(tap_bufs, gw_bufs, g_bufs, tap_ready, tap_empty, gw_ready, g_ready, g_empty, b_g_ptr,
                        n_patches, C: gl.constexpr, HALO: gl.constexpr, SKIP: gl.constexpr):
        """One warp group: the grouped conv of both patches of each tile pair into a ring of G_STAGES
        shared-memory stages that the chain consumers read. A stage holds, per patch, TILE_H + 2 rows of 32
        channels shifted by one kernel column; the tap of kernel row dy is the view that starts dy image rows
        (dy * TILE_W pixels, whole swizzle atoms) further on. Per tap four products (two patches x two 16-channel
        slices); a stage's twelve are in flight while the next stage's are issued."""
        ROWS: gl.constexpr = g_bufs.type.shape[1]
        NP: gl.constexpr = C // 16
        BOX: gl.constexpr = tap_bufs.type.shape[-1]
        TAP_STAGES: gl.constexpr = tap_bufs.type.shape[0] // 2
        G_STAGES: gl.constexpr = g_bufs.type.shape[0] // (2 * NP)
        g_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, 16, 16])
        box_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([ROWS, BOX], tap_bufs.dtype)
        cols = gl.arange(0, 16, layout=gl.SliceLayout(0, g_layout))
        # without HALO: each stage buffer as [ROWS, BOX] (the parent reinterpreted, then indexed)
        flat = tap_bufs._reinterpret(tap_bufs.dtype, [tap_bufs.type.shape[0], ROWS, BOX], box_layout)
        n_pairs = gl.cdiv(n_patches, 2)
        mbarrier.wait(gw_ready, 0)
        k = 0
        count = 0
        for t in range(gl.program_id(0), n_pairs, gl.num_programs(0)):
            gs = count % G_STAGES
            mbarrier.wait(g_empty.index(gs), ((count // G_STAGES) & 1) ^ 1)  # fresh barriers pass
            for q in range(C // BOX):
                a00 = gl.zeros([ROWS, 16], gl.float32, g_layout)  # patch 0, slice 2q
                a01 = gl.zeros([ROWS, 16], gl.float32, g_layout)  # patch 0, slice 2q + 1
                a10 = gl.zeros([ROWS, 16], gl.float32, g_layout)
                a11 = gl.zeros([ROWS, 16], gl.float32, g_layout)
                for i in gl.static_range(3 if HALO else 9):  # kernel column dx (HALO) or tap
                    s = k % TAP_STAGES
                    mbarrier.wait(tap_ready.index(s), (k // TAP_STAGES) & 1)
                    for dy in gl.static_range(3 if HALO else 1):
                        if HALO:  # the kernel row's view: dy image rows into the staged rows
                            tap = dy * 3 + i
                            v0 = _rows_from(tap_bufs.index(2 * s), dy, ROWS, box_layout)
                            v1 = _rows_from(tap_bufs.index(2 * s + 1), dy, ROWS, box_layout)
                        else:
                            tap = i
                            v0 = flat.index(2 * s)
                            v1 = flat.index(2 * s + 1)
                        w0 = gw_bufs.index(tap * NP + 2 * q)
                        w1 = gw_bufs.index(tap * NP + 2 * q + 1)
                        if SKIP % 2 == 0:
                            a00 = warpgroup_mma(v0.slice(0, 16, dim=1), w0, a00, is_async=True)
                            a01 = warpgroup_mma(v0.slice(16, 16, dim=1), w1, a01, is_async=True)
                            a10 = warpgroup_mma(v1.slice(0, 16, dim=1), w0, a10, is_async=True)
                            a11 = warpgroup_mma(v1.slice(16, 16, dim=1), w1, a11, is_async=True)
                    if SKIP % 2 == 0:  # this stage's products stay in flight, the stage before's are done
                        a00, a01, a10, a11 = warpgroup_mma_wait(12 if HALO else 4, deps=[a00, a01, a10, a11])
                    if i > 0:  # the stage before this one goes back to the loader
                        mbarrier.arrive(tap_empty.index((k - 1) % TAP_STAGES), count=1)
                    k += 1
                a00, a01, a10, a11 = warpgroup_mma_wait(0, deps=[a00, a01, a10, a11])
                mbarrier.arrive(tap_empty.index((k - 1) % TAP_STAGES), count=1)
                b0 = gl.expand_dims(gl.load(b_g_ptr + q * BOX + cols).to(gl.float32), 0)
                b1 = gl.expand_dims(gl.load(b_g_ptr + q * BOX + 16 + cols).to(gl.float32), 0)
                g_bufs.index((gs * 2 + 0) * NP + 2 * q).store((a00 + b0).to(g_bufs.dtype))
                g_bufs.index((gs * 2 + 0) * NP + 2 * q + 1).store((a01 + b1).to(g_bufs.dtype))
                g_bufs.index((gs * 2 + 1) * NP + 2 * q).store((a10 + b0).to(g_bufs.dtype))
                g_bufs.index((gs * 2 + 1) * NP + 2 * q + 1).store((a11 + b1).to(g_bufs.dtype))
            fence_async_shared()  # the stores above are read by the consumers' wgmma (the async proxy)
            _group_barrier()  # every warp of the group has stored its rows before the stage is handed over
            mbarrier.arrive(g_ready.index(gs), count=1)
            count += 1

    @gluon.jit
    def _store_columns(o, col0, q, b_p_ptr, x_ptr, out_ptr, dims, C: gl.constexpr, TILE_H: gl.constexpr,
                       TILE_W: gl.constexpr, SKIP: gl.constexpr):
        """The epilogue of one accumulator holding output columns ``col0 ...``: + b_p + x, stored through pointers
        (rows outside the image or past the last patch and columns past C masked)."""
        n_patches, PPI, PW, H, W = dims
        ROWS: gl.constexpr = TILE_H * TILE_W
        WIDTH: gl.constexpr = o.type.shape[1]
        n, h0, w0 = _patch_origin(q, PPI, PW, TILE_H, TILE_W)
        cols = col0 + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, o.type.layout))
        r = gl.arange(0, ROWS, layout=gl.SliceLayout(1, o.type.layout))
        hh = h0 + r // TILE_W
        ww = w0 + r % TILE_W
        row_ok = (hh < H) & (ww < W) & (q < n_patches)
        pix = (n * H + hh) * W + ww
        col_ok = cols < C
        b_p = gl.expand_dims(gl.load(b_p_ptr + cols, mask=col_ok, other=0.0).to(gl.float32), 0)
        offs = gl.expand_dims(pix.to(gl.int64) * C, 1) + gl.expand_dims(cols, 0)
        mask = gl.expand_dims(row_ok, 1) & gl.expand_dims(col_ok, 0)
        res = gl.load(x_ptr + offs, mask=mask, other=0.0).to(gl.float32)
        if SKIP >= 4:
            res = gl.zeros_like(res)
        gl.store(out_ptr + offs, (o + b_p + res).to(out_ptr.dtype.element_ty), mask=mask)

    @gluon.jit
    def _chain_consumer(bufs, bars, ptrs, dims, C: gl.constexpr, CA: gl.constexpr, CB: gl.constexpr,
                        HIDDEN: gl.constexpr, WHICH: gl.constexpr, TILE_H: gl.constexpr, TILE_W: gl.constexpr,
                        PINGPONG: gl.constexpr, SKIP: gl.constexpr):
        """One warp group: both 1x1 products of patch ``2 t + WHICH`` of each tile pair (its grouped-conv output
        read from the ring), as in the pair kernel, and the epilogue. The output columns are held as one [64, CA]
        accumulator, or as [64, CA] and [64, CB] where C is not a power of two (C = 96 as 64 + 32, 192 as
        128 + 64). With PINGPONG the two consumers take turns issuing their first products (one's SiLU runs beside
        the other's products)."""
        g_bufs, we_bufs, wp_bufs = bufs
        g_ready, g_empty, w_ready, w_empty, order = bars
        b_e_ptr, b_p_ptr, x_ptr, out_ptr = ptrs
        n_patches = dims[0]
        ROWS: gl.constexpr = TILE_H * TILE_W
        NP: gl.constexpr = C // 16
        G_STAGES: gl.constexpr = g_bufs.type.shape[0] // (2 * NP)
        BH: gl.constexpr = wp_bufs.type.shape[1]
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BH, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, CA, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        n_pairs = gl.cdiv(n_patches, 2)
        chunk = 0
        count = 0
        for t in range(gl.program_id(0), n_pairs, gl.num_programs(0)):
            gs = count % G_STAGES
            mbarrier.wait(g_ready.index(gs), (count // G_STAGES) & 1)
            o = gl.zeros([ROWS, CA], gl.float32, o_layout)
            if CB > 0:
                o2 = gl.zeros([ROWS, CB], gl.float32,
                              gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, CB, 16]))
            else:
                o2 = o
            o, o2, chunk = hidden_chain(g_bufs, (gs * 2 + WHICH) * NP, NP, we_bufs, wp_bufs, w_ready, w_empty, order,
                                        g_empty.index(gs), b_e_ptr, o, o2, chunk, HIDDEN, WHICH, PINGPONG,
                                        SKIP % 4 < 2, s_layout, p_layout, CB)
            q = 2 * t + WHICH
            _store_columns(o, 0, q, b_p_ptr, x_ptr, out_ptr, dims, C, TILE_H, TILE_W, SKIP)
            if CB > 0:
                _store_columns(o2, CA, q, b_p_ptr, x_ptr, out_ptr, dims, C, TILE_H, TILE_W, SKIP)
            count += 1

    @gluon.jit
    def convfirst_ws_kernel(xm_desc, xt_desc, gw_desc, we_desc, wp_desc, b_g_ptr, b_e_ptr, b_p_ptr, x_ptr, out_ptr,
                            n_patches, PPI, PW, H, W, C: gl.constexpr, CA: gl.constexpr, CB: gl.constexpr,
                            HIDDEN: gl.constexpr, STAGES: gl.constexpr,
                            TAP_STAGES: gl.constexpr, G_STAGES: gl.constexpr, CHAIN_REGS: gl.constexpr,
                            GCONV_REGS: gl.constexpr, PINGPONG: gl.constexpr, HALO: gl.constexpr,
                            SKIP: gl.constexpr = 0):
        """Persistent fused ConvFirst block over pairs of patches; launch with num_warps=4 (chain consumer 0),
        then chain consumer 1, the grouped-conv warp group and two loader warps.

        ``SKIP`` is for profiling only (its outputs are wrong): bit 1 leaves out the grouped conv's products, bit 2
        the chain's products, bit 4 the residual's loads; the copies and barriers stay, so the times show which
        part binds."""
        TILE_H: gl.constexpr = xm_desc.block_type.shape[1]
        TILE_W: gl.constexpr = xm_desc.block_type.shape[2]
        BOX: gl.constexpr = xm_desc.block_type.shape[3]
        NP: gl.constexpr = C // 16
        ROWS: gl.constexpr = TILE_H * TILE_W
        CPAD: gl.constexpr = wp_desc.block_type.shape[1]
        if HALO:  # per patch and stage: TILE_H + 2 rows (allocated as 2 TILE_H) of TILE_W pixels x BOX channels
            tap_bufs = gl.allocate_shared_memory(xm_desc.dtype, [2 * TAP_STAGES, 2 * TILE_H, TILE_W, BOX],
                                                 gl.NVMMASharedLayout.get_default_for([2 * TILE_H, TILE_W, BOX],
                                                                                      xm_desc.dtype))
        else:  # per patch and stage: one tap's box
            tap_bufs = gl.allocate_shared_memory(xm_desc.dtype, [2 * TAP_STAGES] + xm_desc.block_type.shape,
                                                 xm_desc.layout)
        gw_bufs = gl.allocate_shared_memory(gw_desc.dtype, [9 * NP] + gw_desc.block_type.shape, gw_desc.layout)
        gw_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        g_bufs = gl.allocate_shared_memory(xm_desc.dtype, [G_STAGES * 2 * NP, ROWS, 16], gw_desc.layout)
        we_bufs = gl.allocate_shared_memory(we_desc.dtype, [STAGES * NP] + we_desc.block_type.shape,
                                            we_desc.layout)
        wp_bufs = gl.allocate_shared_memory(wp_desc.dtype, [STAGES] + wp_desc.block_type.shape, wp_desc.layout)
        tap_ready = gl.allocate_shared_memory(gl.int64, [TAP_STAGES, 1], mbarrier.MBarrierLayout())
        tap_empty = gl.allocate_shared_memory(gl.int64, [TAP_STAGES, 1], mbarrier.MBarrierLayout())
        g_ready = gl.allocate_shared_memory(gl.int64, [G_STAGES, 1], mbarrier.MBarrierLayout())
        g_empty = gl.allocate_shared_memory(gl.int64, [G_STAGES, 1], mbarrier.MBarrierLayout())
        w_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        w_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        order = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        mbarrier.init(gw_ready, count=1)
        for i in gl.static_range(2):
            mbarrier.init(order.index(i), count=1)
        for i in gl.static_range(TAP_STAGES):
            mbarrier.init(tap_ready.index(i), count=1)
            mbarrier.init(tap_empty.index(i), count=1)
        for i in gl.static_range(G_STAGES):
            mbarrier.init(g_ready.index(i), count=1)
            mbarrier.init(g_empty.index(i), count=2)  # both chain consumers read every stage
        for i in gl.static_range(STAGES):
            mbarrier.init(w_ready.index(i), count=1)
            mbarrier.init(w_empty.index(i), count=2)
        fence_async_shared()
        bufs = (g_bufs, we_bufs, wp_bufs)
        bars = (g_ready, g_empty, w_ready, w_empty, order)
        ptrs = (b_e_ptr, b_p_ptr, x_ptr, out_ptr)
        dims = (n_patches, PPI, PW, H, W)
        gl.warp_specialize([(_chain_consumer, (bufs, bars, ptrs, dims, C, CA, CB, HIDDEN, 0, TILE_H, TILE_W, PINGPONG,
                                               SKIP)),
                            (_chain_consumer, (bufs, bars, ptrs, dims, C, CA, CB, HIDDEN, 1, TILE_H, TILE_W, PINGPONG,
                                               SKIP)),
                            (_gconv_producer, (tap_bufs, gw_bufs, g_bufs, tap_ready, tap_empty, gw_ready, g_ready,
                                               g_empty, b_g_ptr, n_patches, C, HALO, SKIP)),
                            (_tap_loader, (xm_desc, xt_desc, gw_desc, tap_bufs, gw_bufs, tap_ready, tap_empty,
                                           gw_ready, n_patches, PPI, PW, C, HALO)),
                            (_weight_loader, (we_desc, wp_desc, we_bufs, wp_bufs, w_ready, w_empty, n_patches, C,
                                              HIDDEN))],
                           [4, 4, 1, 1], [CHAIN_REGS, GCONV_REGS, 24, 24])


def ws_block_supported(channels: int, hidden: int) -> str | None:
    """None when the kernel takes this block, else why not."""
    if channels % BOX or channels < BOX or sum(split_channels(channels)) > MAX_WIDTH:
        return (f"C={channels}: the warp-specialised block kernel takes C a multiple of {BOX} from {BOX} to "
                f"{MAX_WIDTH} (its chain consumers' fp32 accumulators, the C columns held as at most two "
                f"power-of-two parts, must fit under the launch's {LAUNCH_REGS}-register cap)")
    if hidden % 64:
        return f"hidden width {hidden} is not a multiple of 64"
    return None


def ws_block_usable(x, w_taps, we_t, wp_t, out) -> str | None:
    """None when the kernel can run on these tensors here, else why not: Gluon and a Hopper GPU, a supported
    width, TMA's 16-byte alignment."""
    from .gemm_ws import ws_available

    if not ws_available(x.device):
        return "it needs Gluon and a Hopper (sm_90) GPU"
    why = ws_block_supported(x.shape[1], we_t.shape[1])
    if why:
        return why
    if not all(t.data_ptr() % 16 == 0 for t in (x, w_taps, we_t, wp_t, out)):
        return "TMA needs 16-byte aligned tensors"
    return None


def ws_smem_bytes(channels: int, config: dict, itemsize: int = 2) -> int:
    """Shared memory of one program (barriers not counted)."""
    rows = config["TILE_H"] * config["TILE_W"]
    cpad, bh = next_pow2(channels), config["BH"]
    stage_rows = 2 * rows if config.get("HALO", HALO_VIEWS) else rows  # HALO: TILE_H + 2 rows, allocated as 2 TILE_H
    taps = config["TAP_STAGES"] * 2 * stage_rows * BOX + 9 * channels * SLICE
    g = config.get("G_STAGES", G_STAGES) * 2 * rows * channels
    return (taps + g + config["STAGES"] * (channels * bh + bh * cpad)) * itemsize


def ws_configs(channels: int, halo: bool | None = None) -> list[dict]:
    """The candidate configs that fit in shared memory at this width, in the form ``halo`` (default: HALO_VIEWS,
    what this Triton compiles)."""
    halo = HALO_VIEWS if halo is None else halo
    wide = sum(split_channels(channels)) > 128
    out = [{"TILE_H": th, "TILE_W": tw, "BH": bh, "STAGES": st, "TAP_STAGES": ts if halo else 2 * ts,
            "G_STAGES": 1 if wide else G_STAGES, "PINGPONG": True, "HALO": halo}
           for th, tw, bh, st, ts in (WIDE_CONFIGS if wide else WS_CONFIGS)]
    return [cf for cf in out if ws_smem_bytes(channels, cf) <= SMEM_LIMIT]


_SMS: dict = {}


def launch_ws_block(x, w_taps, b_g, we_t, b_e, wp_t, b_p, out, config: dict):
    """One launch into ``out``: ``x`` and ``out`` [N, C, H, W] channels_last, weights as packed by
    :func:`convfirst.kernels.pack_block_params` (``w_taps`` [9, C, 16], ``we_t`` [C, HIDDEN], ``wp_t`` [HIDDEN, C]).
    Inputs are checked by the caller."""
    n, c, h, w = x.shape
    hidden = we_t.shape[1]
    th, tw, bh = config["TILE_H"], config["TILE_W"], config["BH"]
    cpad = next_pow2(c)
    ca, cb = split_channels(c)
    x_nhwc = x.permute(0, 2, 3, 1)
    xm_desc = GluonDescriptor.from_tensor(x_nhwc, [1, th, tw, BOX], _cached_layout((1, th, tw, BOX), x.dtype))
    xt_desc = GluonDescriptor.from_tensor(x_nhwc, [1, 2, tw, BOX], _cached_layout((1, 2, tw, BOX), x.dtype))
    gw_desc = GluonDescriptor.from_tensor(w_taps.reshape(9 * c, SLICE), [SLICE, SLICE],
                                          _cached_layout((SLICE, SLICE), x.dtype))
    we_desc = GluonDescriptor.from_tensor(we_t, [SLICE, bh], _cached_layout((SLICE, bh), x.dtype))
    wp_desc = GluonDescriptor.from_tensor(wp_t, [bh, cpad], _cached_layout((bh, cpad), x.dtype))
    if x.device not in _SMS:
        _SMS[x.device] = torch.cuda.get_device_properties(x.device).multi_processor_count
    pw = triton.cdiv(w, tw)
    ppi = triton.cdiv(h, th) * pw
    n_patches = n * ppi
    grid = (max(1, min(_SMS[x.device], triton.cdiv(n_patches, 2))),)
    return convfirst_ws_kernel[grid](xm_desc, xt_desc, gw_desc, we_desc, wp_desc, b_g, b_e, b_p, x, out, n_patches, ppi, pw,
                                     h, w, C=c, CA=ca, CB=cb, HIDDEN=hidden,
                                     STAGES=config["STAGES"], TAP_STAGES=config["TAP_STAGES"],
                                     G_STAGES=config.get("G_STAGES", G_STAGES), CHAIN_REGS=CHAIN_REGS,
                                     GCONV_REGS=GCONV_REGS, PINGPONG=bool(config.get("PINGPONG")),
                                     HALO=bool(config.get("HALO", HALO_VIEWS)),
                                     SKIP=config.get("SKIP", 0), num_warps=4,
                                     maxnreg=LAUNCH_REGS)


def ws_block_signature(dtype: str = "bf16", channels: int = 96, config: dict | None = None) -> dict:
    """The kernel's argument types for an sm_90 compile without a GPU."""
    config = config or ws_configs(channels)[0]
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
    from triton.runtime.jit import mangle_type

    def desc(shape):
        t = torch.empty([8] * (len(shape) - 1) + [256], dtype=torch_dtype)
        return mangle_type(GluonDescriptor.from_tensor(t, shape, _cached_layout(tuple(shape), torch_dtype)))

    ptr = "*bf16" if dtype == "bf16" else "*fp16"
    th, tw, bh = config["TILE_H"], config["TILE_W"], config["BH"]
    return {"xm_desc": desc([1, th, tw, BOX]), "xt_desc": desc([1, 2, tw, BOX]), "gw_desc": desc([SLICE, SLICE]), "we_desc": desc([SLICE, bh]),
            "wp_desc": desc([bh, next_pow2(channels)]), "b_g_ptr": "*fp32", "b_e_ptr": "*fp32", "b_p_ptr": "*fp32",
            "x_ptr": ptr, "out_ptr": ptr, "n_patches": "i32", "PPI": "i32", "PW": "i32", "H": "i32", "W": "i32",
            "C": "constexpr", "CA": "constexpr", "CB": "constexpr", "HIDDEN": "constexpr", "STAGES": "constexpr", "TAP_STAGES": "constexpr",
            "G_STAGES": "constexpr", "CHAIN_REGS": "constexpr", "GCONV_REGS": "constexpr", "PINGPONG": "constexpr",
            "HALO": "constexpr", "SKIP": "constexpr"}
