"""The two 1x1 layers of a ConvFirst block as one warp-specialised Hopper kernel (Gluon):
``out = silu(y @ We + b_e) @ Wp + b_p + residual``, the E*C-wide hidden activation kept on chip.

Why: in the blocks the fused ConvFirst kernel does not take (14x14 and 7x7 stages, ``NOTES_convfirst.md``) the
unfused sequence writes the hidden activation (E*C = 4C channels) to DRAM and reads it back: at 256@14 and
batch 256 that is 206 MB per block, about 0.07 ms at the measured DRAM bandwidth, while the two products take
0.071 ms at the measured bf16 peak. This kernel runs the grouped conv's output ``y`` through both products in
one pass (the structure of a fused attention kernel, with SiLU in place of the softmax and no rescaling).

One program per SM walks row tiles of 128 pixels; its two consumer warp groups take 64 rows each::

    for each chunk j of BH hidden channels:          (loader: TMA copies of We[:, j] and Wp[j, :] into a ring)
        S = y_rows @ We[:, j]                         wgmma, y_rows [64, C] from shared memory, S in registers
        P = silu(S + b_e[j])  -> bf16, in registers   (the A operand of the next product, never stored)
        O += P @ Wp[j, :]                             wgmma, O [64, C] fp32 in registers
    out_rows = O + b_p + residual_rows                 stored from registers

The block's input rows are copied once per tile (``y``, C/64 pieces of [64, 64]); both consumers read the same
weight chunk from the ring, which goes back to the loader when both have finished with it. The O accumulator
of a consumer holds 64 x C fp32 values (C / 2 registers per thread), so C <= 256 (:func:`pair_supported`).
The second product is synchronous: left in flight, its register operand P would stay live beside the next
chunk's accumulator, and ptxas then serialises every wgmma of the loop for want of registers (its note C7512,
which a test watches for). With ``PINGPONG`` the two consumers take turns issuing their first products.

Measured (H100, batch 256, CUDA graphs, ``NOTES_gemm.md`` "the pair kernel"): at 256@14 0.114 ms against 0.130
for the two epilogue-fused GEMMs; the models' sequence blocks run it where it was faster (:mod:`unfused`).

Gluon runs only on a GPU (see :mod:`gemm_ws`): on the CPU the tests compile it for sm_90 and read its PTX, and
the GPU tests check its values against fp64.
"""
from __future__ import annotations

import torch
import triton

from .gemm_ws import HAVE_GLUON, _cached_layout

if HAVE_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                   warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    from .gemm_ws import _silu

#: Rows per consumer warp group (one wgmma M), and rows per program tile (two consumers).
ROWS_PER_CONSUMER = 64
TILE_ROWS = 2 * ROWS_PER_CONSUMER
#: Width of one TMA piece of the input rows and of the expanding weight (128 bytes in bf16: one swizzle row).
PIECE = 64
#: Candidate (BH, STAGES): hidden channels per chunk and chunks in the weight ring (each tried with and without
#: PINGPONG). A stage goes back to the loader when both consumers' second products of its chunk are done.
PAIR_CONFIGS = ((64, 2), (32, 4))


if HAVE_GLUON:
    @gluon.jit
    def load_weight_chunks(we_desc, wp_desc, we_bufs, wp_bufs, w_ready, w_empty, chunk, HIDDEN: gl.constexpr):
        """One row tile's weights into the ring, chunk by chunk of BH hidden channels: We[:, j] as the pieces of
        rows that ``we_desc``'s box covers, and Wp[j, :], each stage once its consumers have released it. Returns the
        ring's chunk counter. Shared by the loaders of the pair kernel and the fused block kernel
        (:mod:`convfirst_ws`)."""
        BH: gl.constexpr = wp_desc.block_type.shape[0]
        STAGES: gl.constexpr = wp_bufs.type.shape[0]
        PIECES: gl.constexpr = we_bufs.type.shape[0] // STAGES
        PIECE_ROWS: gl.constexpr = we_desc.block_type.shape[0]
        nbytes: gl.constexpr = PIECES * we_desc.block_type.nbytes + wp_desc.block_type.nbytes
        for j in range(0, HIDDEN, BH):
            s = chunk % STAGES
            mbarrier.wait(w_empty.index(s), ((chunk // STAGES) & 1) ^ 1)  # a fresh barrier passes the first wait
            bar = w_ready.index(s)
            mbarrier.expect(bar, nbytes)
            for p in gl.static_range(PIECES):
                tma.async_copy_global_to_shared(we_desc, [p * PIECE_ROWS, j], bar, we_bufs.index(s * PIECES + p))
            tma.async_copy_global_to_shared(wp_desc, [j, 0], bar, wp_bufs.index(s))
            chunk += 1
        return chunk

    @gluon.jit
    def _pair_loader(y_desc, we_desc, wp_desc, y_bufs, we_bufs, wp_bufs, y_ready, y_empty, w_ready, w_empty, M,
                     HIDDEN: gl.constexpr):
        """One warp: per row tile, both consumers' input rows (when their previous rows are released), then every
        chunk's expanding and projecting weights into the ring, STAGES chunks ahead of the products."""
        ROWS: gl.constexpr = y_desc.block_type.shape[0]
        KC: gl.constexpr = y_bufs.type.shape[0] // 2
        y_bytes: gl.constexpr = KC * y_desc.block_type.nbytes
        PIECE: gl.constexpr = y_desc.block_type.shape[1]
        n_tiles = gl.cdiv(M, 2 * ROWS)
        chunk = 0
        count = 0
        for tile in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
            for c in gl.static_range(2):
                mbarrier.wait(y_empty.index(c), (count & 1) ^ 1)  # a fresh barrier passes the first wait
                mbarrier.expect(y_ready.index(c), y_bytes)
                for kc in gl.static_range(KC):
                    tma.async_copy_global_to_shared(y_desc, [tile * 2 * ROWS + c * ROWS, kc * PIECE],
                                                    y_ready.index(c), y_bufs.index(c * KC + kc))
            chunk = load_weight_chunks(we_desc, wp_desc, we_bufs, wp_bufs, w_ready, w_empty, chunk, HIDDEN)
            count += 1

    @gluon.jit
    def hidden_chain(a_bufs, a0, NA: gl.constexpr, we_bufs, wp_bufs, w_ready, w_empty, order, a_empty, b_e_ptr, o,
                     o2, chunk, HIDDEN: gl.constexpr, WHICH: gl.constexpr, PINGPONG: gl.constexpr,
                     PRODUCTS: gl.constexpr, s_layout: gl.constexpr, p_layout: gl.constexpr, CB: gl.constexpr = 0):
        """One row tile's pass over the hidden channels, chunk by chunk from the weight ring: S = A @ We_j (A the NA
        pieces ``a_bufs[a0:a0 + NA]``), P = silu(S + b_e[j]) in registers, O += P @ Wp_j. Returns (O, O2, the
        ring's chunk counter). With CB > 0 the output columns are held as two accumulators of power-of-two widths,
        O [rows, CA] and O2 [rows, CB] (C = 96 as 64 + 32, 192 as 128 + 64: no product on padding columns, and
        fewer registers than one [rows, next_pow2(C)] accumulator); with CB = 0, O2 is passed through untouched.
        ``a_empty`` is arrived on once A has been read for the last time. With PINGPONG the two consumers take
        turns issuing their first products (``order``). Without PRODUCTS (profiling) the products and SiLU are
        left out and the waits and arrivals kept. Shared by the pair kernel and the fused block kernel
        (:mod:`convfirst_ws`)."""
        BH: gl.constexpr = wp_bufs.type.shape[1]
        STAGES: gl.constexpr = wp_bufs.type.shape[0]
        ROWS: gl.constexpr = a_bufs.type.shape[1]
        for j in range(0, HIDDEN, BH):
            s = chunk % STAGES
            # the chunk's bias is read before the products are issued: its load latency hides behind them
            b_e = gl.load(b_e_ptr + j + gl.arange(0, BH, layout=gl.SliceLayout(0, s_layout))).to(gl.float32)
            mbarrier.wait(w_ready.index(s), (chunk // STAGES) & 1)
            if PINGPONG:  # consumer 0's first wait passes on the fresh barrier
                mbarrier.wait(order.index(WHICH), (chunk & 1) ^ (1 - WHICH))
            acc = gl.zeros([ROWS, BH], gl.float32, s_layout)
            if PRODUCTS:
                for k in gl.static_range(NA):
                    acc = warpgroup_mma(a_bufs.index(a0 + k), we_bufs.index(s * NA + k), acc, is_async=True)
                acc = warpgroup_mma_wait(0, deps=[acc])
            if PINGPONG:
                mbarrier.arrive(order.index(1 - WHICH), count=1)
            mbarrier.arrive(a_empty, count=1, pred=j + BH >= HIDDEN)  # A read for the last time
            if PRODUCTS:
                p = gl.convert_layout(_silu(acc + gl.expand_dims(b_e, 0)).to(a_bufs.dtype), p_layout)
                # synchronous: left in flight, its register operand p would have to stay live beside the next
                # chunk's accumulator, and ptxas then serialises every wgmma of the loop for want of registers
                if CB == 0:
                    o = warpgroup_mma(p, wp_bufs.index(s), o)
                else:
                    CA: gl.constexpr = o.type.shape[1]
                    p2_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o2.type.layout, k_width=2)
                    wp = wp_bufs.index(s)
                    o = warpgroup_mma(p, wp.slice(0, CA, dim=1), o, is_async=True)
                    o2 = warpgroup_mma(gl.convert_layout(p, p2_layout), wp.slice(CA, CB, dim=1), o2, is_async=True)
                    o, o2 = warpgroup_mma_wait(0, deps=[o, o2])
            mbarrier.arrive(w_empty.index(s), count=1)  # both of the chunk's products are done with its stage
            chunk += 1
        return o, o2, chunk

    @gluon.jit
    def _pair_consumer(bufs, bars, ptrs, M, HIDDEN: gl.constexpr, C: gl.constexpr, WHICH: gl.constexpr,
                       PINGPONG: gl.constexpr):
        """One warp group: 64 rows of each of its program's tiles through both products and the epilogue. With
        PINGPONG the two consumers take turns: one issues a chunk's first product only when the other's first
        product of the chunk before is done (``order``), so one consumer's SiLU runs beside the other's products
        instead of both waiting for the same weights at once."""
        y_bufs, we_bufs, wp_bufs = bufs
        y_ready, y_empty, w_ready, w_empty, order = bars
        b_e_ptr, b_p_ptr, res_ptr, out_ptr = ptrs
        ROWS: gl.constexpr = y_bufs.type.shape[1]
        KC: gl.constexpr = y_bufs.type.shape[0] // 2
        BH: gl.constexpr = wp_bufs.type.shape[1]
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BH, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, C, 16])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        n_tiles = gl.cdiv(M, 2 * ROWS)
        chunk = 0
        count = 0
        for tile in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
            mbarrier.wait(y_ready.index(WHICH), count & 1)
            o = gl.zeros([ROWS, C], gl.float32, o_layout)
            o, _, chunk = hidden_chain(y_bufs, WHICH * KC, KC, we_bufs, wp_bufs, w_ready, w_empty, order,
                                       y_empty.index(WHICH), b_e_ptr, o, o, chunk, HIDDEN, WHICH, PINGPONG, True,
                                       s_layout, p_layout)
            # the epilogue's indices and bias are built here, not kept live through the main loop (64 registers)
            cols = gl.arange(0, C, layout=gl.SliceLayout(0, o_layout))
            r = tile * 2 * ROWS + WHICH * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, o_layout))
            b_p = gl.expand_dims(gl.load(b_p_ptr + cols).to(gl.float32), 0)
            offs = gl.expand_dims(r, 1) * C + gl.expand_dims(cols, 0)
            mask = gl.expand_dims(r < M, 1)
            res = gl.load(res_ptr + offs, mask=mask, other=0.0).to(gl.float32)
            gl.store(out_ptr + offs, (o + b_p + res).to(out_ptr.dtype.element_ty), mask=mask)
            count += 1

    @gluon.jit
    def pair_ws_kernel(y_desc, we_desc, wp_desc, b_e_ptr, b_p_ptr, res_ptr, out_ptr, M, C: gl.constexpr,
                       HIDDEN: gl.constexpr, STAGES: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                       PINGPONG: gl.constexpr):
        """Persistent ``silu(y @ We + b_e) @ Wp + b_p + residual`` over row tiles of 128; launch with
        num_warps=4 (consumer 0), one more warp group (consumer 1) and one loader warp."""
        KC: gl.constexpr = C // y_desc.block_type.shape[1]
        y_bufs = gl.allocate_shared_memory(y_desc.dtype, [2 * KC] + y_desc.block_type.shape, y_desc.layout)
        we_bufs = gl.allocate_shared_memory(we_desc.dtype, [STAGES * KC] + we_desc.block_type.shape,
                                            we_desc.layout)
        wp_bufs = gl.allocate_shared_memory(wp_desc.dtype, [STAGES] + wp_desc.block_type.shape, wp_desc.layout)
        y_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        y_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        w_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        w_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        order = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(2):
            mbarrier.init(y_ready.index(i), count=1)
            mbarrier.init(y_empty.index(i), count=1)
            mbarrier.init(order.index(i), count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(w_ready.index(i), count=1)
            mbarrier.init(w_empty.index(i), count=2)  # both consumers read every chunk
        fence_async_shared()
        bufs = (y_bufs, we_bufs, wp_bufs)
        bars = (y_ready, y_empty, w_ready, w_empty, order)
        ptrs = (b_e_ptr, b_p_ptr, res_ptr, out_ptr)
        gl.warp_specialize([(_pair_consumer, (bufs, bars, ptrs, M, HIDDEN, C, 0, PINGPONG)),
                            (_pair_consumer, (bufs, bars, ptrs, M, HIDDEN, C, 1, PINGPONG)),
                            (_pair_loader, (y_desc, we_desc, wp_desc, y_bufs, we_bufs, wp_bufs, y_ready, y_empty,
                                            w_ready, w_empty, M, HIDDEN))],
                           [4, 1], [CONSUMER_REGS, 24])


def pair_smem_bytes(channels: int, config: dict, itemsize: int = 2) -> int:
    """Shared memory of one program (barriers not counted): both consumers' input rows and the weight ring."""
    bh, stages = config["BH"], config["STAGES"]
    return (TILE_ROWS * channels + stages * (channels * bh + bh * channels)) * itemsize


def pair_configs(channels: int) -> list[dict]:
    """The candidate chunkings that fit in shared memory at this width (``maxnreg`` for the launch)."""
    out = [{"BH": bh, "STAGES": st, "CONSUMER_REGS": 232, "maxnreg": 168, "PINGPONG": pp} for bh, st in PAIR_CONFIGS
           for pp in (False, True)]
    return [cf for cf in out if pair_smem_bytes(channels, cf) <= 220 * 1024]


def pair_supported(channels: int, hidden: int) -> str | None:
    """None when the kernel takes this layer pair, else why not (the width limits of the module docstring)."""
    if channels not in (64, 128, 256):
        return f"C={channels}: the pair kernel takes C in (64, 128, 256) (its fp32 accumulator holds 64 x C)"
    if hidden % 64:
        return f"hidden width {hidden} is not a multiple of 64"
    return None


_SMS: dict = {}


def launch_pair(y, we_t, b_e, wp_t, b_p, residual, out, config: dict):
    """One launch into ``out`` [M, C]: ``y`` [M, C], ``we_t`` [C, HIDDEN], ``wp_t`` [HIDDEN, C], ``residual``
    [M, C], all contiguous and of one dtype; biases of any float dtype."""
    m, c = y.shape
    hidden = we_t.shape[1]
    bh = config["BH"]
    y_desc = GluonDescriptor.from_tensor(y, [ROWS_PER_CONSUMER, PIECE], _cached_layout((ROWS_PER_CONSUMER, PIECE),
                                                                                       y.dtype))
    we_desc = GluonDescriptor.from_tensor(we_t, [PIECE, bh], _cached_layout((PIECE, bh), y.dtype))
    wp_desc = GluonDescriptor.from_tensor(wp_t, [bh, c], _cached_layout((bh, c), y.dtype))
    if y.device not in _SMS:
        _SMS[y.device] = torch.cuda.get_device_properties(y.device).multi_processor_count
    grid = (max(1, min(_SMS[y.device], triton.cdiv(m, TILE_ROWS))),)
    return pair_ws_kernel[grid](y_desc, we_desc, wp_desc, b_e, b_p, residual, out, m, C=c, HIDDEN=hidden,
                                STAGES=config["STAGES"], CONSUMER_REGS=config["CONSUMER_REGS"],
                                PINGPONG=bool(config.get("PINGPONG")), num_warps=4, maxnreg=config["maxnreg"])


def pair_signature(dtype: str = "bf16", channels: int = 256, bh: int = 64) -> dict:
    """The kernel's argument types for an sm_90 compile without a GPU."""
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
    from triton.runtime.jit import mangle_type

    def desc(shape):
        t = torch.empty(512, 1024, dtype=torch_dtype)
        return mangle_type(GluonDescriptor.from_tensor(t, shape, _cached_layout(tuple(shape), torch_dtype)))

    ptr = "*bf16" if dtype == "bf16" else "*fp16"
    return {"y_desc": desc([ROWS_PER_CONSUMER, PIECE]), "we_desc": desc([PIECE, bh]), "wp_desc": desc([bh, channels]),
            "b_e_ptr": "*fp32", "b_p_ptr": "*fp32", "res_ptr": ptr, "out_ptr": ptr, "M": "i32", "C": "constexpr",
            "HIDDEN": "constexpr", "STAGES": "constexpr", "CONSUMER_REGS": "constexpr", "PINGPONG": "constexpr"}


def pair_reference(y, we_t, b_e, wp_t, b_p, residual) -> torch.Tensor:
    """What the kernel computes, in plain PyTorch and fp64 from the same (upcast) inputs."""
    hidden = torch.nn.functional.silu(y.double() @ we_t.double() + b_e.double())
    return hidden @ wp_t.double() + b_p.double() + residual.double()


#: Per (M, C, hidden width, dtype, device): the tile :func:`expand_project` runs, or None for the two GEMMs.
PAIR_CHOICE: dict = {}


def pair_usable(y: torch.Tensor, we_t: torch.Tensor, wp_t: torch.Tensor, residual: torch.Tensor) -> bool:
    """Whether the kernel can run on these tensors here: Gluon and a Hopper GPU, a supported width, TMA's
    16-byte alignment, and autotuning on (``CONVFIRST_AUTOTUNE=0`` keeps the fixed two-GEMM path)."""
    from ._common import autotuning
    from .gemm import tma_usable
    from .gemm_ws import ws_available

    return (autotuning() and ws_available(y.device) and pair_supported(y.shape[1], we_t.shape[1]) is None
            and tma_usable(y, we_t, wp_t, residual))


def expand_project(y, we_t, b_e, wp_t, b_p, residual, two_gemms) -> torch.Tensor:
    """``silu(y @ we_t + b_e) @ wp_t + b_p + residual``: the pair kernel with the tile chosen for this shape, or
    ``two_gemms()`` (the same arithmetic as two launches) where the kernel cannot run or was slower.

    The choice is timed once per shape, at its first call outside a CUDA graph capture (timing cannot run inside
    one); a capture before that runs ``two_gemms``. Inputs are checked by the caller."""
    from ._common import pick_fastest

    if not pair_usable(y, we_t, wp_t, residual):
        return two_gemms()
    key = (y.shape[0], y.shape[1], we_t.shape[1], y.dtype, y.device)
    if key not in PAIR_CHOICE and not torch.cuda.is_current_stream_capturing():
        scratch = torch.empty_like(y)
        configs = {str(cf): cf for cf in pair_configs(y.shape[1])}
        runs = {"two-gemm": two_gemms}
        runs.update({name: (lambda cf: lambda: launch_pair(y, we_t, b_e, wp_t, b_p, residual, scratch, cf))(cf)
                     for name, cf in configs.items()})
        PAIR_CHOICE[key] = configs.get(pick_fastest(runs))
    config = PAIR_CHOICE.get(key)
    if config is None:
        return two_gemms()
    out = torch.empty_like(y)
    launch_pair(y, we_t, b_e, wp_t, b_p, residual, out, config)
    return out
