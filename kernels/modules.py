"""Fused inference modules built from trained blocks, and ``fuse(model)`` that swaps them in.

Usage::

    model = convfirst.models.create("convfirstnet_t").cuda().eval()
    fused = fuse(model, dtype=torch.bfloat16)               # a copy; every ConvFirst/MBConv block fused
    x = torch.randn(8, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", torch.bfloat16):
        y = fused(x)

A fused module holds the folded (BatchNorm merged) weights packed for the kernel, so it is frozen:
it reflects the block's weights at the moment it was built, and it refuses to run in training mode.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn

from . import unfused
from ._common import ACTIVATION_DTYPES, KernelInputError, check_activation, interpreting, pack_block_params
from .convfirst_fused import run_convfirst_fused
from .gemm import patchify_conv, patchify_weight
from .mbconv_fused import run_mbconv_fused
from .unfused import convfirst_block_unfused, mbconv_block_unfused

_PACKED_NAMES = ("w_taps", "b_g", "we_t", "b_e", "wp_t", "b_p")


class _PackedBlock(nn.Module):
    """A ConvFirst/MBConv block in inference form: folded weights packed for this study's kernels."""

    block_type = ""

    def __init__(self, folded: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        packed = pack_block_params(self.block_type, folded, dtype)
        for name in _PACKED_NAMES:
            self.register_buffer(name, packed[name])
        self.channels = packed["we_t"].shape[0]
        self.expansion = packed["we_t"].shape[1] // self.channels
        self.group_width, self.kernel_size = 8, 3
        self.eval()  # inference-only

    @classmethod
    def from_block(cls, block: nn.Module, dtype: torch.dtype | None = None) -> "_PackedBlock":
        """Build from a trained (unfused) block in eval mode; ``dtype`` defaults to the block's, or bf16 if fp32."""
        if getattr(block, "block_type", None) != cls.block_type:
            raise KernelInputError(f"{cls.__name__}.from_block: expected a {cls.block_type} block, got "
                                   f"{type(block).__name__}")
        if block.training:
            raise RuntimeError(f"{cls.__name__}.from_block: the block is in training mode; fused kernels are "
                               f"inference-only (BatchNorm is folded with its running statistics): call "
                               f"block.eval() first")
        if getattr(block, "group_width", 8) != 8 or getattr(block, "kernel_size", 3) != 3:
            raise KernelInputError(f"{cls.__name__}: the kernels implement a 3x3 grouped conv of group width 8; "
                                   f"this block has kernel_size={block.kernel_size}, "
                                   f"group_width={block.group_width}")
        if dtype is None:
            p = next(block.parameters())
            dtype = p.dtype if p.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        return cls(block.folded(), dtype)

    def _weights(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        w = {name: getattr(self, name) for name in _PACKED_NAMES}
        if w["we_t"].dtype != x.dtype:  # e.g. a bf16 module fed fp16 activations: cast the (small) weights
            for name in ("w_taps", "we_t", "wp_t"):
                w[name] = w[name].to(x.dtype)
        return w

    def _check_mode(self, x: torch.Tensor) -> None:
        if self.training:
            raise RuntimeError(f"{type(self).__name__} is inference-only (its BatchNorm is folded); call "
                               f".eval() on the model")
        check_activation(x)
        if x.shape[1] != self.channels:
            raise KernelInputError(f"x: has {x.shape[1]} channels but this block has {self.channels}")

    def extra_repr(self) -> str:
        return f"channels={self.channels}, expansion={self.expansion}, group_width=8, kernel_size=3"


class _FusedBlock(_PackedBlock):
    """The whole block in one kernel launch."""


class _SequenceBlock(_PackedBlock):
    """The block as a sequence of this study's unfused kernels: Triton grouped conv, epilogue-fused 1x1 matmuls.

    Used where the planner measured this path faster than the fused kernel (late stages, large C)."""


class FusedConvFirstBlock(_FusedBlock):
    """One-kernel ConvFirst block (inference): same output as ``ConvFirstBlock.eval()``."""

    block_type = "convfirst"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_mode(x)
        w = self._weights(x)
        return run_convfirst_fused(x, w["w_taps"], w["b_g"], w["we_t"], w["b_e"], w["wp_t"], w["b_p"])


class FusedMBConvBlock(_FusedBlock):
    """One-kernel MBConv (gw8, no SE) block (inference): same output as ``MBConvBlock.eval()``."""

    block_type = "mbconv"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_mode(x)
        w = self._weights(x)
        return run_mbconv_fused(x, w["we_t"], w["b_e"], w["w_taps"], w["b_g"], w["wp_t"], w["b_p"])


class SequenceConvFirstBlock(_SequenceBlock):
    """ConvFirst block as our gconv kernel + our 1x1 layers: by default (``unfused.SEQUENCE_GEMM``, "pair") both
    1x1 layers as one pair-kernel launch where that was faster at the shape, else two epilogue-fused matmuls
    (the block benchmark's "unfused-triton" path)."""

    block_type = "convfirst"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_mode(x)
        return convfirst_block_unfused(x, self._weights(x), gemm=unfused.SEQUENCE_GEMM)


class SequenceMBConvBlock(_SequenceBlock):
    """MBConv block as our 1x1 matmuls + our gconv kernel (the benchmark's "unfused-triton" path)."""

    block_type = "mbconv"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_mode(x)
        return mbconv_block_unfused(x, self._weights(x))


FUSED_BLOCKS = {"convfirst": FusedConvFirstBlock, "mbconv": FusedMBConvBlock}
SEQUENCE_BLOCKS = {"convfirst": SequenceConvFirstBlock, "mbconv": SequenceMBConvBlock}


def fuse(model: nn.Module, dtype: torch.dtype | None = None, inplace: bool = False,
         planner: Callable | None = None, input_size: tuple[int, int, int] | None = None,
         fold_norms: bool = True) -> nn.Module:
    """Replace every ConvFirst/MBConv block of ``model`` (in eval mode) by its fused module.

    Returns a model that gives the same output (to bf16/fp16 rounding); the original is left untouched
    unless ``inplace=True``. ``dtype`` is the fused weights' dtype (default: the block's, or bf16 for fp32
    blocks). ``planner``: optional ``planner(block, input_shape)`` deciding per block: ``True`` or
    ``"fused"`` fuses it, ``"unfused-triton"`` replaces it by our kernel sequence (Triton grouped conv + our
    1x1 layers, :class:`SequenceConvFirstBlock`), anything else (``False``, ``"eager"``,
    ``"compile-default"``...) keeps its PyTorch layers (e.g. :func:`convfirst.planner.block_planner`);
    ``input_shape`` is the block's input (1, C, H, W) found by one forward pass of a random
    ``(1, *input_size)`` input when ``input_size`` (C, H, W) is given, else None. By default every block is
    fused. ``fold_norms``: also fold the BatchNorm after each conv
    outside the blocks (stem, downsampling layers) into that conv (:func:`fold_conv_bn`). Raises
    ``RuntimeError`` in training mode (inference-only kernels).
    """
    if model.training:
        raise RuntimeError("fuse(model): the model is in training mode; fused kernels are inference-only "
                           "(BatchNorm is folded with its running statistics): call model.eval() first")
    target = model if inplace else copy.deepcopy(model)
    shapes = _block_input_shapes(target, input_size) if planner is not None and input_size else {}

    def swap(parent: nn.Module, prefix: str) -> None:
        for name, child in parent.named_children():
            path = f"{prefix}.{name}" if prefix else name
            kind = getattr(child, "block_type", None)
            if kind in FUSED_BLOCKS and not isinstance(child, _PackedBlock):
                choice = True if planner is None else planner(child, shapes.get(path))
                if choice is True or choice == "fused":
                    setattr(parent, name, FUSED_BLOCKS[kind].from_block(child, dtype))
                elif choice == "unfused-triton":
                    setattr(parent, name, SEQUENCE_BLOCKS[kind].from_block(child, dtype))
            else:
                swap(child, path)

    swap(target, "")
    if fold_norms:
        fold_conv_bn(target)
    return target


class PatchifyConv2d(nn.Conv2d):
    """A conv whose kernel equals its stride (no padding, one group), computed as one matrix product.

    On a bf16/fp16 channels_last input on the GPU (or in the Triton interpreter) it runs
    :func:`convfirst.kernels.gemm.patchify_conv`: the non-overlapping k x k patches are read in place as the
    rows of a GEMM whose epilogue adds the bias, one launch. Elsewhere (fp32, CPU) the patches are gathered
    into rows (one copy) and multiplied by the weight viewed as [out, k*k*C_in] (``addmm``). Same output as the
    ``nn.Conv2d`` it replaces (to rounding); it stays a Conv2d, so counting and profiling see the layer it
    computes. Why (H100, batch 256, profiles in chapter 6): cuDNN's NHWC conv of the 3-channel stem ran at 15%
    of its floor, and a conv with a bias ran as cuDNN's conv plus a separate broadcast add."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "PatchifyConv2d":
        k = conv.kernel_size
        if not (k == conv.stride and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1)
                and conv.groups == 1 and conv.padding_mode == "zeros"):
            raise ValueError(f"PatchifyConv2d: needs kernel == stride, no padding, one group; got {conv}")
        new = cls(conv.in_channels, conv.out_channels, k, stride=k, bias=conv.bias is not None,
                  device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        return new.train(conv.training)

    def _kernel_weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight as the kernel's [k*k*C_in, out] matrix in ``dtype``, and the bias. The packed copy is kept
        and rebuilt when the weight or bias is replaced or changed in place (their version counters), or another
        device or dtype is asked for; an edit through ``.data`` bypasses the counters: call
        :meth:`clear_kernel_cache` after one."""
        if torch.compiler.is_compiling():  # traced: plain tensor ops, no cache
            bias = self.bias if self.bias is not None else self.weight.new_zeros(self.out_channels)
            return patchify_weight(self.weight).to(dtype), bias

        def version(t):
            return None if t is None or torch.is_inference(t) else t._version

        key = (id(self.weight), version(self.weight), id(self.bias), version(self.bias), self.weight.device, dtype)
        cache = self.__dict__.get("_kernel_cache")
        if cache is None or cache[0] != key:
            with torch.no_grad():
                w_t = patchify_weight(self.weight.detach()).to(dtype)
                bias = (self.bias.detach() if self.bias is not None
                        else torch.zeros(self.out_channels, device=self.weight.device, dtype=dtype))
            cache = (key, w_t, bias)
            self.__dict__["_kernel_cache"] = cache
        return cache[1], cache[2]

    def clear_kernel_cache(self) -> None:
        """Forget the packed weight (it is rebuilt on the next call)."""
        self.__dict__.pop("_kernel_cache", None)

    def __getstate__(self):  # copies and pickles do not carry the packed weight (its key names this module's tensors)
        state = dict(super().__getstate__())  # a copy: the default returns the instance's own __dict__
        state.pop("_kernel_cache", None)
        return state

    def _uses_kernel(self, x: torch.Tensor) -> bool:
        """The kernel path: half-precision channels_last input on the GPU (or in the interpreter), whole patches,
        and no autograd (the kernel has no backward; with gradients on, the differentiable ``addmm`` path runs)."""
        kh, kw = self.kernel_size
        grads = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        return (kh == kw and not grads and x.dtype in ACTIVATION_DTYPES and x.shape[2] % kh == 0
                and x.shape[3] % kw == 0 and x.is_contiguous(memory_format=torch.channels_last)
                and (x.device.type == "cuda" or (x.device.type == "cpu" and interpreting())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        kh, kw = self.kernel_size
        if h % kh or w % kw:  # a partial patch at the border is dropped by the conv; keep its exact semantics
            return super().forward(x)
        if self._uses_kernel(x):
            w_t, bias = self._kernel_weights(x.dtype)
            return patchify_conv(x, w_t, bias, kh)
        ho, wo = h // kh, w // kw
        # NHWC view -> [N, Ho, kh, Wo, kw, C] -> rows of one patch each, in (kh, kw, C) order
        patches = x.permute(0, 2, 3, 1).reshape(n, ho, kh, wo, kw, c).permute(0, 1, 3, 2, 4, 5)
        rows = patches.reshape(n * ho * wo, kh * kw * c)
        weight = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1)
        out = rows @ weight.t() if self.bias is None else torch.addmm(self.bias, rows, weight.t())
        return out.view(n, ho, wo, self.out_channels).permute(0, 3, 1, 2)  # channels_last, no copy


def fold_conv_bn(model: nn.Module, patchify_max_in_channels: int | None = None) -> int:
    """Fold every ``nn.Sequential(Conv2d, BatchNorm2d)`` of ``model`` (eval mode, in place) into the conv.

    The BatchNorm becomes an ``nn.Identity`` (module names stay, so profiles still map) and the conv gets the
    folded weight and bias; a patchify conv (kernel == stride > 1, no padding, one group) becomes a
    :class:`PatchifyConv2d` (only up to ``patchify_max_in_channels`` input channels when that is set). These are
    the stem and the downsampling layers of the families; in the blocks BatchNorm is already folded. Returns
    how many were folded. The folded convs' parameters do not require gradients (an inference form, like the
    fused blocks).

    Measured on the H100 (batch 256, bf16; ``data/gemm_h100.csv``): as a :class:`PatchifyConv2d` (our kernel,
    bias in the epilogue) ConvFirstNet-T's stem takes 0.097 ms (its 12-value patch rows read as padded 8-byte
    runs; 0.125 value by value) and its downsampling convs 0.114, 0.077 and 0.065 ms; as cuDNN conv + bias 0.727,
    0.293, 0.118 and 0.087 ms, as cuDNN conv + BatchNorm (not folded) 0.653, 0.269, 0.102 and 0.087 ms."""
    from convfirst.blocks import fold_bn

    folded = 0
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential) or len(module) < 2:
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if not (type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and conv.out_channels == bn.num_features):
                continue
            w, b = fold_bn(conv.weight, conv.bias, bn)
            patchify = (conv.kernel_size == conv.stride and conv.kernel_size != (1, 1) and conv.padding == (0, 0)
                        and conv.dilation == (1, 1) and conv.groups == 1 and (patchify_max_in_channels is None
                                                  or conv.in_channels <= patchify_max_in_channels))
            new = (PatchifyConv2d if patchify else nn.Conv2d)(
                conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation, groups=conv.groups, bias=True, device=conv.weight.device,
                dtype=conv.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(w)
                new.bias.copy_(b)
            new.requires_grad_(False)  # inference form, like the fused blocks' packed buffers
            module[i] = new.eval()
            module[i + 1] = nn.Identity()
            folded += 1
    return folded


def _block_input_shapes(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, tuple[int, ...]]:
    """Input shape of every fusable block, by module path, from one forward pass at batch 1."""
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []

    def recorder(path):
        def hook(module, args):  # returns None: the block's input is left as it is
            shapes.setdefault(path, tuple(args[0].shape))
        return hook

    for path, module in model.named_modules():
        if getattr(module, "block_type", None) in FUSED_BLOCKS:
            hooks.append(module.register_forward_pre_hook(recorder(path)))
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.randn(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def count_fused_blocks(model: nn.Module) -> int:
    """Blocks of ``model`` that run as one fused kernel."""
    return sum(isinstance(m, _FusedBlock) for m in model.modules())


def count_sequence_blocks(model: nn.Module) -> int:
    """Blocks of ``model`` that run as our unfused kernel sequence (Triton gconv + 1x1 matmuls)."""
    return sum(isinstance(m, _SequenceBlock) for m in model.modules())
