"""The blocks as an unfused sequence of our own kernels: our grouped conv and matmuls for the 1x1 layers.

This is the "unfused-triton" line of the benchmark: same arithmetic as the fused kernels, but every layer
reads its input from and writes its output to DRAM, including the E*C-wide hidden activation. It isolates
what fusion buys from what a better grouped conv buys.

The 1x1 layers run either as our GEMM with the bias, SiLU and residual in its epilogue (``gemm="triton"``,
:mod:`convfirst.kernels.gemm`: three launches per block) or as cuBLAS ``addmm`` followed by PyTorch's SiLU
and add kernels (``gemm="cublas"``: five launches, the hidden activation read and written once more by SiLU).

``gemm="pair"`` (ConvFirst blocks only; MBConv blocks take it as ``"triton"``) runs both 1x1 layers as one
launch of the pair kernel (:mod:`convfirst.kernels.pair_ws`, the hidden activation kept on chip) where it
runs and was timed faster at the shape's first call, else as ``"triton"``. It is no longer an unfused sequence:
the block benchmark's "unfused-triton" line keeps ``"triton"``; the models' sequence blocks
(:class:`~convfirst.kernels.modules.SequenceConvFirstBlock`) run ``SEQUENCE_GEMM``.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from . import pair_ws
from ._common import KernelInputError, tracing
from .gconv import grouped_conv3x3_gw8
from .gemm import _check_common, check_matmul_inputs, launch_matmul, matmul_bias_act

#: How the 1x1 layers of the unfused sequence run (module docstring).
GEMM_BACKENDS = ("triton", "cublas", "pair")
#: The default backend. Measured on the H100 (kernels/NOTES_gemm.md).
DEFAULT_GEMM = "triton"
#: The backend of the models' sequence blocks; the environment variable CONVFIRST_SEQUENCE_GEMM sets another.
SEQUENCE_GEMM = os.environ.get("CONVFIRST_SEQUENCE_GEMM", "pair")


def _backend(gemm: str | None) -> str:
    gemm = DEFAULT_GEMM if gemm is None else gemm
    if gemm not in GEMM_BACKENDS:
        raise KernelInputError(f"gemm={gemm!r}; expected one of {GEMM_BACKENDS}")
    return gemm


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] channels_last -> the [N*H*W, C] matrix it already is in memory (no copy)."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n * h * w, c)


def _image(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    n, _, h, w = like.shape
    return rows.reshape(n, h, w, rows.shape[1]).permute(0, 3, 1, 2)


def _expand(rows: torch.Tensor, packed: dict[str, torch.Tensor], gemm: str) -> torch.Tensor:
    """silu(rows @ we_t + b_e): the expanding 1x1 layer."""
    if gemm == "triton":
        return matmul_bias_act(rows, packed["we_t"], packed["b_e"], "silu")
    return F.silu(torch.addmm(packed["b_e"].to(rows.dtype), rows, packed["we_t"]))


def _project(rows: torch.Tensor, packed: dict[str, torch.Tensor], residual: torch.Tensor, gemm: str) -> torch.Tensor:
    """rows @ wp_t + b_p + residual: the projecting 1x1 layer and the skip connection."""
    if gemm == "triton":
        return matmul_bias_act(rows, packed["wp_t"], packed["b_p"], "none", residual)
    return torch.addmm(packed["b_p"].to(rows.dtype), rows, packed["wp_t"]).add_(residual)


def check_pair_inputs(y, we_t, b_e, wp_t, b_p, residual) -> None:
    """The checks of two :func:`~convfirst.kernels.gemm.matmul_bias_act` calls, for the pair as one op."""
    check_matmul_inputs(y, we_t, b_e, "silu", None)
    _check_common("expand_project", y, wp_t, b_p, we_t.shape[1], "none")
    if wp_t.shape[1] != y.shape[1]:
        raise KernelInputError(f"expand_project: the projecting weight gives {wp_t.shape[1]} channels, the input "
                               f"has {y.shape[1]}; the residual add needs them equal")
    want = tuple(y.shape)
    if tuple(residual.shape) != want or not residual.is_contiguous() or residual.dtype != y.dtype \
            or residual.device != y.device:
        raise KernelInputError(f"expand_project: residual must be a contiguous {y.dtype} {list(want)} matrix on "
                               f"{y.device}, got {residual.dtype} {tuple(residual.shape)} on {residual.device}")


def _checked_pair(y, we_t, b_e, wp_t, b_p, residual) -> torch.Tensor:
    """Checked inputs, then the pair kernel or, as its fallback, the two epilogue-fused GEMMs."""
    check_pair_inputs(y, we_t, b_e, wp_t, b_p, residual)

    def two_gemms():
        return launch_matmul(launch_matmul(y, we_t, b_e, "silu"), wp_t, b_p, "none", residual)
    return pair_ws.expand_project(y, we_t, b_e, wp_t, b_p, residual, two_gemms)


@torch.library.custom_op("convfirst::expand_project", mutates_args=())
def expand_project_op(y: torch.Tensor, we_t: torch.Tensor, b_e: torch.Tensor, wp_t: torch.Tensor,
                      b_p: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``silu(y @ we_t + b_e) @ wp_t + b_p + residual``: the pair kernel or the two GEMMs (:func:`expand_project`)."""
    return _checked_pair(y, we_t, b_e, wp_t, b_p, residual)


@expand_project_op.register_fake
def _(y, we_t, b_e, wp_t, b_p, residual):
    check_pair_inputs(y, we_t, b_e, wp_t, b_p, residual)
    return torch.empty_like(y)


def expand_project(y, we_t, b_e, wp_t, b_p, residual) -> torch.Tensor:
    """Both 1x1 layers of a ConvFirst block and its residual: ``y`` [M, C] (the grouped conv's output as rows),
    ``we_t`` [C, E*C], ``wp_t`` [E*C, C], ``residual`` [M, C]; the pair kernel where it runs and was faster at
    this shape, else two epilogue-fused GEMMs. Through the custom op while ``torch.compile`` traces."""
    if tracing(y):
        return expand_project_op(y, we_t, b_e, wp_t, b_p, residual)
    return _checked_pair(y, we_t, b_e, wp_t, b_p, residual)


def convfirst_block_unfused(x: torch.Tensor, packed: dict[str, torch.Tensor], gemm: str | None = None) -> torch.Tensor:
    """gconv (ours) -> 1x1 expand + SiLU -> 1x1 project + residual, with packed weights; ``gemm`` in
    ``GEMM_BACKENDS`` (default ``DEFAULT_GEMM``)."""
    gemm = _backend(gemm)
    g = grouped_conv3x3_gw8(x, packed["w_taps"], packed["b_g"])
    if gemm == "pair":
        out = expand_project(_rows(g), packed["we_t"], packed["b_e"], packed["wp_t"], packed["b_p"], _rows(x))
        return _image(out, x)
    h = _expand(_rows(g), packed, gemm)
    return _image(_project(h, packed, _rows(x), gemm), x)


def mbconv_block_unfused(x: torch.Tensor, packed: dict[str, torch.Tensor], gemm: str | None = None) -> torch.Tensor:
    """1x1 expand + SiLU -> gconv + SiLU (ours) -> 1x1 project + residual; ``gemm`` as above ("pair" runs as
    "triton": the MBConv block's 1x1 layers are not adjacent)."""
    gemm = _backend(gemm)
    gemm = "triton" if gemm == "pair" else gemm
    h = _expand(_rows(x), packed, gemm)
    g = grouped_conv3x3_gw8(_image(h, x), packed["w_taps"], packed["b_g"], True)
    return _image(_project(_rows(g), packed, _rows(x), gemm), x)

