"""The epilogue-fused matrix product as a warp-specialised Hopper kernel (Gluon): ``act(A @ W + bias) [+ residual]``.

Why a second form of :mod:`gemm`: the 1x1 layers of the 14x14 and 7x7 stages have few K steps (K = 256-768 for
the expanding layers), so each tile's prologue and epilogue (bias, SiLU, residual, store) are a large share of
its time, and in the single-stream Triton kernel (:func:`gemm.gemm_tma_kernel`) the tensor cores idle while a
tile's epilogue runs. Here every program holds two *consumer* warp groups that take alternate tiles, and one
*loader* warp per consumer that only issues the TMA copies of its consumer's A and W steps into a ring of
shared-memory stages. While one consumer runs its epilogue the other consumer's products keep the tensor cores
busy (the "ping-pong" schedule of Hopper GEMM libraries), and the loads never wait behind arithmetic.

Layout of one program (grid = one program per SM, tiles walked persistently)::

    default partition (4 warps)   consumer 0: tiles 2p, 2p + 2P, ...   wgmma [BLOCK_M, BLOCK_N] in registers
    worker 0          (4 warps)   consumer 1: tiles 2p + 1, ...
    worker 1, 2       (1 warp)    loaders 0, 1: TMA copies of A [BLOCK_M, BLOCK_K] and W [BLOCK_K, BLOCK_N]

Each consumer/loader pair shares a ring of STAGES buffers with a ``ready`` and an ``empty`` mbarrier per stage.
The epilogue adds the bias, applies SiLU, adds the residual (copied by TMA into the consumer's staging tile
while the products run) and stores through the same staging tile with a TMA store.

Measured (H100, batch 256, ``NOTES_gemm.md`` v5): 2-7% faster than the TMA kernel on the expanding layers, 3-20%
slower on the projecting ones. The second kernel here, :func:`gemm_ws_ordered_kernel` (v7, configs with
``ORDERED``), gives both consumers one four-stage ring filled by one loader warp and lets their main loops take
turns: 5-24% faster than the TMA kernel on the expanding layers, 0-4% on the projecting ones. The models run it
through the GEMM form ``auto`` inside CUDA graphs (:mod:`gemm`); ``launch_matmul(..., form="gluon-ws")`` runs
either kernel with a given tile.

Gluon (Triton's explicit-layout dialect) runs only on a GPU: the interpreter does not execute it. On the CPU
the tests compile it for sm_90 (:mod:`compile_report`) and check its instructions; on the GPU they check its
values against fp64 at real sizes.
"""
from __future__ import annotations

import functools

import torch
import triton

try:  # Gluon ships with Triton >= 3.5; without it this form is simply not offered
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                   warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
    HAVE_GLUON = True
except ImportError:  # pragma: no cover - depends on the installed Triton
    HAVE_GLUON = False


#: Candidate tiles: (BLOCK_M, BLOCK_N, BLOCK_K, STAGES per consumer). Two consumers each hold a
#: [BLOCK_M, BLOCK_N] fp32 accumulator (128 registers per thread at 128 x 128) and STAGES operand buffers plus a
#: staging tile: 2 x (2 x 32 + 32) = 192 KB of the 227 KB of shared memory at 128 x 128 x 64. Shared-memory
#: allocations must have power-of-two shapes in Gluon, so 3 stages are not offered.
WS_CONFIGS = ((128, 128, 64, 2), (128, 128, 32, 4), (128, 64, 64, 2), (64, 128, 64, 2))
#: Tiles of the ordered form (:func:`gemm_ws_ordered_kernel`): one ring of STAGES steps shared by both consumers
#: (4 x 32 + 2 x 32 = 192 KB at 128 x 128 x 64).
ORDERED_CONFIGS = ((128, 128, 64, 4), (128, 128, 32, 8), (128, 64, 64, 4), (64, 128, 64, 4))


if HAVE_GLUON:
    @gluon.jit
    def _silu(x):
        """SiLU on the hardware tanh (one MUFU op per element, as in :mod:`activation`): h + h * tanh(h), h = x / 2."""
        h = 0.5 * x
        t = gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [h], dtype=gl.float32, is_pure=True,
                                      pack=1)
        return h + h * t

    @gluon.jit
    def _tile_origin(tile, M, N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr):
        """Top-left element of linear tile ``tile``, row tiles in groups of GROUP_M (neighbours share A in L2)."""
        tiles_m = gl.cdiv(M, BLOCK_M)
        per_group = GROUP_M * gl.cdiv(N, BLOCK_N)
        first_m = (tile // per_group) * GROUP_M
        group_rows = gl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (tile % per_group) % group_rows
        pid_n = (tile % per_group) // group_rows
        return pid_m * BLOCK_M, pid_n * BLOCK_N

    @gluon.jit
    def _fill_ring(a_desc, w_desc, a_bufs, w_bufs, ready, empty, M, N, K, GROUP_M: gl.constexpr, first, stride):
        """One warp: the TMA copies of the A and W steps of tiles first, first + stride, ... into a ring of
        STAGES buffers, STAGES steps ahead of the products that consume them."""
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = w_desc.block_type.shape[1]
        STAGES: gl.constexpr = a_bufs.type.shape[0]
        nbytes: gl.constexpr = a_desc.block_type.nbytes + w_desc.block_type.nbytes
        step = 0
        for tile in range(first, gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N), stride):
            off_m, off_n = _tile_origin(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            for k in range(0, K, a_desc.block_type.shape[1]):
                s = step % STAGES
                # a fresh mbarrier counts as having completed the phase before phase 0: the first pass is free
                mbarrier.wait(empty.index(s), ((step // STAGES) & 1) ^ 1)
                bar = ready.index(s)
                mbarrier.expect(bar, nbytes)
                tma.async_copy_global_to_shared(a_desc, [off_m, k], bar, a_bufs.index(s))
                tma.async_copy_global_to_shared(w_desc, [k, off_n], bar, w_bufs.index(s))
                step += 1

    @gluon.jit
    def _loader(a_desc, w_desc, a_bufs, w_bufs, ready, empty, M, N, K, GROUP_M: gl.constexpr,
                WHICH: gl.constexpr):
        """One warp: the copies of consumer WHICH's tiles into its own ring."""
        _fill_ring(a_desc, w_desc, a_bufs, w_bufs, ready, empty, M, N, K, GROUP_M,
                   2 * gl.program_id(0) + WHICH, 2 * gl.num_programs(0))

    @gluon.jit
    def _tile_products(a_bufs, w_bufs, ready, empty, step, K, acc_layout: gl.constexpr):
        """The wgmma products of one tile's K steps, read from ring steps ``step``, ``step + 1``, ...; each stage
        goes back to the loader (``empty``) as soon as its product is done. Returns the fp32 accumulator and the
        next step."""
        BLOCK_M: gl.constexpr = a_bufs.type.shape[1]
        BLOCK_K: gl.constexpr = a_bufs.type.shape[2]
        BLOCK_N: gl.constexpr = w_bufs.type.shape[2]
        STAGES: gl.constexpr = a_bufs.type.shape[0]
        acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, acc_layout)
        prev = 0
        for k in range(0, K, BLOCK_K):
            s = step % STAGES
            mbarrier.wait(ready.index(s), (step // STAGES) & 1)
            a_s = a_bufs.index(s)
            w_s = w_bufs.index(s)
            acc = warpgroup_mma(a_s, w_s, acc, is_async=True)
            # keep one product in flight; the one before it is done, so its stage goes back to the loader
            acc = warpgroup_mma_wait(1, deps=[acc, a_s, w_s])[0]
            mbarrier.arrive(empty.index(prev), count=1, pred=k > 0)
            prev = s
            step += 1
        acc = warpgroup_mma_wait(0, deps=[acc])
        mbarrier.arrive(empty.index(prev), count=1)
        return acc, step

    @gluon.jit
    def _tile_epilogue(acc, off_m, off_n, N, bias_ptr, c_buf, res_bar, out_desc, count, ACT_SILU: gl.constexpr,
                       HAS_RES: gl.constexpr, acc_layout: gl.constexpr):
        """+ bias, [SiLU], [+ the residual tile copied into ``c_buf``], then the tile through ``c_buf`` by TMA."""
        BLOCK_N: gl.constexpr = out_desc.block_type.shape[1]
        cols = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, acc_layout))
        bias = gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)
        acc = acc + gl.expand_dims(bias, 0)
        if ACT_SILU:
            acc = _silu(acc)
        if HAS_RES:
            mbarrier.wait(res_bar, count & 1)
            acc = acc + c_buf.load(acc_layout).to(gl.float32)
        c_buf.store(acc.to(out_desc.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(out_desc, [off_m, off_n], c_buf)

    @gluon.jit
    def _consumer(descs, ring, sizes, flags, WHICH: gl.constexpr):
        """One warp group: the products of its tiles on the tensor cores, then the fused epilogue and the store."""
        a_desc, w_desc, res_desc, out_desc, bias_ptr = descs
        a_bufs, w_bufs, c_buf, ready, empty, res_bar = ring
        M, N, K = sizes
        ACT_SILU, HAS_RES, GROUP_M = flags
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = w_desc.block_type.shape[1]
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                             instr_shape=[16, BLOCK_N, 16])
        num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
        step = 0
        count = 0
        for tile in range(2 * gl.program_id(0) + WHICH, num_tiles, 2 * gl.num_programs(0)):
            off_m, off_n = _tile_origin(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            tma.store_wait(0)  # the staging tile's previous store has left before it is refilled
            if HAS_RES:
                mbarrier.expect(res_bar, res_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(res_desc, [off_m, off_n], res_bar, c_buf)
            acc, step = _tile_products(a_bufs, w_bufs, ready, empty, step, K, acc_layout)
            _tile_epilogue(acc, off_m, off_n, N, bias_ptr, c_buf, res_bar, out_desc, count, ACT_SILU, HAS_RES,
                           acc_layout)
            count += 1
        tma.store_wait(0)

    @gluon.jit
    def _ring(a_desc, w_desc, out_desc, STAGES: gl.constexpr):
        """One consumer's shared memory: STAGES A and W buffers, its staging tile, and their mbarriers."""
        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
        w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
        c_buf = gl.allocate_shared_memory(out_desc.dtype, out_desc.block_type.shape, out_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        res_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1)
        mbarrier.init(res_bar, count=1)
        return a_bufs, w_bufs, c_buf, ready, empty, res_bar

    @gluon.jit
    def gemm_ws_kernel(a_desc, w_desc, res_desc, out_desc, bias_ptr, M, N, K, ACT_SILU: gl.constexpr,
                       HAS_RES: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
                       CONSUMER_REGS: gl.constexpr):
        """Persistent, warp-specialised ``act(A @ W + bias) [+ residual]``; launch with num_warps=4."""
        ring0 = _ring(a_desc, w_desc, out_desc, STAGES)  # each consumer's own ring, staging tile and barriers
        ring1 = _ring(a_desc, w_desc, out_desc, STAGES)
        fence_async_shared()
        descs = (a_desc, w_desc, res_desc, out_desc, bias_ptr)
        sizes = (M, N, K)
        flags = (ACT_SILU, HAS_RES, GROUP_M)
        gl.warp_specialize([(_consumer, (descs, ring0, sizes, flags, 0)), (_consumer, (descs, ring1, sizes, flags, 1)),
                            (_loader, (a_desc, w_desc, ring0[0], ring0[1], ring0[3], ring0[4], M, N, K, GROUP_M, 0)),
                            (_loader, (a_desc, w_desc, ring1[0], ring1[1], ring1[3], ring1[4], M, N, K, GROUP_M, 1))],
                           [4, 1, 1], [CONSUMER_REGS, 24, 24])

    @gluon.jit
    def _ordered_loader(a_desc, w_desc, a_bufs, w_bufs, ready, empty, M, N, K, GROUP_M: gl.constexpr):
        """One warp: the copies of every tile of this program, in the order the consumers take them, into the one
        ring both consumers read."""
        _fill_ring(a_desc, w_desc, a_bufs, w_bufs, ready, empty, M, N, K, GROUP_M, gl.program_id(0),
                   gl.num_programs(0))

    @gluon.jit
    def _ordered_consumer(descs, ring, order, sizes, flags, WHICH: gl.constexpr):
        """One warp group: every other tile of the program. Its main loop starts only when the other consumer's
        main loop has finished (``order``), so the two take the ring's steps in turn and one consumer's epilogue
        runs while the other's products keep the tensor cores busy."""
        a_desc, w_desc, res_desc, out_desc, bias_ptr = descs
        a_bufs, w_bufs, c_buf, ready, empty, res_bar = ring
        M, N, K = sizes
        ACT_SILU, HAS_RES, GROUP_M = flags
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = w_desc.block_type.shape[1]
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                             instr_shape=[16, BLOCK_N, 16])
        num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
        k_steps = gl.cdiv(K, BLOCK_K)
        count = 0
        for tile in range(gl.program_id(0) + WHICH * gl.num_programs(0), num_tiles, 2 * gl.num_programs(0)):
            off_m, off_n = _tile_origin(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            tma.store_wait(0)  # the staging tile's previous store has left before it is refilled
            if HAS_RES:
                mbarrier.expect(res_bar, res_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(res_desc, [off_m, off_n], res_bar, c_buf)
            # consumer 0's first wait passes on the fresh barrier; after that each waits for the other's arrival
            mbarrier.wait(order.index(WHICH), (count & 1) ^ (1 - WHICH))
            acc, step = _tile_products(a_bufs, w_bufs, ready, empty, (2 * count + WHICH) * k_steps, K, acc_layout)
            mbarrier.arrive(order.index(1 - WHICH), count=1)  # the other consumer's main loop may start
            _tile_epilogue(acc, off_m, off_n, N, bias_ptr, c_buf, res_bar, out_desc, count, ACT_SILU, HAS_RES,
                           acc_layout)
            count += 1
        tma.store_wait(0)

    @gluon.jit
    def gemm_ws_ordered_kernel(a_desc, w_desc, res_desc, out_desc, bias_ptr, M, N, K, ACT_SILU: gl.constexpr,
                               HAS_RES: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
                               CONSUMER_REGS: gl.constexpr):
        """The ordered ping-pong: one loader warp fills one ring of STAGES steps for both consumers, whose main
        loops take turns; launch with num_warps=4."""
        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
        w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1)
        c0 = gl.allocate_shared_memory(out_desc.dtype, out_desc.block_type.shape, out_desc.layout)
        c1 = gl.allocate_shared_memory(out_desc.dtype, out_desc.block_type.shape, out_desc.layout)
        res_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        order = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(2):
            mbarrier.init(res_bars.index(i), count=1)
            mbarrier.init(order.index(i), count=1)
        fence_async_shared()
        descs = (a_desc, w_desc, res_desc, out_desc, bias_ptr)
        sizes = (M, N, K)
        flags = (ACT_SILU, HAS_RES, GROUP_M)
        ring0 = (a_bufs, w_bufs, c0, ready, empty, res_bars.index(0))
        ring1 = (a_bufs, w_bufs, c1, ready, empty, res_bars.index(1))
        gl.warp_specialize([(_ordered_consumer, (descs, ring0, order, sizes, flags, 0)),
                            (_ordered_consumer, (descs, ring1, order, sizes, flags, 1)),
                            (_ordered_loader, (a_desc, w_desc, a_bufs, w_bufs, ready, empty, M, N, K, GROUP_M))],
                           [4, 1], [CONSUMER_REGS, 24])


def ws_available(device: torch.device) -> bool:
    """Whether this form can run here: Gluon present and a Hopper (sm_90) GPU."""
    return HAVE_GLUON and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


def ws_smem_bytes(config: dict, itemsize: int = 2) -> int:
    """Shared memory of one program (barriers not counted): two consumers' operand rings and staging tiles, or
    with ``ORDERED`` one shared ring and two staging tiles."""
    bm, bn, bk, st = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"], config["STAGES"]
    rings = 1 if config.get("ORDERED") else 2
    return (rings * st * (bm * bk + bk * bn) + 2 * bm * bn) * itemsize


def ws_configs(ordered: bool | None = None) -> list[dict]:
    """Every candidate tile as a launch dict (consumers get 232 registers, the loader warps 24): the ping-pong
    with a ring per consumer, the ordered one (``ORDERED``), or both (``ordered=None``)."""
    out = []
    if ordered in (None, False):
        out += [{"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "STAGES": st, "GROUP_M": 8}
                for bm, bn, bk, st in WS_CONFIGS]
    if ordered in (None, True):
        out += [{"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "STAGES": st, "GROUP_M": 8, "ORDERED": True}
                for bm, bn, bk, st in ORDERED_CONFIGS]
    return [cf for cf in out if ws_smem_bytes(cf) <= 220 * 1024]


_SMS: dict = {}


def _layout(block_shape, dtype):
    return _cached_layout(tuple(block_shape), dtype)


@functools.cache
def _cached_layout(block_shape: tuple, dtype):
    """The shared-memory layout of a TMA block: built once per shape (building one costs ~15 us of host time,
    three or four per launch)."""
    return gl.NVMMASharedLayout.get_default_for(list(block_shape), gl.bfloat16 if dtype == torch.bfloat16
                                                else gl.float16)


def launch_ws(a, w_t, bias, residual, out, act: str, config: dict):
    """One launch of :func:`gemm_ws_kernel` with the fixed tile ``config`` (see :func:`ws_configs`)."""
    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    m, k = a.shape
    n = w_t.shape[1]
    a_desc = GluonDescriptor.from_tensor(a, [bm, bk], _layout([bm, bk], a.dtype))
    w_desc = GluonDescriptor.from_tensor(w_t, [bk, bn], _layout([bk, bn], a.dtype))
    out_desc = GluonDescriptor.from_tensor(out, [bm, bn], _layout([bm, bn], a.dtype))
    res_desc = GluonDescriptor.from_tensor(residual, [bm, bn], _layout([bm, bn], a.dtype)) \
        if residual is not None else out_desc  # never read when HAS_RES is False
    if a.device not in _SMS:
        _SMS[a.device] = torch.cuda.get_device_properties(a.device).multi_processor_count
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    ordered = bool(config.get("ORDERED"))
    # the ordered kernel's program walks tiles pid, pid + P, ... (consumers alternate); the other's consumers
    # each walk every second one, so it needs half as many programs for the same tiles per program
    grid = (max(1, min(_SMS[a.device], tiles if ordered else triton.cdiv(tiles, 2))),)
    kernel = gemm_ws_ordered_kernel if ordered else gemm_ws_kernel
    return kernel[grid](a_desc, w_desc, res_desc, out_desc, bias, m, n, k, ACT_SILU=act == "silu",
                        HAS_RES=residual is not None, GROUP_M=config.get("GROUP_M", 8),
                        STAGES=config["STAGES"], CONSUMER_REGS=config.get("CONSUMER_REGS", 232),
                        num_warps=4, maxnreg=config.get("maxnreg", 168))


@functools.cache
def ws_signature(dtype: str = "bf16", block_m: int = 128, block_n: int = 128, block_k: int = 64) -> dict:
    """The kernel's argument types for an sm_90 compile without a GPU (descriptor types with their layouts)."""
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
    from triton.runtime.jit import mangle_type

    def desc(shape):
        t = torch.empty(256, 256, dtype=torch_dtype)
        return mangle_type(GluonDescriptor.from_tensor(t, shape, _layout(shape, torch_dtype)))

    return {"a_desc": desc([block_m, block_k]), "w_desc": desc([block_k, block_n]),
            "res_desc": desc([block_m, block_n]), "out_desc": desc([block_m, block_n]), "bias_ptr": "*fp32",
            "M": "i32", "N": "i32", "K": "i32", "ACT_SILU": "constexpr", "HAS_RES": "constexpr",
            "GROUP_M": "constexpr", "STAGES": "constexpr", "CONSUMER_REGS": "constexpr"}
