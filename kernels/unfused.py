"""The blocks as an unfused sequence of our own kernels: our grouped conv + cuBLAS matmuls for the 1x1 layers.

This is the "unfused-triton" line of the benchmark: same arithmetic as the fused kernels, but every layer
reads its input from and writes its output to DRAM, including the E*C-wide hidden activation. It isolates
what fusion buys from what a better grouped conv buys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .gconv import grouped_conv3x3_gw8


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] channels_last -> the [N*H*W, C] matrix it already is in memory (no copy)."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n * h * w, c)


def _image(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    n, _, h, w = like.shape
    return rows.reshape(n, h, w, rows.shape[1]).permute(0, 3, 1, 2)


def convfirst_block_unfused(x: torch.Tensor, packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """gconv (ours) -> addmm (cuBLAS) -> SiLU -> addmm + residual, with packed weights (biases cast to x.dtype)."""
    g = grouped_conv3x3_gw8(x, packed["w_taps"], packed["b_g"])
    h = F.silu(torch.addmm(packed["b_e"].to(x.dtype), _rows(g), packed["we_t"]))
    out = torch.addmm(packed["b_p"].to(x.dtype), h, packed["wp_t"]).add_(_rows(x))
    return _image(out, x)


def mbconv_block_unfused(x: torch.Tensor, packed: dict[str, torch.Tensor]) -> torch.Tensor:
    """addmm (cuBLAS) -> SiLU -> gconv + SiLU (ours) -> addmm + residual."""
    h = F.silu(torch.addmm(packed["b_e"].to(x.dtype), _rows(x), packed["we_t"]))
    g = grouped_conv3x3_gw8(_image(h, x), packed["w_taps"], packed["b_g"], True)
    out = torch.addmm(packed["b_p"].to(x.dtype), _rows(g), packed["wp_t"]).add_(_rows(x))
    return _image(out, x)

