"""The residual blocks of the study as plain ``nn.Module``s, and BatchNorm folding for inference.

Three blocks, all stride 1 with an identity shortcut (downsampling is a separate layer, see
:mod:`convfirst.models`):

- :class:`ConvFirstBlock`: grouped kxk conv -> BN -> 1x1 expand -> BN -> SiLU -> 1x1 project -> BN -> + x.
  The spatial conv comes *first*, on the narrow C channels, with no activation after it.
- :class:`MBConvBlock`: 1x1 expand -> BN -> SiLU -> grouped kxk conv on E*C -> BN -> SiLU -> 1x1 project
  -> BN -> + x (group width 8 instead of depthwise, no squeeze-excite).
- :class:`ConvNeXtBlock`: depthwise 7x7 -> LayerNorm -> 1x1 expand -> GELU -> 1x1 project -> layer scale
  -> + x, the baseline block of ConvNeXt.

``drop_path`` (stochastic depth, training only) drops the residual branch per sample; it is the identity
in eval mode and in the folded form.

Every block takes NCHW-shaped tensors in either memory format (``torch.channels_last`` is what the GPU
kernels want). ConvFirst and MBConv have :meth:`folded`, the inference form with each BatchNorm merged into
the conv before it; :mod:`convfirst.reference` defines what that folded form computes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from .params import ParameterError
from .reference import CONVFIRST_PARAM_NAMES, MBCONV_PARAM_NAMES

__all__ = ["ConvFirstBlock", "MBConvBlock", "ConvNeXtBlock", "LayerNorm2d", "fold_bn",
           "check_block_args", "make_block", "BLOCK_TYPES", "BlockArgumentError"]


class BlockArgumentError(ParameterError):
    """A block was asked for a shape it cannot have (channels, group width, kernel size, stride)."""


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BlockArgumentError(f"{name}={value!r} must be a positive integer")


def check_block_args(channels: int, expansion: int, group_width: int | None, kernel_size: int,
                     stride: int = 1, grouped_channels: int | None = None) -> None:
    """Raise :class:`BlockArgumentError` naming the bad parameter and what is allowed.

    ``grouped_channels`` is the width the grouped conv runs on (C for ConvFirst, E*C for MBConv);
    it must be a multiple of ``group_width``.
    """
    _check_positive("channels", channels)
    _check_positive("expansion", expansion)
    _check_positive("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise BlockArgumentError(f"kernel_size={kernel_size} must be odd (1, 3, 5, 7, ...) so that "
                                 f"'same' padding keeps the spatial size")
    if stride != 1:
        raise BlockArgumentError(f"stride={stride!r} is not supported: blocks are stride 1 (allowed: 1); "
                                 f"downsampling is a separate layer between stages")
    if group_width is not None:
        _check_positive("group width (group_width)", group_width)
        width = channels if grouped_channels is None else grouped_channels
        if width % group_width:
            raise BlockArgumentError(
                f"group width {group_width} does not divide the {width} channels of the grouped conv; "
                f"allowed: channels a multiple of the group width (e.g. channels={channels} with group width "
                f"in {[g for g in (1, 2, 4, 8, 16, 32) if width % g == 0]})")


@torch.no_grad()
def fold_bn(conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
            bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge an inference-mode BatchNorm into the conv before it.

    ``bn(conv(x, W, b)) == conv(x, W', b')`` with ``s = gamma / sqrt(running_var + eps)``,
    ``W' = W * s`` (per output channel) and ``b' = (b - running_mean) * s + beta``.
    Computed in float64 and returned as float32 on the weight's device.
    """
    if conv_weight.shape[0] != bn.num_features:
        raise ValueError(f"fold_bn: conv has {conv_weight.shape[0]} output channels but the BatchNorm has "
                         f"{bn.num_features} features")
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("fold_bn: the BatchNorm tracks no running statistics, so it has no inference form")
    w = conv_weight.double()
    var, mean = bn.running_var.double(), bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    b = conv_bias.double() if conv_bias is not None else torch.zeros_like(mean)
    w_folded = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
    b_folded = (b - mean) * scale + beta
    return w_folded.float(), b_folded.float()


def _conv_bn(in_ch: int, out_ch: int, kernel_size: int = 1, groups: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(out_ch)


def _pointwise_matrix(weight: torch.Tensor) -> torch.Tensor:
    """[out, in, 1, 1] conv weight -> [out, in] matrix."""
    return weight.reshape(weight.shape[0], weight.shape[1])


class ConvFirstBlock(nn.Module):
    """ConvFirst residual block: the spatial (grouped) conv runs first, on the narrow C channels.

    ``x -> conv_g (kxk, groups = C/group_width) -> bn_g -> conv_e (1x1, C->E*C) -> bn_e -> SiLU
    -> conv_p (1x1, E*C->C) -> bn_p -> + x``. No activation after the grouped conv.
    """

    block_type = "convfirst"

    def __init__(self, channels: int, expansion: int = 4, group_width: int = 8, kernel_size: int = 3,
                 stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        check_block_args(channels, expansion, group_width, kernel_size, stride)
        self.channels, self.expansion = channels, expansion
        self.group_width, self.kernel_size = group_width, kernel_size
        hidden = expansion * channels
        self.conv_g, self.bn_g = _conv_bn(channels, channels, kernel_size, groups=channels // group_width)
        self.conv_e, self.bn_e = _conv_bn(channels, hidden)
        self.act = nn.SiLU()
        self.conv_p, self.bn_p = _conv_bn(hidden, channels)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.bn_g(self.conv_g(x))
        x = self.act(self.bn_e(self.conv_e(x)))
        x = self.bn_p(self.conv_p(x))
        return self.drop_path(x) + shortcut

    @torch.no_grad()
    def folded(self) -> dict[str, torch.Tensor]:
        """Folded fp32 parameters named and shaped as in :mod:`convfirst.reference` (w_g, b_g, w_e, ...)."""
        w_g, b_g = fold_bn(self.conv_g.weight, None, self.bn_g)
        w_e, b_e = fold_bn(self.conv_e.weight, None, self.bn_e)
        w_p, b_p = fold_bn(self.conv_p.weight, None, self.bn_p)
        params = {"w_g": w_g, "b_g": b_g, "w_e": _pointwise_matrix(w_e), "b_e": b_e,
                  "w_p": _pointwise_matrix(w_p), "b_p": b_p}
        return {k: params[k].contiguous() for k in CONVFIRST_PARAM_NAMES}

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, expansion={self.expansion}, group_width={self.group_width}, "
                f"kernel_size={self.kernel_size}")


class MBConvBlock(nn.Module):
    """Inverted-residual (MBConv) block with a group-width-8 spatial conv and no squeeze-excite.

    ``x -> conv_e (1x1, C->E*C) -> bn_e -> SiLU -> conv_g (kxk on E*C, groups = E*C/group_width) -> bn_g
    -> SiLU -> conv_p (1x1, E*C->C) -> bn_p -> + x``.
    """

    block_type = "mbconv"

    def __init__(self, channels: int, expansion: int = 4, group_width: int = 8, kernel_size: int = 3,
                 stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        _check_positive("expansion", expansion)
        check_block_args(channels, expansion, group_width, kernel_size, stride,
                         grouped_channels=expansion * channels)
        self.channels, self.expansion = channels, expansion
        self.group_width, self.kernel_size = group_width, kernel_size
        hidden = expansion * channels
        self.conv_e, self.bn_e = _conv_bn(channels, hidden)
        self.act_e = nn.SiLU()
        self.conv_g, self.bn_g = _conv_bn(hidden, hidden, kernel_size, groups=hidden // group_width)
        self.act_g = nn.SiLU()
        self.conv_p, self.bn_p = _conv_bn(hidden, channels)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act_e(self.bn_e(self.conv_e(x)))
        x = self.act_g(self.bn_g(self.conv_g(x)))
        x = self.bn_p(self.conv_p(x))
        return self.drop_path(x) + shortcut

    @torch.no_grad()
    def folded(self) -> dict[str, torch.Tensor]:
        """Folded fp32 parameters named and shaped as in :mod:`convfirst.reference` (w_e, b_e, w_g, ...)."""
        w_e, b_e = fold_bn(self.conv_e.weight, None, self.bn_e)
        w_g, b_g = fold_bn(self.conv_g.weight, None, self.bn_g)
        w_p, b_p = fold_bn(self.conv_p.weight, None, self.bn_p)
        params = {"w_e": _pointwise_matrix(w_e), "b_e": b_e, "w_g": w_g, "b_g": b_g,
                  "w_p": _pointwise_matrix(w_p), "b_p": b_p}
        return {k: params[k].contiguous() for k in MBCONV_PARAM_NAMES}

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, expansion={self.expansion}, group_width={self.group_width}, "
                f"kernel_size={self.kernel_size}")


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor (either memory format)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block (the baseline): ``x -> depthwise kxk -> LayerNorm -> 1x1 expand -> GELU
    -> 1x1 project -> layer scale (gamma) -> + x``. Depthwise means ``group_width == 1``."""

    block_type = "convnext"

    def __init__(self, channels: int, expansion: int = 4, kernel_size: int = 7,
                 layer_scale_init: float | None = 1e-6, stride: int = 1, drop_path: float = 0.0):
        super().__init__()
        check_block_args(channels, expansion, 1, kernel_size, stride)
        self.channels, self.expansion = channels, expansion
        self.group_width, self.kernel_size = 1, kernel_size
        hidden = expansion * channels
        self.conv_dw = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = LayerNorm2d(channels, eps=1e-6)
        self.conv_e = nn.Conv2d(channels, hidden, 1)
        self.act = nn.GELU()
        self.conv_p = nn.Conv2d(hidden, channels, 1)
        self.gamma = (nn.Parameter(layer_scale_init * torch.ones(channels))
                      if layer_scale_init is not None and layer_scale_init > 0 else None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm(self.conv_dw(x))
        x = self.conv_p(self.act(self.conv_e(x)))
        if self.gamma is not None:
            x = x * self.gamma.reshape(1, -1, 1, 1)
        return self.drop_path(x) + shortcut

    def extra_repr(self) -> str:
        return f"channels={self.channels}, expansion={self.expansion}, kernel_size={self.kernel_size}"


#: Block type name -> class; the names used by the model specs and the counting tables.
BLOCK_TYPES: dict[str, type[nn.Module]] = {
    "convfirst": ConvFirstBlock,
    "mbconv": MBConvBlock,
    "convnext": ConvNeXtBlock,
}


def make_block(block: str, channels: int, expansion: int = 4, **kwargs) -> nn.Module:
    """A block by type name ('convfirst', 'mbconv', 'convnext'); a clear error for other names."""
    if block not in BLOCK_TYPES:
        raise BlockArgumentError(f"block={block!r} is not a block type; choose one of {list(BLOCK_TYPES)}")
    return BLOCK_TYPES[block](channels, expansion=expansion, **kwargs)
