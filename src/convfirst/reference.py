"""Plain-PyTorch reference forwards of the *folded* (inference) blocks.

These functions define what the fused kernels must compute. They take NCHW-shaped tensors
(any memory format) and a dict of folded parameters (BatchNorm already merged into conv weights,
see :func:`convfirst.blocks.fold_bn`) and compute in the dtype of their inputs; tests call them on
float32/float64 upcasts to get the reference.

Parameter names (C = block channels, E = expansion, g = group width, k = kernel size):

ConvFirst:  w_g [C, g, k, k], b_g [C]        grouped kxk conv, groups = C // g (no activation)
            w_e [E*C, C],     b_e [E*C]      1x1 expand, then SiLU
            w_p [C, E*C],     b_p [C]        1x1 project, then + x
MBConv:     w_e [E*C, C],     b_e [E*C]      1x1 expand, then SiLU
            w_g [E*C, g, k, k], b_g [E*C]    grouped kxk conv on E*C channels, then SiLU
            w_p [C, E*C],     b_p [C]        1x1 project, then + x
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CONVFIRST_PARAM_NAMES = ("w_g", "b_g", "w_e", "b_e", "w_p", "b_p")
MBCONV_PARAM_NAMES = ("w_e", "b_e", "w_g", "b_g", "w_p", "b_p")


def _pointwise(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1x1 conv as a matmul over the channel axis of an NCHW tensor."""
    return F.conv2d(x, w[:, :, None, None], b)


def _grouped(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    channels, group_width, k, _ = w.shape
    return F.conv2d(x, w, b, padding=k // 2, groups=channels // group_width)


def convfirst_folded_forward(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """ConvFirst block, inference form: gconv+bias -> 1x1 expand+bias -> SiLU -> 1x1 project+bias -> +x."""
    h = _grouped(x, p["w_g"], p["b_g"])
    h = F.silu(_pointwise(h, p["w_e"], p["b_e"]))
    return _pointwise(h, p["w_p"], p["b_p"]) + x


def mbconv_folded_forward(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """MBConv (gw8, no SE) block, inference form: expand+SiLU -> gconv+SiLU -> project -> +x."""
    h = F.silu(_pointwise(x, p["w_e"], p["b_e"]))
    h = F.silu(_grouped(h, p["w_g"], p["b_g"]))
    return _pointwise(h, p["w_p"], p["b_p"]) + x


def random_folded_params(block: str, channels: int, expansion: int = 4, group_width: int = 8,
                         kernel_size: int = 3, dtype=torch.float32, device="cpu",
                         generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Random folded parameters with variance-preserving scales (so activations stay O(1))."""
    c, e, g, k = channels, expansion * channels, group_width, kernel_size

    def rnd(*shape, fan_in):
        t = torch.randn(*shape, generator=generator, dtype=torch.float32) / fan_in ** 0.5
        return t.to(device=device, dtype=dtype)

    def bias(n):
        return (0.1 * torch.randn(n, generator=generator)).to(device=device, dtype=dtype)

    if block == "convfirst":
        return {"w_g": rnd(c, g, k, k, fan_in=g * k * k), "b_g": bias(c),
                "w_e": rnd(e, c, fan_in=c), "b_e": bias(e),
                "w_p": rnd(c, e, fan_in=e), "b_p": bias(c)}
    if block == "mbconv":
        return {"w_e": rnd(e, c, fan_in=c), "b_e": bias(e),
                "w_g": rnd(e, g, k, k, fan_in=g * k * k), "b_g": bias(e),
                "w_p": rnd(c, e, fan_in=e), "b_p": bias(c)}
    raise ValueError(f"block must be 'convfirst' or 'mbconv', got {block!r}")
