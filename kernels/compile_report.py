"""Registers, spills and shared memory of every autotuning config, compiled for sm_90 without a GPU.

Triton compiles for a GPU target on any machine; ``ptxas -v`` (shipped with Triton) then reports the
resources of each config. This answered most "why is it slow / why did it spill" questions of the kernels
without spending device time. Divisibility-by-16 of pointers and of the integer arguments C, C16, HID,
HID16 and NPIX is assumed, as at the benchmark shapes.

    python -m convfirst.kernels.compile_report convfirst 64 96
    python -m convfirst.kernels.compile_report mbconv 64@56
    python -m convfirst.kernels.compile_report gemm-ws
    python -m convfirst.kernels.compile_report gluon-shift
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import convfirst_fused, gconv, mbconv_fused
from ._common import next_pow2, packed_taps_rows, split_channels

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
DIVISIBLE_INTS = {"NPIX", "C", "C16", "HID", "HID16"}


def _compile(source_cls, fn, signature: dict, constexprs: dict, options: dict):
    """Compile ``fn`` for sm_90 from ``source_cls`` (Triton's or Gluon's AST source), pointers and the
    ``DIVISIBLE_INTS`` assumed 16-divisible; launch options whose value is None are left out."""
    attrs = {(i,): [["tt.divisibility", 16]] for i, (name, ty) in enumerate(signature.items())
             if ty.startswith("*") or (name in DIVISIBLE_INTS and ty != "constexpr")}
    return triton.compile(source_cls(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options={k: v for k, v in options.items() if v is not None})


def compile_sm90(fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int,
                 maxnreg: int | None = None):
    """Compile one config of a Triton kernel for sm_90 (no GPU needed); the compiled kernel (``.asm``)."""
    return _compile(ASTSource, fn, signature, constexprs,
                    {"num_warps": num_warps, "num_stages": num_stages, "maxnreg": maxnreg or None})


def compile_gluon_sm90(fn, signature: dict, constexprs: dict, num_warps: int, maxnreg: int | None = None):
    """Compile a Gluon kernel for sm_90 (no GPU needed); the compiled kernel (``.asm``)."""
    from triton.experimental.gluon._runtime import GluonASTSource

    return _compile(GluonASTSource, fn, signature, constexprs, {"num_warps": num_warps, "maxnreg": maxnreg or None})


def ptxas_report(ptx: str) -> dict:
    """ptxas' registers and spill bytes for sm_90a, and whether it serialised the wgmma instructions (its
    performance note C7512: each product then waits for the one before, e.g. for want of registers)."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    report = subprocess.run([PTXAS, "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull],
                            capture_output=True, text=True).stderr
    os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores", report)
    return {"regs": int(regs.group(1)) if regs else None, "spill_bytes": int(spills.group(1)) if spills else None,
            "wgmma_serialized": "C7512" in report}


def gemm_ws_report(config: dict, act_silu: bool, has_res: bool) -> dict:
    """One tile of the warp-specialised Gluon GEMM compiled for sm_90: ptxas' registers and spills, shared
    memory, the wgmma, TMA-copy and mbarrier-wait counts of the PTX and the register split of its partitions."""
    from . import gemm_ws

    sig = gemm_ws.ws_signature("bf16", config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"])
    consts = dict(ACT_SILU=act_silu, HAS_RES=has_res, GROUP_M=config.get("GROUP_M", 8), STAGES=config["STAGES"],
                  CONSUMER_REGS=config.get("CONSUMER_REGS", 232))
    fn = gemm_ws.gemm_ws_ordered_kernel if config.get("ORDERED") else gemm_ws.gemm_ws_kernel
    return _gluon_report(compile_gluon_sm90(fn, sig, consts, num_warps=4, maxnreg=config.get("maxnreg", 168)))


def _gluon_report(kernel) -> dict:
    """What the tests read from a compiled warp-specialised Gluon kernel: ptxas' report, shared memory, the wgmma,
    TMA-copy and mbarrier-wait counts of the PTX and the register counts its partitions are given."""
    ptx = kernel.asm["ptx"]
    return {**ptxas_report(ptx), "smem": kernel.metadata.shared, "wgmma": ptx.count("wgmma.mma_async"),
            "tma_copies": ptx.count("cp.async.bulk.tensor"),
            "tma_stores": len(re.findall(r"cp\.async\.bulk\.tensor\.\dd\.global\.shared", ptx)),
            "mbarrier_waits": ptx.count("mbarrier.try_wait"),
            "setmaxnreg": sorted({int(v) for v in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", ptx)})}


def pair_ws_report(channels: int, config: dict) -> dict:
    """The pair kernel (:mod:`pair_ws`) compiled for sm_90 at one width and chunking: as :func:`gemm_ws_report`."""
    from . import pair_ws

    sig = pair_ws.pair_signature("bf16", channels, config["BH"])
    consts = dict(C=channels, HIDDEN=4 * channels, STAGES=config["STAGES"], CONSUMER_REGS=config["CONSUMER_REGS"],
                  PINGPONG=bool(config.get("PINGPONG")))
    return _gluon_report(compile_gluon_sm90(pair_ws.pair_ws_kernel, sig, consts, num_warps=4,
                                            maxnreg=config["maxnreg"]))


def convfirst_ws_report(channels: int, config: dict) -> dict:
    """The warp-specialised fused ConvFirst kernel (:mod:`convfirst_ws`) compiled for sm_90 at one width and
    config: as :func:`gemm_ws_report`."""
    from . import convfirst_ws

    sig = convfirst_ws.ws_block_signature("bf16", channels, config)
    ca, cb = split_channels(channels)
    consts = dict(C=channels, CA=ca, CB=cb, HIDDEN=4 * channels, STAGES=config["STAGES"],
                  TAP_STAGES=config["TAP_STAGES"], G_STAGES=config.get("G_STAGES", convfirst_ws.G_STAGES),
                  CHAIN_REGS=convfirst_ws.CHAIN_REGS,
                  GCONV_REGS=convfirst_ws.GCONV_REGS, PINGPONG=bool(config.get("PINGPONG")),
                  HALO=bool(config.get("HALO", convfirst_ws.HALO_VIEWS)), SKIP=0)
    return _gluon_report(compile_gluon_sm90(convfirst_ws.convfirst_ws_kernel, sig, consts, num_warps=4,
                                            maxnreg=convfirst_ws.LAUNCH_REGS))


def gconv_ws_report(channels: int, config: dict, silu: bool = False) -> dict:
    """The warp-specialised grouped conv (:mod:`gconv_ws`) compiled for sm_90 at one width and config: as
    :func:`gemm_ws_report`."""
    from . import gconv_ws

    sig = gconv_ws.ws_gconv_signature("bf16", config, channels)
    consts = dict(C=channels, CS=config["CS"], QB=config["QB"], TAP_STAGES=config["TAP_STAGES"],
                  OUT_STAGES=config["OUT_STAGES"], HALO=bool(config.get("HALO", gconv_ws.HALO_VIEWS)), SILU=silu,
                  CONSUMER_REGS=gconv_ws.CONSUMER_REGS, LOADER_REGS=gconv_ws.LOADER_REGS)
    return _gluon_report(compile_gluon_sm90(gconv_ws.gconv_ws_kernel, sig, consts, num_warps=4,
                                            maxnreg=gconv_ws.LAUNCH_REGS))


@functools.cache
def _shifted_view_probe():
    """A Gluon kernel that stages a [2 * ROWS, 16] tile in shared memory and loads ROWS rows of it from row OFFSET."""
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    @gluon.jit
    def shifted_view(out_ptr, OFFSET: gl.constexpr, ROWS: gl.constexpr):
        blocked: gl.constexpr = gl.BlockedLayout([1, 8], [16, 2], [4, 1], [1, 0])
        halo = gl.allocate_shared_memory(gl.bfloat16, [2 * ROWS, 16], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
        halo.store(gl.zeros([2 * ROWS, 16], gl.bfloat16, blocked))
        tap = halo.slice(OFFSET, ROWS, 0).load(blocked)
        r = gl.arange(0, ROWS, layout=gl.SliceLayout(1, blocked))
        c = gl.arange(0, 16, layout=gl.SliceLayout(0, blocked))
        gl.store(out_ptr + gl.expand_dims(r, 1) * 16 + gl.expand_dims(c, 0), tap)

    return shifted_view


def gluon_shifted_view_compiles(offset: int, rows: int = 64) -> bool:
    """Whether Gluon compiles (for sm_90) a load of ``rows`` rows of a staged [2 * rows, 16] shared-memory tile
    starting at row ``offset``: the 'shifted view' a fused block would feed the tensor cores for each 3x3 tap of a
    halo staged once. Triton's verifier takes only offsets that are multiples of the view's length ("The split
    offset may not touch the tile"; Triton 3.6 and 3.8, any shared layout), so a tap shifted by one pixel cannot
    be written as a view (``NOTES_convfirst.md``)."""
    try:
        compile_gluon_sm90(_shifted_view_probe(), {"out_ptr": "*bf16", "OFFSET": "constexpr", "ROWS": "constexpr"},
                           {"OFFSET": offset, "ROWS": rows}, 4)
    except Exception:  # noqa: BLE001 - the verifier's refusal surfaces as a compilation error
        return False
    return True


def compile_config(fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int,
                   maxnreg: int | None = None) -> dict:
    """Compile one config for sm_90 and return ptxas' registers/spills and Triton's shared memory (bytes)."""
    kernel = compile_sm90(fn, signature, constexprs, num_warps, num_stages, maxnreg)
    return {**ptxas_report(kernel.asm["ptx"]), "smem": kernel.metadata.shared}


def _sig(pointers: dict, ints: list[str], constexprs: list[str]) -> dict:
    return {**pointers, **{n: "i32" for n in ints}, **{n: "constexpr" for n in constexprs}}


CONVFIRST_SIGNATURE = _sig({"x_ptr": "*bf16", "w_taps_ptr": "*bf16", "b_g_ptr": "*fp32", "we_t_ptr": "*bf16",
                            "b_e_ptr": "*fp32", "wp_t_ptr": "*bf16", "b_p_ptr": "*fp32", "out_ptr": "*bf16"},
                           ["NPIX", "H", "W"], ["C", "C16", "HID", "CA", "CB", "BLOCK_M", "BLOCK_H", "UNROLL_TAPS",
                                                "DENSE_GCONV", "FP32_DOT"])


#: The v5 (resident-weight) kernel's signature: v4's without DENSE_GCONV, with PROGRAMS_PER_SM.
CONVFIRST_RESIDENT_SIGNATURE = _sig({k: v for k, v in CONVFIRST_SIGNATURE.items() if v != "constexpr"
                                     and k not in ("NPIX", "H", "W")}, ["NPIX", "H", "W"],
                                    ["C", "C16", "HID", "CA", "CB", "BLOCK_M", "BLOCK_H", "PROGRAMS_PER_SM",
                                     "UNROLL_TAPS", "FP32_DOT"])


def convfirst_tma_signature(channels: int, tile_h: int, tile_w: int) -> dict:
    """The v6 (TMA patch) kernel's signature: four NHWC descriptors (two channel parts of x and of out) whose
    boxes are one patch of one part, then v4's weight pointers."""
    ca, cb = split_channels(channels)

    def desc(part):
        return f"tensordesc<bf16[1, {tile_h}, {tile_w}, {part}]>"

    return _sig({"xa_desc": desc(ca), "xb_desc": desc(cb or ca), "outa_desc": desc(ca), "outb_desc": desc(cb or ca),
                 "w_taps_ptr": "*bf16", "b_g_ptr": "*fp32", "we_t_ptr": "*bf16", "b_e_ptr": "*fp32",
                 "wp_t_ptr": "*bf16", "b_p_ptr": "*fp32"}, ["N", "H", "W"],
                ["C", "C16", "HID", "CA", "CB", "TILE_H", "TILE_W", "BLOCK_H", "JOINT_TAPS", "FP32_DOT"])


def convfirst_constexprs(channels: int, tile: dict, expansion: int = 4) -> dict:
    """The fused ConvFirst kernel's constexprs at ``channels`` for a tile config (as the launcher sets them)."""
    ca, cb = split_channels(channels)
    return dict(tile, C=channels, C16=packed_taps_rows(channels), HID=expansion * channels, CA=ca, CB=cb,
                FP32_DOT=False)


def report(block: str, shape: str) -> list[dict]:
    rows = []
    if block == "gconv":
        sig = _sig({"x_ptr": "*bf16", "w_taps_ptr": "*bf16", "bias_ptr": "*fp32", "out_ptr": "*bf16"},
                   ["NPIX", "H", "W"], ["C", "C16", "BLOCK_M", "CK", "APPLY_SILU", "UNROLL_TAPS", "FP32_DOT"])
        c = int(shape)
        for cf in gconv._gconv_configs():
            consts = dict(cf.kwargs, C=c, C16=packed_taps_rows(c), APPLY_SILU=False, FP32_DOT=False)
            rows.append({"config": cf.kwargs, **compile_config(gconv.grouped3x3_kernel, sig, consts, cf.num_warps,
                                                               cf.num_stages)})
    elif block == "convfirst":
        c = int(shape)
        for cf in convfirst_fused._configs():
            rows.append({"config": cf.kwargs, "warps": cf.num_warps, "maxnreg": cf.maxnreg, **compile_config(
                convfirst_fused.convfirst_block_kernel, CONVFIRST_SIGNATURE, convfirst_constexprs(c, cf.kwargs),
                cf.num_warps, cf.num_stages, cf.maxnreg)})
        if convfirst_fused.resident_fits(c, 4 * c):  # v5 (resident weights)
            for cf in convfirst_fused._resident_configs():
                rows.append({"config": cf.kwargs, "warps": cf.num_warps, "maxnreg": cf.maxnreg, **compile_config(
                    convfirst_fused.convfirst_resident_kernel, CONVFIRST_RESIDENT_SIGNATURE,
                    convfirst_constexprs(c, cf.kwargs), cf.num_warps, cf.num_stages, cf.maxnreg)})
        for cf in convfirst_fused._tma_configs():  # v6 (TMA patches)
            th, tw = cf.kwargs["TILE_H"], cf.kwargs["TILE_W"]
            rows.append({"config": cf.kwargs, "warps": cf.num_warps, "maxnreg": cf.maxnreg, **compile_config(
                convfirst_fused.convfirst_tma_kernel, convfirst_tma_signature(c, th, tw),
                convfirst_constexprs(c, cf.kwargs), cf.num_warps, cf.num_stages, cf.maxnreg)})
    elif block == "mbconv":
        c, w = (int(v) for v in shape.split("@"))
        sig = _sig({"x_ptr": "*bf16", "we_t_ptr": "*bf16", "b_e_ptr": "*fp32", "w_taps_ptr": "*bf16",
                    "b_g_ptr": "*fp32", "wp_t_ptr": "*bf16", "b_p_ptr": "*fp32", "out_ptr": "*bf16",
                    "scratch_ptr": "*bf16"}, ["NPIX", "H", "W"],
                   ["C", "HID", "HID16", "CA", "CB", "BLOCK_M", "HALO_B", "BLOCK_H", "PROGRAMS_PER_SM", "UNROLL_TAPS",
                    "FP32_DOT"])
        for cf in mbconv_fused._configs():
            consts = dict(cf.kwargs, C=c, HID=4 * c, HID16=packed_taps_rows(4 * c), CA=max(16, next_pow2(c)), CB=0,
                          HALO_B=mbconv_fused.halo_rows(w), FP32_DOT=False)
            rows.append({"config": cf.kwargs, "warps": cf.num_warps, "maxnreg": cf.maxnreg, **compile_config(
                mbconv_fused.mbconv_block_kernel, sig, consts, cf.num_warps, cf.num_stages, cf.maxnreg)})
    elif block == "gemm-ws":
        from . import gemm_ws
        for cf in gemm_ws.ws_configs():
            for silu, res in ((True, False), (False, True)):
                rows.append({"config": cf, "act_silu": silu, "residual": res, **gemm_ws_report(cf, silu, res)})
    elif block == "gluon-shift":
        rows = [{"offset": off, "rows": 64, "compiles": gluon_shifted_view_compiles(off)} for off in (0, 1, 17, 64)]
    else:
        raise SystemExit(f"block {block!r}: choose convfirst (shape = C), mbconv (shape = C@W), gconv, gemm-ws or "
                         f"gluon-shift")
    return rows


if __name__ == "__main__":
    block, *shapes = sys.argv[1:] or ["convfirst", "64"]
    for shape in shapes or ["64"]:
        for row in report(block, shape):
            print(block, shape, row)
