"""Matrix products with their epilogue fused: ``act(A @ W + bias) [+ residual]``, and patchify convs as such.

Design in two lines: a standard tiled tensor-core GEMM (fp32 accumulation, programs ordered in groups of
GROUP_M row tiles so neighbours share A in L2) whose epilogue adds the bias, applies SiLU and adds a residual
before the single bf16/fp16 store; the A operand is either a row-major matrix or, for a conv whose kernel
equals its stride, the non-overlapping k x k patches of an NHWC image, addressed in place (no gathered copy).

Why: in the unfused block sequence the 1x1 layers ran as cuBLAS ``addmm`` followed by separate SiLU and
residual-add kernels. At ConvFirst 384@14x14, batch 256, the SiLU re-reads and re-writes the 154 MB hidden
activation (103 us of a 403 us block on the H100) and the add moves 115 MB (35 us); here they cost nothing
beyond the GEMM's own store. Bytes per pixel after the grouped conv, hidden E*C wide, bf16: cuBLAS + SiLU +
add move ``2C + 2EC`` (expand) ``+ 4EC`` (SiLU) ``+ 2EC + 2C`` (project) ``+ 6C`` (add) = ``10C + 8EC``; with
the epilogues fused ``2C + 2EC`` (expand + SiLU) ``+ 2EC + 4C`` (project + residual) = ``6C + 4EC``. For the patchify stem and downsampling convs (kernel == stride), the epilogue
adds the folded BatchNorm's bias, which cuDNN ran as a separate, non-vectorised broadcast add.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from ._common import (ACTIVATION_DTYPES, LAST_COMPILED, LAUNCH_OPTIONS, KernelInputError, autotuning,
                      check_device, check_same_device, interpreting, launch_options, pick_fastest, tracing)
from .activation import silu

#: Epilogue activations.
ACTIVATIONS = ("none", "silu")


@triton.jit
def _tile_coords(tile, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of linear tile ``tile``, in groups of GROUP_M row tiles (neighbours share A in L2)."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    per_group = GROUP_M * tl.cdiv(N, BLOCK_N)
    first_m = (tile // per_group) * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    return first_m + (tile % per_group) % group_rows, (tile % per_group) // group_rows


@triton.jit
def _gemm_tile(a_ptr, w_ptr, bias_ptr, res_ptr, out_ptr, pid_m, pid_n, M, N, K, H, W, HO, WO,
               CIN: tl.constexpr, PATCH: tl.constexpr, ACT_SILU: tl.constexpr, HAS_RES: tl.constexpr,
               EVEN_K: tl.constexpr, FP32_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, ROWPAD: tl.constexpr = 0):
    """One [BLOCK_M, BLOCK_N] output tile: the K loop, then bias, SiLU, residual and the store."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    if PATCH == 0:
        row_base = offs_m.to(tl.int64) * K
    else:
        wo = offs_m % WO
        ho = (offs_m // WO) % HO
        img = offs_m // (WO * HO)
        row_base = ((img.to(tl.int64) * H + ho * PATCH) * W + wo * PATCH) * CIN
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K if ROWPAD == 0 else PATCH * ROWPAD, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        w_row = offs_k
        if PATCH == 0:
            col_off = offs_k
        elif ROWPAD > 0:
            # k = (kh, r) with each patch row's P*CIN values padded to ROWPAD columns (a power of two), so that a
            # run of r is contiguous and starts aligned: e.g. the 3-channel stem's 12-value rows are read as
            # three 8-byte vectors instead of twelve 2-byte loads; the padding columns are masked off
            kh = offs_k // ROWPAD
            r = offs_k % ROWPAD
            col_off = kh * (W * CIN) + r
            w_row = kh * (PATCH * CIN) + r
        elif (PATCH * CIN) % BLOCK_K == 0:
            # k = (kh, r): the P*CIN values of one patch row (kw, c) are contiguous in NHWC, and a K step
            # stays inside one patch row, so its columns are one contiguous, aligned run (vector loads)
            kh = k0 // (PATCH * CIN)
            r0 = tl.multiple_of(k0 - kh * (PATCH * CIN), BLOCK_K)
            col_off = kh * (W * CIN) + r0 + tl.arange(0, BLOCK_K)
        else:  # e.g. the 3-channel stem: a K step spans patch rows
            kh = offs_k // (PATCH * CIN)
            col_off = kh * (W * CIN) + (offs_k - kh * (PATCH * CIN))
        a_ptrs = a_ptr + row_base[:, None] + col_off[None, :]
        w_ptrs = w_ptr + w_row[:, None] * N + offs_n[None, :]
        if ROWPAD > 0:
            k_ok = ((offs_k % ROWPAD) < PATCH * CIN) & (offs_k < PATCH * ROWPAD)
            a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        elif EVEN_K:
            a = tl.load(a_ptrs, mask=m_ok[:, None], other=0.0)
            b = tl.load(w_ptrs, mask=n_ok[None, :], other=0.0)
        else:
            k_ok = offs_k < K
            a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if FP32_DOT:  # the interpreter's bf16 dot is wrong: upcast (exact fp32 products of bf16 inputs)
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc)

    acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if ACT_SILU:
        acc = silu(acc, FP32_DOT)
    out_off = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    ok = m_ok[:, None] & n_ok[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + out_off, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def gemm_epilogue_kernel(a_ptr, w_ptr, bias_ptr, res_ptr, out_ptr, M, N, K, H, W, HO, WO,
                         CIN: tl.constexpr, PATCH: tl.constexpr, ACT_SILU: tl.constexpr, HAS_RES: tl.constexpr,
                         EVEN_K: tl.constexpr, FP32_DOT: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                         PERSISTENT: tl.constexpr, ROWPAD: tl.constexpr = 0):
    """out[M, N] = act(A[M, K] @ w[K, N] + bias[N]) (+ res[M, N]), fp32 accumulation, one rounding at the store.

    ``PATCH == 0``: A is row-major [M, K]. ``PATCH == P``: row m of A is the P x P patch under output pixel
    m = (n, ho, wo) of an NHWC image [*, H, W, CIN], in (kh, kw, c) order, so K = P*P*CIN and
    A[m, k] = x[n, ho*P + kh, wo*P + kw, c]; the output rows are then the NHWC output image [*, HO, WO, N].
    Either way the address of A[m, k] is row_base(m) + col_off(k), computed once per row / per K step.
    ``CIN`` is a constexpr (1 for plain matrices) so that the alignment of the patch rows is known at compile
    time: without it the compiler cannot vectorise the loads, and unvectorised loads are not pipelined.
    ``ROWPAD`` (patches only, 0 = off): each patch row's P*CIN values are read as a run of ROWPAD columns (a power
    of two, the rest masked off), so that runs start aligned and are read as vectors (the stem's 12-value rows).
    ``PERSISTENT``: one program per SM walks the tiles (stride = the grid size); else one program per tile.
    (With ``tl.range(..., flatten=True)``, which would overlap a tile's epilogue with the next tile's loads,
    Triton 3.6 stops pipelining the loads altogether: no ``cp.async`` in the sm_90 PTX. So the loop is plain.)
    """
    if PERSISTENT:
        num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for tile in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
            pid_m, pid_n = _tile_coords(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            _gemm_tile(a_ptr, w_ptr, bias_ptr, res_ptr, out_ptr, pid_m, pid_n, M, N, K, H, W, HO, WO, CIN, PATCH,
                       ACT_SILU, HAS_RES, EVEN_K, FP32_DOT, BLOCK_M, BLOCK_N, BLOCK_K, ROWPAD)
    else:
        pid_m, pid_n = _tile_coords(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
        _gemm_tile(a_ptr, w_ptr, bias_ptr, res_ptr, out_ptr, pid_m, pid_n, M, N, K, H, W, HO, WO, CIN, PATCH,
                   ACT_SILU, HAS_RES, EVEN_K, FP32_DOT, BLOCK_M, BLOCK_N, BLOCK_K, ROWPAD)


@triton.jit
def _tma_tile(a_desc, w_desc, res_desc, out_desc, bias_ptr, tile, M, N, K, ACT_SILU: tl.constexpr,
              HAS_RES: tl.constexpr, FP32_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = _tile_coords(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for ki in range(tl.cdiv(K, BLOCK_K)):
        a = a_desc.load([off_m, ki * BLOCK_K])
        b = w_desc.load([ki * BLOCK_K, off_n])
        if FP32_DOT:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc)
    offs_n = off_n + tl.arange(0, BLOCK_N)
    acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if ACT_SILU:
        acc = silu(acc, FP32_DOT)
    if HAS_RES:
        acc += res_desc.load([off_m, off_n]).to(tl.float32)
    out_desc.store([off_m, off_n], acc.to(out_desc.dtype))


@triton.jit
def gemm_tma_kernel(a_desc, w_desc, res_desc, out_desc, bias_ptr, M, N, K, ACT_SILU: tl.constexpr,
                    HAS_RES: tl.constexpr, FP32_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, PERSISTENT: tl.constexpr):
    """The same product and epilogue for plain matrices, every tile moved by the Tensor Memory Accelerator.

    The descriptors carry the shapes, so rows past M and columns past K are zero-filled by the copy engine
    and stores past the edges are clipped: no address or mask arithmetic in the program, fewer registers.
    ``PERSISTENT``: one program per SM walks the tiles in one flattened loop, so the copies of the next tile
    are issued while this tile's epilogue runs (with TMA loads Triton 3.6 pipelines the flattened loop; with
    pointer loads it does not, see :func:`gemm_epilogue_kernel`)."""
    if PERSISTENT:
        num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), flatten=True):
            _tma_tile(a_desc, w_desc, res_desc, out_desc, bias_ptr, tile, M, N, K, ACT_SILU, HAS_RES, FP32_DOT,
                      BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    else:
        _tma_tile(a_desc, w_desc, res_desc, out_desc, bias_ptr, tl.program_id(0), M, N, K, ACT_SILU, HAS_RES,
                  FP32_DOT, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)


def gemm_configs() -> list:
    """Autotuning candidates (Hopper): 64-256 row tiles, 64-256 column tiles, 32-64-deep K steps; one program per
    tile, and the persistent form of the tiles that fit one program per SM."""
    configs = []
    for bm, bn, bk, warps, stages, persistent in [
            (128, 256, 64, 8, 3, False), (128, 128, 64, 8, 4, False), (128, 128, 64, 4, 4, False),
            (256, 128, 64, 8, 3, False), (128, 64, 64, 4, 4, False), (64, 128, 64, 4, 4, False),
            (64, 256, 64, 8, 3, False), (64, 64, 64, 4, 4, False), (128, 128, 32, 4, 5, False),
            (128, 256, 64, 8, 3, True), (128, 128, 64, 8, 4, True), (128, 128, 64, 4, 4, True)]:
        configs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8,
                                      "PERSISTENT": persistent}, num_warps=warps, num_stages=stages))
    return configs


_SM_COUNT: dict = {}


def _programs(m: int, n: int, meta: dict, device: torch.device) -> int:
    """Grid size: one program per tile, or for the persistent form one per SM (at most one per tile)."""
    tiles = triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])
    if not meta.get("PERSISTENT"):
        return tiles
    if device.type != "cuda":
        return min(tiles, 4)
    if device not in _SM_COUNT:
        _SM_COUNT[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return min(tiles, _SM_COUNT[device])


def _prune(configs, named_args, **kwargs):
    m, n, k = named_args["M"], named_args["N"], named_args["K"]
    kept = [cf for cf in configs
            if cf.kwargs["BLOCK_N"] <= max(64, triton.next_power_of_2(n))
            and cf.kwargs["BLOCK_M"] <= max(64, triton.next_power_of_2(m))
            and cf.kwargs["BLOCK_K"] <= max(32, triton.next_power_of_2(k))]
    return kept or configs[:1]


@functools.cache
def _launcher():
    """The pointer kernel autotuned per (M, N, K, A addressing, epilogue); built once, on first use."""
    return triton.autotune(configs=gemm_configs(), key=["M", "N", "K", "PATCH", "ACT_SILU", "HAS_RES", "ROWPAD"],
                           prune_configs_by={"early_config_prune": _prune})(gemm_epilogue_kernel)


def tma_configs() -> list:
    """Autotuning candidates of the TMA form (the descriptors' block shapes are set per config). The last three
    are 128 x 128 tiles of 8 warps small enough for two programs per SM (126 registers, 48-96 KB of shared
    memory in the sm_90 compile), so that one program's epilogue overlaps the other's products; every other
    tile holds one program per SM."""
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "PERSISTENT": persistent},
                          num_warps=warps, num_stages=stages, pre_hook=_set_block_shapes)
            for bm, bn, bk, warps, stages, persistent in [
                (128, 256, 64, 8, 3, False), (128, 128, 64, 8, 4, False), (128, 128, 64, 4, 4, False),
                (256, 128, 64, 8, 3, False), (128, 64, 64, 4, 4, False), (64, 128, 64, 4, 4, False),
                (64, 256, 64, 8, 3, False), (128, 128, 64, 4, 3, False),
                (128, 256, 64, 8, 3, True), (128, 128, 64, 8, 4, True), (128, 128, 64, 8, 3, True),
                (128, 128, 64, 8, 3, False), (128, 128, 64, 8, 2, False), (128, 128, 32, 8, 4, False)]]


def tma_config_fits(config: dict, has_residual: bool) -> bool:
    """Whether a TMA config fits the 227 KB of shared memory: the persistent 128 x 256 tile with a residual
    needs 272 KB (its pipeline buffers, the output staging tile and the residual tile; sm_90 compile)."""
    return not (has_residual and config.get("PERSISTENT") and config["BLOCK_M"] * config["BLOCK_N"] > 128 * 128)


def _prune_tma(configs, named_args, **kwargs):
    has_res = bool(kwargs.get("HAS_RES", named_args.get("HAS_RES", False)))
    return _prune([cf for cf in configs if tma_config_fits(cf.kwargs, has_res)], named_args, **kwargs)


def _set_block_shapes(nargs: dict) -> None:
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["w_desc"].block_shape = [bk, bn]
    nargs["res_desc"].block_shape = [bm, bn]
    nargs["out_desc"].block_shape = [bm, bn]


@functools.cache
def _tma_launcher():
    """The TMA kernel autotuned per (M, N, K, epilogue); built once, on first use."""
    return triton.autotune(configs=tma_configs(), key=["M", "N", "K", "ACT_SILU", "HAS_RES"],
                           prune_configs_by={"early_config_prune": _prune_tma})(gemm_tma_kernel)


def tma_usable(*tensors: torch.Tensor) -> bool:
    """TMA needs 16-byte aligned bases and row strides (K and N multiples of 8 in bf16/fp16)."""
    return all(t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0 for t in tensors)


#: Which form runs the plain-matrix products by default. "auto": the TMA kernel (autotuned) when launched
#: eagerly; inside a CUDA graph capture, on a Hopper GPU with Gluon, the faster on the GPU of the TMA kernel and the
#: tiles of the ordered warp-specialised kernel (:mod:`gemm_ws`, v7 in NOTES_gemm.md), as timed at the shape's
#: first eager call. The Gluon kernel's launch costs more host time than the TMA kernel's, which a model run
#: eagerly pays on every call and a CUDA graph pays once. The environment variable CONVFIRST_GEMM_FORM sets
#: another default ("tma", "gluon-ws" or "pointer").
DEFAULT_FORM = os.environ.get("CONVFIRST_GEMM_FORM", "auto")
FORMS = ("auto", "tma", "pointer", "gluon-ws")
#: Per (M, N, K, act, residual, dtype, device): the (form, config) that "auto" runs inside a CUDA graph.
AUTO_CHOICE: dict = {}


def _auto_form(a, w_t, bias, residual, out, m, n, k, act) -> tuple[str, dict | None]:
    """The form (and Gluon tile) "auto" runs for this product. The GPU-time choice is made once per shape, at
    its first eager call (timing cannot run inside a capture), and used when the launch is being captured."""
    from . import gemm_ws

    if not autotuning() or not gemm_ws.ws_available(a.device):
        return "tma", None
    key = (m, n, k, act, residual is not None, a.dtype, a.device)
    capturing = torch.cuda.is_current_stream_capturing()
    if key not in AUTO_CHOICE and not capturing:
        candidates = {"tma": ("tma", None)}
        candidates.update({str(cf): ("gluon-ws", cf) for cf in gemm_ws.ws_configs(ordered=True)})

        def run(form, cf):
            if form == "tma":
                return lambda: _launch_tma(a, w_t, bias, residual, out, m, n, k, act, None)
            return lambda: gemm_ws.launch_ws(a, w_t, bias, residual, out, act, cf)
        AUTO_CHOICE[key] = candidates[pick_fastest({name: run(*fc) for name, fc in candidates.items()})]
    return AUTO_CHOICE.get(key, ("tma", None)) if capturing else ("tma", None)


def _launch_tma(a, w_t, bias, residual, out, m, n, k, act, config):
    from triton.tools.tensor_descriptor import TensorDescriptor

    if config is None and not autotuning():
        config = tma_heuristic_config()
    shapes = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64} if config is None else config
    a_desc = TensorDescriptor.from_tensor(a, [shapes["BLOCK_M"], shapes["BLOCK_K"]])
    w_desc = TensorDescriptor.from_tensor(w_t, [shapes["BLOCK_K"], shapes["BLOCK_N"]])
    out_desc = TensorDescriptor.from_tensor(out, [shapes["BLOCK_M"], shapes["BLOCK_N"]])
    res_desc = TensorDescriptor.from_tensor(residual, [shapes["BLOCK_M"], shapes["BLOCK_N"]]) \
        if residual is not None else out_desc  # never read when HAS_RES is False
    flags = dict(ACT_SILU=act == "silu", HAS_RES=residual is not None, FP32_DOT=interpreting())
    if config is not None:
        meta = {"PERSISTENT": False, **{key: v for key, v in config.items() if key not in LAUNCH_OPTIONS}}
        grid = (_programs(m, n, meta, a.device),)
        return gemm_tma_kernel[grid](a_desc, w_desc, res_desc, out_desc, bias, m, n, k, **flags, **meta,
                                     **launch_options(config))
    grid = lambda meta: (_programs(m, n, meta, a.device),)  # noqa: E731
    return _tma_launcher()[grid](a_desc, w_desc, res_desc, out_desc, bias, m, n, k, **flags)


def tma_heuristic_config() -> dict:
    if interpreting():
        return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "PERSISTENT": False}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "PERSISTENT": False, "num_warps": 8,
            "num_stages": 4}


def heuristic_config(m: int, n: int, k: int) -> dict:
    """A fixed config (no autotuning): a small tile in the interpreter, else 128 x 128 x 64, 8 warps, 4 stages."""
    if interpreting():
        return {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4, "PERSISTENT": False}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "PERSISTENT": False, "num_warps": 8,
            "num_stages": 4}


#: Patch rows whose P * CIN values are not a multiple of 8 (the 3-channel stem's 12) are read as runs of the next
#: power of two, masked, so that they load as aligned vectors (``ROWPAD``); ``CONVFIRST_PATCH_ROWPAD=0`` reads them
#: value by value as before.
PAD_PATCH_ROWS = os.environ.get("CONVFIRST_PATCH_ROWPAD", "1") != "0"


def patch_rowpad(patch: int, cin: int) -> int:
    """The ROWPAD the kernel gets for a patch conv: 0 for plain matrices, aligned patch rows, or when switched off."""
    run = patch * cin
    if patch == 0 or run % 8 == 0 or not PAD_PATCH_ROWS:
        return 0
    return triton.next_power_of_2(run)


def _launch(a, w_t, bias, residual, out, m, n, k, patch, geometry, act, config):
    h, w, ho, wo, cin = geometry
    flags = dict(PATCH=patch, ACT_SILU=act == "silu", HAS_RES=residual is not None, FP32_DOT=interpreting(),
                 ROWPAD=patch_rowpad(patch, cin))
    res = residual if residual is not None else out  # never read when HAS_RES is False
    if m == 0 or n == 0:
        return out
    if config is None and not autotuning():
        config = heuristic_config(m, n, k)
    if config is not None:
        extra = launch_options(config)
        meta = {"PERSISTENT": False, **{key: v for key, v in config.items() if key not in LAUNCH_OPTIONS}}
        grid = (_programs(m, n, meta, a.device),)
        compiled = gemm_epilogue_kernel[grid](a, w_t, bias, res, out, m, n, k, h, w, ho, wo, cin,
                                              EVEN_K=k % meta["BLOCK_K"] == 0, **flags, **meta, **extra)
    else:
        grid = lambda meta: (_programs(m, n, meta, a.device),)  # noqa: E731
        # EVEN_K depends on the tuned BLOCK_K; every candidate's BLOCK_K divides K = 64*j, else masks are kept
        even = all(k % cf.kwargs["BLOCK_K"] == 0 for cf in gemm_configs())
        compiled = _launcher()[grid](a, w_t, bias, res, out, m, n, k, h, w, ho, wo, cin, EVEN_K=even, **flags)
    LAST_COMPILED["gemm"] = compiled
    return out


def _check_common(name: str, a: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor, k: int, act: str) -> None:
    if a.dtype not in ACTIVATION_DTYPES:
        raise KernelInputError(f"{name}: dtype {a.dtype} is not supported; use torch.bfloat16 or torch.float16")
    if w_t.dtype != a.dtype:
        raise KernelInputError(f"{name}: weight dtype {w_t.dtype} differs from the input's {a.dtype}")
    if w_t.dim() != 2 or w_t.shape[0] != k or not w_t.is_contiguous():
        raise KernelInputError(f"{name}: weight must be a contiguous [K={k}, N] matrix (the layer's weight "
                               f"transposed), got shape {tuple(w_t.shape)}")
    if bias.shape != (w_t.shape[1],) or not bias.is_contiguous():
        raise KernelInputError(f"{name}: bias must be a contiguous tensor of shape ({w_t.shape[1]},), got shape "
                               f"{tuple(bias.shape)} with strides {bias.stride()}")
    if act not in ACTIVATIONS:
        raise KernelInputError(f"{name}: act={act!r}; expected one of {ACTIVATIONS}")
    check_device(a, f"{name}: input")
    check_same_device(a, weight=w_t, bias=bias)


def matmul_reference(a: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor, act: str = "none",
                     residual: torch.Tensor | None = None) -> torch.Tensor:
    """What :func:`matmul_bias_act` computes, in plain PyTorch and fp64 from the same (upcast) inputs."""
    out = a.double() @ w_t.double() + bias.double()
    if act == "silu":
        out = torch.nn.functional.silu(out)
    return out if residual is None else out + residual.double()


def check_matmul_inputs(a, w_t, bias, act, residual) -> None:
    if a.dim() != 2 or not a.is_contiguous():
        raise KernelInputError(f"matmul_bias_act: a must be a contiguous [M, K] matrix, got shape "
                               f"{tuple(a.shape)} with strides {a.stride()}")
    _check_common("matmul_bias_act", a, w_t, bias, a.shape[1], act)
    if residual is not None:
        want = (a.shape[0], w_t.shape[1])
        if tuple(residual.shape) != want or not residual.is_contiguous() or residual.dtype != a.dtype \
                or residual.device != a.device:
            raise KernelInputError(f"matmul_bias_act: residual must be a contiguous {a.dtype} [M, N] = {list(want)} "
                                   f"matrix on {a.device}, got {residual.dtype} {tuple(residual.shape)} on "
                                   f"{residual.device}")


def launch_matmul(a, w_t, bias, act="none", residual=None, config=None, out=None, form=None) -> torch.Tensor:
    """Launch into ``out`` (a new [M, N] tensor when None; tests pass a NaN-poisoned one). ``form``: one of
    ``FORMS`` (default ``DEFAULT_FORM``); where TMA's alignment rules are not met the pointer form runs.
    ``config`` a fixed tile of that form."""
    from . import gemm_ws

    m, k = a.shape
    n = w_t.shape[1]
    if out is None:
        out = torch.empty((m, n), device=a.device, dtype=a.dtype)
    form = DEFAULT_FORM if form is None else form
    if form not in FORMS:
        raise KernelInputError(f"form={form!r} (argument or CONVFIRST_GEMM_FORM); expected one of {FORMS}")
    if form == "gluon-ws" and not gemm_ws.ws_available(a.device):
        raise KernelInputError("form='gluon-ws' needs Triton's Gluon and a Hopper (sm_90) GPU; "
                               f"got {a.device} with Gluon {'present' if gemm_ws.HAVE_GLUON else 'missing'}")
    if m == 0 or n == 0:
        return out
    if tma_usable(a, w_t, out) and (residual is None or tma_usable(residual, w_t, out)):
        if form == "auto":  # a fixed config names its form by its keys (the Gluon tiles have STAGES)
            if config is not None:
                form = "gluon-ws" if "STAGES" in config else "tma"
            else:
                form, config = _auto_form(a, w_t, bias, residual, out, m, n, k, act)
        if form == "gluon-ws":
            LAST_COMPILED["gemm"] = gemm_ws.launch_ws(a, w_t, bias, residual, out, act,
                                                      config or gemm_ws.ws_configs()[0])
            return out
        if form == "tma":
            LAST_COMPILED["gemm"] = _launch_tma(a, w_t, bias, residual, out, m, n, k, act, config)
            return out
    return _launch(a, w_t, bias, residual, out, m, n, k, 0, (1, 1, 1, 1, 1), act, config)


@torch.library.custom_op("convfirst::matmul_bias_act", mutates_args=())
def matmul_bias_act_op(a: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor, act: str = "none",
                       residual: torch.Tensor | None = None) -> torch.Tensor:
    """``act(a @ w_t + bias) [+ residual]`` in one kernel: a [M, K], w_t [K, N] (both bf16 or fp16), bias [N]."""
    check_matmul_inputs(a, w_t, bias, act, residual)
    return launch_matmul(a, w_t, bias, act, residual)


@matmul_bias_act_op.register_fake
def _(a, w_t, bias, act="none", residual=None):
    check_matmul_inputs(a, w_t, bias, act, residual)
    return a.new_empty((a.shape[0], w_t.shape[1]))


def matmul_bias_act(a: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor, act: str = "none",
                    residual: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """``act(a @ w_t + bias) [+ residual]``, one launch; through the custom op while ``torch.compile`` traces.

    ``a`` [M, K] and ``w_t`` [K, N] contiguous, bf16 or fp16, ``bias`` [N] in any float dtype, ``act`` in
    ``ACTIVATIONS``, ``residual`` [M, N] like the output or None. Returns a new [M, N] tensor. ``config`` fixes
    the tile (tests, comparisons); by default it is autotuned per (M, N, K) on the GPU."""
    if tracing(a) and config is None:
        return matmul_bias_act_op(a, w_t, bias, act, residual)
    check_matmul_inputs(a, w_t, bias, act, residual)
    return launch_matmul(a, w_t, bias, act, residual, config)


def check_patchify_inputs(x, w_t, bias, patch) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise KernelInputError(f"patchify_conv: x must be an NCHW-shaped 4-d tensor, got "
                               f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise KernelInputError("patchify_conv: x must be a dense channels_last (NHWC in memory) tensor; convert "
                               "with x.contiguous(memory_format=torch.channels_last)")
    if not isinstance(patch, int) or patch < 1:
        raise KernelInputError(f"patchify_conv: patch={patch!r} must be a positive int (kernel size == stride)")
    _, c, h, w = x.shape
    if h % patch or w % patch:
        raise KernelInputError(f"patchify_conv: H={h} and W={w} must be multiples of the patch size {patch}")
    _check_common("patchify_conv", x, w_t, bias, patch * patch * c, "none")


def launch_patchify(x, w_t, bias, patch, config=None, out=None) -> torch.Tensor:
    """Launch into ``out`` (a new channels_last image when None)."""
    n, c, h, w = x.shape
    ho, wo = h // patch, w // patch
    cout = w_t.shape[1]
    if out is None:
        out = torch.empty((n, cout, ho, wo), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    return _launch(x, w_t, bias, None, out, n * ho * wo, cout, patch * patch * c, patch, (h, w, ho, wo, c),
                   "none", config)


@torch.library.custom_op("convfirst::patchify_conv", mutates_args=())
def patchify_conv_op(x: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor, patch: int) -> torch.Tensor:
    """Conv with kernel == stride == ``patch``, no padding, + bias, on a channels_last image, as one GEMM."""
    check_patchify_inputs(x, w_t, bias, patch)
    return launch_patchify(x, w_t, bias, patch)


@patchify_conv_op.register_fake
def _(x, w_t, bias, patch):
    check_patchify_inputs(x, w_t, bias, patch)
    n, _, h, w = x.shape
    return x.new_empty((n, w_t.shape[1], h // patch, w // patch)).contiguous(memory_format=torch.channels_last)


def patchify_weight(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight [out, in, k, k] as the [k*k*in, out] matrix the patch rows multiply, (kh, kw, c) order."""
    return weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0]).contiguous()


def patchify_conv(x: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor, patch: int,
                  config: dict | None = None) -> torch.Tensor:
    """``conv2d(x, weight, bias, stride=patch)`` for a ``patch`` x ``patch`` kernel, on a channels_last image.

    ``w_t`` is :func:`patchify_weight` of the conv weight, in x's dtype. The patches are read in place (no
    gathered copy of the input) and the bias is added before the one store. Returns a channels_last tensor."""
    if tracing(x) and config is None:
        return patchify_conv_op(x, w_t, bias, patch)
    check_patchify_inputs(x, w_t, bias, patch)
    return launch_patchify(x, w_t, bias, patch, config)
