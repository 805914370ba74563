"""The blocks as an unfused sequence of our own kernels: our grouped conv and matmuls for the 1x1 layers.

This is the "unfused-triton" line of the benchmark: same arithmetic as the fused kernels, but every layer
reads its input from and writes its output to DRAM, including the E*C-wide hidden activation. It isolates
what fusion buys from what a better grouped conv buys.

The 1x1 layers run either as our GEMM with the bias, SiLU and residual in its epilogue (``gemm="triton"``,
:mod:`convfirst.kernels.gemm`: three launches per block) or as cuBLAS ``addmm`` followed by PyTorch's SiLU
and add kernels (``gemm="cublas"``: five launches, the hidden activation read and written once more by SiLU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import KernelInputError
from .gconv import grouped_conv3x3_gw8
from .gemm import matmul_bias_act

#: How the 1x1 layers of the unfused sequence run (module docstring).
GEMM_BACKENDS = ("triton", "cublas")
#: The default backend. Measured on the H100 (kernels/NOTES_gemm.md).
DEFAULT_GEMM = "triton"


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


def convfirst_block_unfused(x: torch.Tensor, packed: dict[str, torch.Tensor], gemm: str | None = None) -> torch.Tensor:
    """gconv (ours) -> 1x1 expand + SiLU -> 1x1 project + residual, with packed weights; ``gemm`` in
    ``GEMM_BACKENDS`` (default ``DEFAULT_GEMM``)."""
    gemm = _backend(gemm)
    g = grouped_conv3x3_gw8(x, packed["w_taps"], packed["b_g"])
    h = _expand(_rows(g), packed, gemm)
    return _image(_project(h, packed, _rows(x), gemm), x)


def mbconv_block_unfused(x: torch.Tensor, packed: dict[str, torch.Tensor], gemm: str | None = None) -> torch.Tensor:
    """1x1 expand + SiLU -> gconv + SiLU (ours) -> 1x1 project + residual; ``gemm`` as above."""
    gemm = _backend(gemm)
    h = _expand(_rows(x), packed, gemm)
    g = grouped_conv3x3_gw8(_image(h, x), packed["w_taps"], packed["b_g"], True)
    return _image(_project(_rows(g), packed, _rows(x), gemm), x)

