"""Fused modules and ``fuse(model)``: same output as the trained blocks, clear errors, torch.compile.

CPU: Triton's interpreter at tiny sizes (conftest.py sets ``TRITON_INTERPRET=1`` without a GPU). GPU: the
``gpu`` tests add torch.compile of a fused model and a full-size family member.
"""
from __future__ import annotations

import copy
import os

if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
import torch.nn as nn

from convfirst.bench_blocks import relative_error
from convfirst.blocks import ConvFirstBlock, ConvNeXtBlock, MBConvBlock
from convfirst.kernels import (FusedConvFirstBlock, FusedMBConvBlock, KernelInputError, count_fused_blocks,
                               count_sequence_blocks, fuse, interpreting)
from convfirst.models import ConvFirstNet

ON_GPU = torch.cuda.is_available() and not interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    """Random conv weights and BatchNorm statistics, so no residual branch is the identity (bn_p starts at 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + 0.5 * torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return module


def _seed() -> int:
    return int.from_bytes(os.urandom(4), "little")


def _input(c, h, w, n=2, dtype=torch.bfloat16):
    x = torch.randn(n, c, h, w, device=DEVICE)
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("cls, fused_cls", [(ConvFirstBlock, FusedConvFirstBlock), (MBConvBlock, FusedMBConvBlock)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_block_equals_trained_block(cls, fused_cls, dtype):
    c = 16 if not ON_GPU else 96
    hw = (5, 7) if not ON_GPU else (28, 28)
    block = _randomize(cls(c), _seed()).eval().to(DEVICE)
    fused = fused_cls.from_block(block, dtype)
    assert fused.we_t.dtype == dtype
    x = _input(c, *hw, dtype=dtype)
    with torch.no_grad():
        # reference: the unfused block in fp32 with the same (dtype-rounded) folded weights
        ref_block = cls(c).to(DEVICE).eval()
        ref_block.load_state_dict(block.state_dict())
        expected = ref_block(x.float())
        got = fused(x)
    assert got.dtype == dtype and got.shape == x.shape
    assert relative_error(got, expected) < {torch.bfloat16: 1.5e-2, torch.float16: 5e-3}[dtype]


def test_from_block_refuses_training_mode_and_wrong_block():
    block = ConvFirstBlock(16)
    with pytest.raises(RuntimeError, match="training mode"):
        FusedConvFirstBlock.from_block(block.train())
    with pytest.raises(KernelInputError, match="expected a mbconv block"):
        FusedMBConvBlock.from_block(block.eval())
    with pytest.raises(KernelInputError, match="group width 8"):
        FusedConvFirstBlock.from_block(ConvFirstBlock(16, group_width=4).eval())


def test_fused_module_refuses_training_mode():
    fused = FusedConvFirstBlock.from_block(ConvFirstBlock(16).eval()).to(DEVICE)
    fused.train()
    with pytest.raises(RuntimeError, match="inference-only"):
        fused(_input(16, 4, 4))


def _tiny_model(block: str) -> ConvFirstNet:
    return ConvFirstNet(widths=(16, 24, 32, 48), depths=(1, 1, 1, 1), block=block, num_classes=10)


@pytest.mark.parametrize("block", ["convfirst", "mbconv"])
def test_fuse_swaps_every_block_and_keeps_the_output(block):
    model = _randomize(_tiny_model(block), _seed()).eval().to(DEVICE)
    fused = fuse(model, dtype=torch.bfloat16)
    assert count_fused_blocks(fused) == 4
    assert count_fused_blocks(model) == 0  # the original is untouched
    assert not any(isinstance(m, (ConvFirstBlock, MBConvBlock)) for m in fused.modules())
    x = torch.randn(2, 3, 64, 64, device=DEVICE)
    with torch.no_grad():
        expected = model.to(torch.bfloat16).float().forward_features(x)  # same bf16-rounded weights, fp32 math
        fused_bf16 = fused.to(torch.bfloat16).to(memory_format=torch.channels_last)
        got = fused_bf16.forward_features(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    # four blocks and three downsamplings in bf16 activations: a looser bound than one block's 1e-2
    assert relative_error(got, expected) < 3e-2


def test_fuse_refuses_training_mode():
    with pytest.raises(RuntimeError, match="training mode"):
        fuse(_tiny_model("convfirst").train())


def test_fuse_leaves_other_blocks_and_honours_the_planner():
    model = nn.Sequential(ConvNeXtBlock(16), ConvFirstBlock(16), ConvFirstBlock(16)).eval()
    seen = []

    def planner(block, shape):
        seen.append(shape)
        return len(seen) == 1  # fuse the first ConvFirst block only

    fused = fuse(model, planner=planner, input_size=(16, 6, 5))
    assert seen == [(1, 16, 6, 5), (1, 16, 6, 5)]
    assert isinstance(fused[0], ConvNeXtBlock)
    assert isinstance(fused[1], FusedConvFirstBlock)
    assert isinstance(fused[2], ConvFirstBlock)


@pytest.mark.parametrize("block", ["convfirst", "mbconv"])
def test_planner_choices_install_fused_sequence_or_pytorch_blocks_with_the_same_output(block):
    """A planner answering 'fused', 'unfused-triton' and 'eager' in turn gets one block of each kind."""
    model = _randomize(_tiny_model(block), _seed()).eval().to(DEVICE)
    answers = iter(["fused", "unfused-triton", "eager", "unfused-triton"])
    mixed = fuse(model, dtype=torch.bfloat16, planner=lambda blk, shape: next(answers))
    kinds = [type(m).__name__ for m in mixed.modules() if m is not mixed and getattr(m, "block_type", "") == block]
    prefix = {"convfirst": "ConvFirst", "mbconv": "MBConv"}[block]
    assert kinds == [f"Fused{prefix}Block", f"Sequence{prefix}Block", f"{prefix}Block", f"Sequence{prefix}Block"]
    assert count_fused_blocks(mixed) == 1 and count_sequence_blocks(mixed) == 2
    x = torch.randn(2, 3, 64, 64, device=DEVICE)
    with torch.no_grad():
        expected = model.to(torch.bfloat16).float().forward_features(x)
        got = mixed.to(torch.bfloat16).to(memory_format=torch.channels_last).forward_features(
            x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    assert relative_error(got, expected) < 3e-2


@pytest.mark.gpu
def test_torch_compile_of_a_fused_model():
    model = _randomize(_tiny_model("convfirst"), _seed()).eval().cuda()
    fused = fuse(model, dtype=torch.bfloat16).to(torch.bfloat16).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 64, 64, device="cuda").to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        eager = fused(x)
        compiled = torch.compile(fused)(x)
    assert relative_error(compiled, eager) < 1e-2


@pytest.mark.gpu
def test_fuse_full_size_family_member():
    from convfirst.models import create

    model = _randomize(create("convfirstnet_n"), _seed()).eval().cuda()
    fused = fuse(model, dtype=torch.bfloat16).to(torch.bfloat16).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 224, 224, device="cuda")
    with torch.no_grad():
        expected = model.to(torch.bfloat16).float().forward_features(x)
        got = fused.forward_features(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    assert relative_error(got, expected) < 5e-2


def test_fold_conv_bn_keeps_the_output_and_computes_patchify_convs_as_matrix_products():
    """Stem-like (4x4 stride 4, 3 channels), downsampling-like (2x2 stride 2) and other conv + BatchNorm pairs
    fold into one conv (fp32, CPU: the gathered-rows path of PatchifyConv2d)."""
    from convfirst.kernels import PatchifyConv2d, fold_conv_bn

    torch.manual_seed(_seed() % 2**31)
    model = _randomize(nn.Sequential(nn.Sequential(nn.Conv2d(3, 16, 4, stride=4, bias=False), nn.BatchNorm2d(16)),
                                     nn.Sequential(nn.Conv2d(16, 24, 2, stride=2, bias=False), nn.BatchNorm2d(24)),
                                     nn.Sequential(nn.Conv2d(24, 24, 3, padding=1), nn.BatchNorm2d(24))),
                       _seed()).eval()
    folded = copy.deepcopy(model)
    assert fold_conv_bn(folded) == 3
    assert isinstance(folded[0][0], PatchifyConv2d) and isinstance(folded[1][0], PatchifyConv2d)
    assert type(folded[2][0]) is nn.Conv2d                                 # 3x3, padded: stays a cuDNN conv
    stem_only = copy.deepcopy(model)
    assert fold_conv_bn(stem_only, patchify_max_in_channels=4) == 3
    assert isinstance(stem_only[0][0], PatchifyConv2d) and type(stem_only[1][0]) is nn.Conv2d
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    for h, w in [(32, 48), (34, 37)]:  # 34 x 37: partial border patches, which the conv drops
        x = torch.randn(2, 3, h, w).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            assert relative_error(folded(x), model(x)) < 1e-5
    with pytest.raises(ValueError, match="kernel == stride"):
        PatchifyConv2d.from_conv(nn.Conv2d(3, 8, 3, padding=1))


def test_fuse_folds_the_stem_and_downsampling_norms_unless_told_not_to():
    model = _randomize(_tiny_model("convfirst"), _seed()).eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fuse(model).modules())
    kept = fuse(model, fold_norms=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in kept.modules())
