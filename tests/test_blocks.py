"""The blocks: shapes, the folded inference form against the reference, BN folding, bad arguments."""
import pytest
import torch
import torch.nn as nn

from convfirst import reference
from convfirst.blocks import (BlockArgumentError, ConvFirstBlock, ConvNeXtBlock, MBConvBlock, fold_bn,
                              make_block)
from convfirst.params import ParameterError


def _randomize_bn(module: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters, so folding has work to do."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator))
            m.running_var.copy_(0.5 + torch.rand(n, generator=generator) * 1.5)
            m.weight.data.copy_(torch.randn(n, generator=generator))
            m.bias.data.copy_(torch.randn(n, generator=generator))


@pytest.mark.parametrize("cls, folded_forward", [
    (ConvFirstBlock, reference.convfirst_folded_forward),
    (MBConvBlock, reference.mbconv_folded_forward),
])
@pytest.mark.parametrize("channels, expansion, kernel_size", [(16, 4, 3), (24, 6, 3), (8, 2, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_form_equals_block(cls, folded_forward, channels, expansion, kernel_size, channels_last):
    g = torch.Generator().manual_seed(channels * 10 + expansion)
    torch.manual_seed(0)
    block = cls(channels, expansion=expansion, kernel_size=kernel_size).double()
    _randomize_bn(block, g)
    block.eval()
    x = torch.randn(2, channels, 9, 7, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = block(x)
        params = {k: v.double() for k, v in block.folded().items()}
        got = folded_forward(x, params)
    assert got.shape == expected.shape == x.shape
    # fp32 folded parameters, fp64 compute: agreement to fp32 rounding of the weights
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_folded_names_shapes_dtype_match_reference():
    c, e, g, k = 32, 4, 8, 3
    for cls, block_name in [(ConvFirstBlock, "convfirst"), (MBConvBlock, "mbconv")]:
        folded = cls(c, expansion=e, group_width=g, kernel_size=k).folded()
        expected = reference.random_folded_params(block_name, c, e, g, k)
        assert list(folded) == list(expected)
        for name in folded:
            assert folded[name].shape == expected[name].shape, name
            assert folded[name].dtype == torch.float32


def test_fold_bn_is_exact_for_a_conv_with_bias():
    g = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=True).double()
    bn = nn.BatchNorm2d(16).double()
    _randomize_bn(bn, g)
    bn.eval()
    x = torch.randn(2, 8, 5, 6, generator=g, dtype=torch.float64)
    w, b = fold_bn(conv.weight, conv.bias, bn)
    with torch.no_grad():
        torch.testing.assert_close(nn.functional.conv2d(x, w.double(), b.double(), padding=1), bn(conv(x)),
                                   rtol=1e-6, atol=1e-6)


def test_fold_bn_with_identity_statistics_changes_nothing():
    conv = nn.Conv2d(8, 8, 1, bias=False)
    bn = nn.BatchNorm2d(8, eps=0.0).eval()
    w, b = fold_bn(conv.weight, None, bn)
    assert torch.equal(w, conv.weight.detach().float())
    assert torch.equal(b, torch.zeros(8))


def test_fold_bn_rejects_mismatched_channels():
    with pytest.raises(ValueError, match="output channels"):
        fold_bn(torch.zeros(4, 4, 1, 1), None, nn.BatchNorm2d(8))


def test_convfirst_layer_order_and_groups():
    block = ConvFirstBlock(64, expansion=4)
    assert block.conv_g.groups == 8 and block.conv_g.in_channels == 64
    assert block.conv_e.out_channels == 256 and block.conv_p.in_channels == 256
    assert (block.channels, block.expansion, block.group_width, block.kernel_size) == (64, 4, 8, 3)
    mb = MBConvBlock(64, expansion=4)
    assert mb.conv_g.groups == 32 and mb.conv_g.in_channels == 256


def test_convnext_block_calls_its_depthwise_conv():
    """The depthwise conv must be on the forward path (a zeroed depthwise weight changes the output)."""
    torch.manual_seed(0)
    block = ConvNeXtBlock(16, layer_scale_init=1.0).eval()
    assert block.conv_dw.groups == 16 and block.conv_dw.kernel_size == (7, 7)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        y = block(x)
        block.conv_dw.weight.mul_(2.0)
        assert not torch.allclose(block(x), y)


def test_convnext_block_channels_last_matches_contiguous():
    torch.manual_seed(0)
    block = ConvNeXtBlock(16, layer_scale_init=0.5).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x.to(memory_format=torch.channels_last)), block(x))


def test_blocks_keep_shape_and_train_backward():
    for block in (ConvFirstBlock(16, drop_path=0.1), MBConvBlock(16), ConvNeXtBlock(16, drop_path=0.1)):
        x = torch.randn(2, 16, 6, 6, requires_grad=True)
        y = block.train()(x)
        assert y.shape == x.shape
        y.square().mean().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(channels=12), "group width"),
    (dict(channels=16, group_width=3), "group width"),
    (dict(channels=0), "channels"),
    (dict(channels=16, expansion=0), "expansion"),
    (dict(channels=16, kernel_size=4), "kernel_size"),
    (dict(channels=16, kernel_size=-3), "kernel_size"),
    (dict(channels=16, stride=2), "stride"),
])
def test_bad_block_arguments_are_named(kwargs, message):
    with pytest.raises(BlockArgumentError, match=message):
        ConvFirstBlock(**kwargs)
    assert issubclass(BlockArgumentError, ParameterError)


def test_mbconv_group_width_applies_to_expanded_channels():
    MBConvBlock(4, expansion=4)  # 16 hidden channels: a multiple of 8
    with pytest.raises(BlockArgumentError, match="group width"):
        MBConvBlock(6, expansion=1)


def test_make_block_rejects_unknown_type():
    with pytest.raises(BlockArgumentError, match="convfirst"):
        make_block("resnet", 16)
    assert isinstance(make_block("mbconv", 16), MBConvBlock)
