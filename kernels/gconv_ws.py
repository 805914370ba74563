"""The grouped 3x3 gw8 conv as a warp-specialised Hopper kernel (Gluon), v6 of ``NOTES_gconv.md``.

Why: the Triton kernel (``gconv.py``) is bound by the latency of its nine tap loads per tile, not by DRAM or L2
(``NOTES_gconv.md`` v5: 38-47% of the DRAM floor at every stage shape). Here the loads are TMA copies issued by a
warp of their own, several stages ahead of the products, as in the fused block kernel (:mod:`convfirst_ws`)::

    tap loader (1 warp per consumer)    the taps' weights of the program's channels once (kept on chip); then per
                                        patch and group of QB 32-channel boxes, with HALO per kernel column dx the
                                        patch's TILE_H + 2 rows shifted by dx - 1 (two copies per box, the borders
                                        zero-filled by the copy engine), without HALO each of the nine taps
    conv consumers (2 x 4 warps)        per tap and box two wgmma (two 16-channel slices, 16 x 16 block-diagonal
                                        weights; 2 QB accumulators in flight), + bias [-> SiLU] -> bf16 -> a staging
                                        tile -> one TMA store per box (the copy engine clips the rows and columns
                                        past the image)

Each consumer walks its own patches (TILE_H x TILE_W pixels of one image: 8 x 8, 4 x 16 or 8 x 16) with its own
loader and ring, so one consumer's epilogue runs beside the other's products. A program owns a range of CS
channels whose weights it keeps in shared memory (9 x 16 rows x 32 bytes per 16 channels, 110 KB at C = 384);
where they do not fit beside the rings, the channels are split evenly among the programs (:func:`channel_range`;
C = 768: two ranges).

Measured (H100, batch 256, ``NOTES_gconv.md`` v6c): 96@56 0.141 ms (4.2x cuDNN, 72% of the DRAM floor), 384@14
0.046, 768@7 0.031, against 0.256, 0.064 and 0.033 for the Triton kernel. The launcher (:func:`gconv._ws_choice`)
times both by GPU time at a shape's first call and runs this one inside CUDA graph captures where it was faster.

Gluon runs only on a GPU: on the CPU the tests compile this kernel for sm_90 and read its PTX; on the GPU they
check its values against the fp32 reference.
"""
from __future__ import annotations

import torch
import triton

from .gemm_ws import HAVE_GLUON, _cached_layout, ws_available

if HAVE_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                   warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor

    from .convfirst_ws import _group_barrier, _patch_origin, _rows_from, copy_taps
    from .gemm_ws import _silu

#: SLICE: channels per grouped-conv slice (one packed 16 x 16 block-diagonal weight); BOX: per copy (two slices).
from .convfirst_ws import BOX, HALO_VIEWS, SLICE
#: Candidate configs: patch shape (TILE_H, TILE_W), tap-ring stages per consumer (with HALO_VIEWS one stage is a
#: kernel column; without, one tap, and the ring is three times as deep), staging tiles per consumer, and QB, the
#: 32-channel boxes a consumer takes at once (2 QB accumulators in flight; a stage holds QB boxes).
WS_GCONV_CONFIGS = ((8, 8, 4, 2, 1), (4, 16, 4, 2, 1), (8, 8, 3, 2, 2), (4, 16, 3, 2, 2), (4, 16, 2, 2, 2),
                    (4, 16, 3, 4, 2), (8, 16, 3, 2, 1))
#: Consumers (warp groups) per program, each with its own loader warp and ring.
CONSUMERS = 2
#: Shared memory a config may take (of the 227 KB of an H100 SM; barriers and alignment need the rest).
SMEM_LIMIT = 220 * 1024
#: Registers: the consumers (two fp32 [64, 16] accumulators and addresses), the loader warps, the launch's cap.
CONSUMER_REGS = 152
LOADER_REGS = 40
LAUNCH_REGS = 168


if HAVE_GLUON:

    @gluon.jit
    def _loader(xm_desc, xt_desc, gw_desc, tap_bufs, gw_bufs, tap_ready, tap_empty, gw_ready, patch0, step,
                n_patches, PPI, PW, C0, C: gl.constexpr, CS: gl.constexpr, QB: gl.constexpr, HALO: gl.constexpr,
                WEIGHTS: gl.constexpr):
        """One warp: (with WEIGHTS) the taps' weights of channels C0 ... C0 + CS once; then for patches patch0,
        patch0 + step, ... and each group of QB 32-channel boxes, per kernel column dx the patch's rows with their
        halo (HALO) or each of the nine taps, one ring stage per column or tap holding all QB boxes."""
        TILE_H: gl.constexpr = xm_desc.block_type.shape[1]
        TILE_W: gl.constexpr = xm_desc.block_type.shape[2]
        BOX: gl.constexpr = xm_desc.block_type.shape[3]
        TAP_STAGES: gl.constexpr = tap_bufs.type.shape[0] // QB
        NPS: gl.constexpr = CS // 16
        if WEIGHTS:
            mbarrier.expect(gw_ready, 9 * CS * 16 * 2)
            for j in range(9 * NPS):
                tma.async_copy_global_to_shared(gw_desc, [(j // NPS) * C + C0 + (j % NPS) * 16, 0], gw_ready,
                                                gw_bufs.index(j))
        nbytes: gl.constexpr = QB * (xm_desc.block_type.nbytes + (xt_desc.block_type.nbytes if HALO else 0))
        k = 0
        for p in range(patch0, n_patches, step):
            n, h0, w0 = _patch_origin(p, PPI, PW, TILE_H, TILE_W)
            for q in range(CS // (QB * BOX)):
                for i in gl.static_range(3 if HALO else 9):  # kernel column dx (HALO) or tap
                    s = k % TAP_STAGES
                    mbarrier.wait(tap_empty.index(s), ((k // TAP_STAGES) & 1) ^ 1)  # fresh barriers pass
                    bar = tap_ready.index(s)
                    mbarrier.expect(bar, nbytes)
                    for b in gl.static_range(QB):
                        copy_taps(xm_desc, xt_desc, tap_bufs.index(s * QB + b), bar, n, h0, w0,
                                  C0 + (q * QB + b) * BOX, i, HALO)
                    k += 1

    @gluon.jit
    def _tap_view(tap_bufs, flat, s, b, dy, QB: gl.constexpr, ROWS: gl.constexpr, HALO: gl.constexpr,
                  box_layout: gl.constexpr):
        """Box b's [ROWS, BOX] operand of stage s: with HALO the kernel row dy's view into the staged rows."""
        if HALO:
            return _rows_from(tap_bufs.index(s * QB + b), dy, ROWS, box_layout)
        else:
            return flat.index(s * QB + b)

    @gluon.jit
    def _store_box(a0, a1, o_flat, o_bufs, os, out_desc, bias_ptr, n, h0, w0, c, SILU: gl.constexpr):
        """+ bias [-> SiLU] -> the staging tile ``os`` -> one TMA store of the box at channel c."""
        cols = gl.arange(0, 16, layout=gl.SliceLayout(0, a0.type.layout))
        a0 = a0 + gl.expand_dims(gl.load(bias_ptr + c + cols).to(gl.float32), 0)
        a1 = a1 + gl.expand_dims(gl.load(bias_ptr + c + 16 + cols).to(gl.float32), 0)
        if SILU:
            a0 = _silu(a0)
            a1 = _silu(a1)
        o = o_flat.index(os)
        o.slice(0, 16, dim=1).store(a0.to(o_bufs.dtype))
        o.slice(16, 16, dim=1).store(a1.to(o_bufs.dtype))
        fence_async_shared()  # the stores above are read by the copy engine (the async proxy)
        _group_barrier()  # every warp has stored its rows before the copy is issued
        tma.async_copy_shared_to_global(out_desc, [n, h0, w0, c], o_bufs.index(os))

    @gluon.jit
    def _consumer(tap_bufs, gw_bufs, o_bufs, tap_ready, tap_empty, gw_ready, out_desc, bias_ptr, patch0, step,
                  n_patches, PPI, PW, C0, CS: gl.constexpr, QB: gl.constexpr, HALO: gl.constexpr,
                  SILU: gl.constexpr):
        """One warp group: per patch and group of QB boxes, the nine taps' products (two 16-channel slices per box:
        2 QB independent accumulators; one stage's products in flight while the next stage's are issued), then per
        box + bias [-> SiLU], stored by TMA from a staging tile, which is refilled only after its previous store
        has read it."""
        TILE_H: gl.constexpr = out_desc.block_type.shape[1]
        TILE_W: gl.constexpr = out_desc.block_type.shape[2]
        BOX: gl.constexpr = out_desc.block_type.shape[3]
        ROWS: gl.constexpr = TILE_H * TILE_W
        NPS: gl.constexpr = CS // 16
        TAP_STAGES: gl.constexpr = tap_bufs.type.shape[0] // QB
        OUT_STAGES: gl.constexpr = o_bufs.type.shape[0]
        PER_STAGE: gl.constexpr = (3 if HALO else 1) * 2 * QB  # products issued per stage
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                             instr_shape=[16, 16, 16])
        box_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([ROWS, BOX], tap_bufs.dtype)
        flat = tap_bufs._reinterpret(tap_bufs.dtype, [tap_bufs.type.shape[0], ROWS, BOX], box_layout)
        o_flat = o_bufs._reinterpret(o_bufs.dtype, [OUT_STAGES, ROWS, BOX], box_layout)
        mbarrier.wait(gw_ready, 0)
        k = 0
        e = 0
        for p in range(patch0, n_patches, step):
            n, h0, w0 = _patch_origin(p, PPI, PW, TILE_H, TILE_W)
            for q in range(CS // (QB * BOX)):
                j0 = 2 * QB * q  # the group's first 16-channel slice within the program's channels
                a0 = gl.zeros([ROWS, 16], gl.float32, acc_layout)  # box 0, slices j0 and j0 + 1
                a1 = gl.zeros([ROWS, 16], gl.float32, acc_layout)
                a2 = gl.zeros([ROWS, 16], gl.float32, acc_layout)  # box 1 (QB = 2)
                a3 = gl.zeros([ROWS, 16], gl.float32, acc_layout)
                for i in gl.static_range(3 if HALO else 9):
                    s = k % TAP_STAGES
                    mbarrier.wait(tap_ready.index(s), (k // TAP_STAGES) & 1)
                    for dy in gl.static_range(3 if HALO else 1):
                        tap = dy * 3 + i if HALO else i
                        v = _tap_view(tap_bufs, flat, s, 0, dy, QB, ROWS, HALO, box_layout)
                        a0 = warpgroup_mma(v.slice(0, 16, dim=1), gw_bufs.index(tap * NPS + j0), a0, is_async=True)
                        a1 = warpgroup_mma(v.slice(16, 16, dim=1), gw_bufs.index(tap * NPS + j0 + 1), a1,
                                           is_async=True)
                        if QB == 2:
                            v = _tap_view(tap_bufs, flat, s, 1, dy, QB, ROWS, HALO, box_layout)
                            a2 = warpgroup_mma(v.slice(0, 16, dim=1), gw_bufs.index(tap * NPS + j0 + 2), a2,
                                               is_async=True)
                            a3 = warpgroup_mma(v.slice(16, 16, dim=1), gw_bufs.index(tap * NPS + j0 + 3), a3,
                                               is_async=True)
                    # this stage's products stay in flight, the stage before's are done
                    if QB == 2:
                        a0, a1, a2, a3 = warpgroup_mma_wait(PER_STAGE, deps=[a0, a1, a2, a3])
                    else:
                        a0, a1 = warpgroup_mma_wait(PER_STAGE, deps=[a0, a1])
                    if i > 0:
                        mbarrier.arrive(tap_empty.index((k - 1) % TAP_STAGES), count=1)
                    k += 1
                if QB == 2:
                    a0, a1, a2, a3 = warpgroup_mma_wait(0, deps=[a0, a1, a2, a3])
                else:
                    a0, a1 = warpgroup_mma_wait(0, deps=[a0, a1])
                mbarrier.arrive(tap_empty.index((k - 1) % TAP_STAGES), count=1)
                c = C0 + q * QB * BOX
                tma.store_wait(OUT_STAGES - QB)  # the stores that last read these staging tiles have left
                _group_barrier()
                _store_box(a0, a1, o_flat, o_bufs, e % OUT_STAGES, out_desc, bias_ptr, n, h0, w0, c, SILU)
                if QB == 2:
                    _store_box(a2, a3, o_flat, o_bufs, (e + 1) % OUT_STAGES, out_desc, bias_ptr, n, h0, w0, c + BOX,
                               SILU)
                e += QB
        tma.store_wait(0)

    @gluon.jit
    def gconv_ws_kernel(xm_desc, xt_desc, gw_desc, out_desc, bias_ptr, n_patches, PPI, PW, C: gl.constexpr,
                        CS: gl.constexpr, QB: gl.constexpr, TAP_STAGES: gl.constexpr, OUT_STAGES: gl.constexpr,
                        HALO: gl.constexpr, SILU: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                        LOADER_REGS: gl.constexpr):
        """Persistent grouped conv; launch with num_warps=4 (consumer 0), then consumer 1 and the two loader warps.
        Program ``pid`` takes channels ``(pid % (C // CS)) * CS ...`` and patches ``2 (pid // (C // CS)) + c``,
        stepping by twice the programs per channel range; the grid is a multiple of ``C // CS``."""
        TILE_H: gl.constexpr = xm_desc.block_type.shape[1]
        TILE_W: gl.constexpr = xm_desc.block_type.shape[2]
        BOX: gl.constexpr = xm_desc.block_type.shape[3]
        NSPLIT: gl.constexpr = C // CS
        NPS: gl.constexpr = CS // 16
        pid = gl.program_id(0)
        C0 = (pid % NSPLIT) * CS
        group = pid // NSPLIT
        step = 2 * (gl.num_programs(0) // NSPLIT)
        if HALO:  # per stage: TILE_H + 2 rows (allocated as 2 TILE_H) of TILE_W pixels x BOX channels
            stage_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([2 * TILE_H, TILE_W, BOX],
                                                                              xm_desc.dtype)
            taps0 = gl.allocate_shared_memory(xm_desc.dtype, [TAP_STAGES * QB, 2 * TILE_H, TILE_W, BOX],
                                              stage_layout)
            taps1 = gl.allocate_shared_memory(xm_desc.dtype, [TAP_STAGES * QB, 2 * TILE_H, TILE_W, BOX],
                                              stage_layout)
        else:  # per stage: one tap's box
            taps0 = gl.allocate_shared_memory(xm_desc.dtype, [TAP_STAGES * QB] + xm_desc.block_type.shape,
                                              xm_desc.layout)
            taps1 = gl.allocate_shared_memory(xm_desc.dtype, [TAP_STAGES * QB] + xm_desc.block_type.shape,
                                              xm_desc.layout)
        gw_bufs = gl.allocate_shared_memory(gw_desc.dtype, [9 * NPS] + gw_desc.block_type.shape, gw_desc.layout)
        o0 = gl.allocate_shared_memory(out_desc.dtype, [OUT_STAGES] + out_desc.block_type.shape, out_desc.layout)
        o1 = gl.allocate_shared_memory(out_desc.dtype, [OUT_STAGES] + out_desc.block_type.shape, out_desc.layout)
        gw_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        ready0 = gl.allocate_shared_memory(gl.int64, [TAP_STAGES, 1], mbarrier.MBarrierLayout())
        empty0 = gl.allocate_shared_memory(gl.int64, [TAP_STAGES, 1], mbarrier.MBarrierLayout())
        ready1 = gl.allocate_shared_memory(gl.int64, [TAP_STAGES, 1], mbarrier.MBarrierLayout())
        empty1 = gl.allocate_shared_memory(gl.int64, [TAP_STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(gw_ready, count=1)
        for i in gl.static_range(TAP_STAGES):
            mbarrier.init(ready0.index(i), count=1)
            mbarrier.init(empty0.index(i), count=1)
            mbarrier.init(ready1.index(i), count=1)
            mbarrier.init(empty1.index(i), count=1)
        fence_async_shared()
        gl.warp_specialize([(_consumer, (taps0, gw_bufs, o0, ready0, empty0, gw_ready, out_desc, bias_ptr, 2 * group,
                                         step, n_patches, PPI, PW, C0, CS, QB, HALO, SILU)),
                            (_consumer, (taps1, gw_bufs, o1, ready1, empty1, gw_ready, out_desc, bias_ptr,
                                         2 * group + 1, step, n_patches, PPI, PW, C0, CS, QB, HALO, SILU)),
                            (_loader, (xm_desc, xt_desc, gw_desc, taps0, gw_bufs, ready0, empty0, gw_ready, 2 * group,
                                       step, n_patches, PPI, PW, C0, C, CS, QB, HALO, True)),
                            (_loader, (xm_desc, xt_desc, gw_desc, taps1, gw_bufs, ready1, empty1, gw_ready,
                                       2 * group + 1, step, n_patches, PPI, PW, C0, C, CS, QB, HALO, False))],
                           [4, 1, 1], [CONSUMER_REGS, LOADER_REGS, LOADER_REGS])


def ws_gconv_supported(channels: int) -> str | None:
    """None when the kernel takes this width, else why not."""
    if channels % BOX or channels < BOX:
        return (f"C={channels}: the warp-specialised grouped conv takes C a multiple of {BOX} (its copies move "
                f"32-channel boxes)")
    return None


def ws_gconv_usable(x, w_taps, out) -> str | None:
    """None when the kernel can run on these tensors here, else why not: Gluon and a Hopper GPU, a supported
    width, TMA's 16-byte alignment."""

    if not ws_available(x.device):
        return "it needs Gluon and a Hopper (sm_90) GPU"
    why = ws_gconv_supported(x.shape[1])
    if why:
        return why
    if not all(t.data_ptr() % 16 == 0 for t in (x, w_taps, out)):
        return "TMA needs 16-byte aligned tensors"
    return None


def ws_gconv_smem_bytes(channels: int, config: dict, itemsize: int = 2) -> int:
    """Shared memory of one program (barriers not counted): both consumers' tap rings and staging tiles, and the
    weights of the program's CS channels (``config["CS"]``, else all C)."""
    rows = config["TILE_H"] * config["TILE_W"]
    stage_rows = 2 * rows if config.get("HALO", HALO_VIEWS) else rows  # HALO: TILE_H + 2 rows, allocated as 2 TILE_H
    taps = CONSUMERS * config["TAP_STAGES"] * config.get("QB", 1) * stage_rows * BOX
    out = CONSUMERS * config["OUT_STAGES"] * rows * BOX
    weights = 9 * config.get("CS", channels) * SLICE
    return (taps + out + weights) * itemsize


def channel_range(channels: int, config: dict) -> int:
    """Channels per program (CS) for this config: all C where the program then fits in shared memory, else the
    largest even split of C into groups of QB boxes that does; 0 where none does."""
    group = BOX * config.get("QB", 1)
    if channels % group:
        return 0
    groups = channels // group
    for parts in range(1, groups + 1):
        if groups % parts == 0 and ws_gconv_smem_bytes(channels, dict(config, CS=channels // parts)) <= SMEM_LIMIT:
            return channels // parts
    return 0


def ws_gconv_configs(channels: int, halo: bool | None = None) -> list[dict]:
    """The candidate configs at this width, each with the channels a program takes (CS), in the form ``halo``
    (default: HALO_VIEWS, what this Triton compiles)."""
    halo = HALO_VIEWS if halo is None else halo
    if ws_gconv_supported(channels):
        return []
    out = []
    for th, tw, ts, os, qb in WS_GCONV_CONFIGS:
        cf = {"TILE_H": th, "TILE_W": tw, "TAP_STAGES": ts if halo else 3 * ts, "OUT_STAGES": os, "QB": qb,
              "HALO": halo}
        cs = channel_range(channels, cf)
        if cs:
            out.append(dict(cf, CS=cs))
    return out


_SMS: dict = {}


def launch_ws_gconv(x, w_taps, bias, out, config: dict, apply_silu: bool = False):
    """One launch into ``out``: ``x`` and ``out`` [N, C, H, W] channels_last, ``w_taps`` [9, C, 16] as packed by
    :func:`convfirst.kernels.pack_grouped_taps`. Inputs are checked by the caller."""
    n, c, h, w = x.shape
    th, tw, cs = config["TILE_H"], config["TILE_W"], config["CS"]
    nsplit = c // cs
    x_nhwc, out_nhwc = x.permute(0, 2, 3, 1), out.permute(0, 2, 3, 1)
    xm_desc = GluonDescriptor.from_tensor(x_nhwc, [1, th, tw, BOX], _cached_layout((1, th, tw, BOX), x.dtype))
    xt_desc = GluonDescriptor.from_tensor(x_nhwc, [1, 2, tw, BOX], _cached_layout((1, 2, tw, BOX), x.dtype))
    gw_desc = GluonDescriptor.from_tensor(w_taps.reshape(9 * c, SLICE), [SLICE, SLICE],
                                          _cached_layout((SLICE, SLICE), x.dtype))
    out_desc = GluonDescriptor.from_tensor(out_nhwc, [1, th, tw, BOX], _cached_layout((1, th, tw, BOX), x.dtype))
    if x.device not in _SMS:
        _SMS[x.device] = torch.cuda.get_device_properties(x.device).multi_processor_count
    pw = triton.cdiv(w, tw)
    ppi = triton.cdiv(h, th) * pw
    n_patches = n * ppi
    groups = max(1, min(_SMS[x.device] // nsplit, triton.cdiv(n_patches, CONSUMERS)))
    return gconv_ws_kernel[(groups * nsplit,)](xm_desc, xt_desc, gw_desc, out_desc, bias, n_patches, ppi, pw, C=c,
                                               CS=cs, QB=config["QB"], TAP_STAGES=config["TAP_STAGES"],
                                               OUT_STAGES=config["OUT_STAGES"],
                                               HALO=bool(config.get("HALO", HALO_VIEWS)), SILU=bool(apply_silu),
                                               CONSUMER_REGS=CONSUMER_REGS, LOADER_REGS=LOADER_REGS, num_warps=4,
                                               maxnreg=LAUNCH_REGS)


def ws_gconv_signature(dtype: str = "bf16", config: dict | None = None, channels: int = 384) -> dict:
    """The kernel's argument types for an sm_90 compile without a GPU."""
    config = config or ws_gconv_configs(channels)[0]
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
    from triton.runtime.jit import mangle_type

    def desc(shape):
        t = torch.empty([8] * (len(shape) - 1) + [256], dtype=torch_dtype)
        return mangle_type(GluonDescriptor.from_tensor(t, shape, _cached_layout(tuple(shape), torch_dtype)))

    th, tw = config["TILE_H"], config["TILE_W"]
    return {"xm_desc": desc([1, th, tw, BOX]), "xt_desc": desc([1, 2, tw, BOX]), "gw_desc": desc([SLICE, SLICE]),
            "out_desc": desc([1, th, tw, BOX]), "bias_ptr": "*fp32", "n_patches": "i32", "PPI": "i32", "PW": "i32",
            "C": "constexpr", "CS": "constexpr", "QB": "constexpr", "TAP_STAGES": "constexpr", "OUT_STAGES": "constexpr",
            "HALO": "constexpr", "SILU": "constexpr", "CONSUMER_REGS": "constexpr", "LOADER_REGS": "constexpr"}
