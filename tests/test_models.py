"""The model families: timm registration, shapes, the spec table, the GMAC span, bad names."""
import pytest
import timm
import torch

import convfirst  # noqa: F401  (registers the families with timm)
from convfirst import counting
from convfirst.blocks import ConvFirstBlock, MBConvBlock
from convfirst.models import (MODEL_SPECS, check_model_name, create, family_block_shapes, family_table,
                              model_names, stage_resolutions)
from convfirst.params import ParameterError


def test_every_family_member_is_registered_with_timm():
    registered = set(timm.list_models("convfirstnet_*")) | set(timm.list_models("mbconvnet_*"))
    assert registered == set(MODEL_SPECS)
    for name in MODEL_SPECS:
        with torch.device("meta"):
            model = timm.create_model(name)
        spec = MODEL_SPECS[name]
        blocks = [m for m in model.modules() if isinstance(m, (ConvFirstBlock, MBConvBlock))]
        assert len(blocks) == sum(spec.depths), name
        assert {b.block_type for b in blocks} == {spec.block}
        assert [b.channels for b in blocks] == [w for w, d in zip(spec.widths, spec.depths) for _ in range(d)]


def test_equal_shape_control_has_convnext_tiny_widths_and_depths():
    spec = MODEL_SPECS["convfirstnet_t"]
    assert (spec.block, spec.widths, spec.depths, spec.expansion) == (
        "convfirst", (96, 192, 384, 768), (3, 3, 9, 3), 4)
    with torch.device("meta"):
        ours, theirs = timm.create_model("convfirstnet_t"), timm.create_model("convnext_tiny")
    ours_widths = [s.blocks[0].channels for s in ours.stages]
    theirs_widths = [s.blocks[0].conv_dw.in_channels for s in theirs.stages]
    assert ours_widths == theirs_widths
    assert [len(s.blocks) for s in ours.stages] == [len(s.blocks) for s in theirs.stages]


def test_forward_shapes_channels_last_and_training_step():
    torch.manual_seed(0)
    model = timm.create_model("convfirstnet_p", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
        y_cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert y.shape == (2, 10)
    torch.testing.assert_close(y_cl, y, rtol=1e-4, atol=1e-4)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_features_only_gives_four_stages():
    model = timm.create_model("mbconvnet_p", features_only=True)
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == list(MODEL_SPECS["mbconvnet_p"].widths)
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]


def test_family_spans_the_gmac_range():
    gmac = {name: counting.model_summary(name)["gmac"] for name in model_names()}
    convnext_t = counting.model_summary("convnext_tiny")["gmac"]
    convfirst = [g for n, g in gmac.items() if n.startswith("convfirstnet")]
    mbconv = [g for n, g in gmac.items() if n.startswith("mbconvnet")]
    for family in (convfirst, mbconv):
        assert min(family) < 0.6 and max(family) > 8.0
        assert family == sorted(family)  # table order is size order
    assert abs(gmac["convfirstnet_t"] / convnext_t - 1) < 0.03  # equal shape, nearly equal arithmetic
    assert 0.4 < gmac["convfirstnet_h"] / convnext_t < 0.6  # "about half of ConvNeXt-T"


def test_bad_model_names_list_the_valid_ones():
    with pytest.raises(ParameterError, match="convfirstnet_t"):
        create("convfirstnet_xl")
    with pytest.raises(ParameterError, match="valid names"):
        check_model_name("convnext_tiny")
    with pytest.raises(ParameterError, match="pretrained"):
        timm.create_model("convfirstnet_t", pretrained=True)


def test_family_table_and_block_shapes():
    table = family_table()
    assert list(table["model"]) == model_names()
    assert (table["blocks"] == [sum(s.depths) for s in MODEL_SPECS.values()]).all()
    shapes = family_block_shapes()
    assert {"block", "C", "H", "W", "E", "count", "models"} <= set(shapes.columns)
    assert not shapes.duplicated(["block", "C", "H", "W", "E"]).any()
    assert shapes["count"].sum() == sum(sum(s.depths) for s in MODEL_SPECS.values())
    # the equal-shape control's four stage shapes are all listed
    t_shapes = set(family_block_shapes(names=["convfirstnet_t"])[["C", "H"]].itertuples(index=False, name=None))
    assert t_shapes == {(96, 56), (192, 28), (384, 14), (768, 7)}
    assert (shapes["C"] % 8 == 0).all()
    assert stage_resolutions(224) == [56, 28, 14, 7]
    with pytest.raises(ParameterError, match="resolution"):
        stage_resolutions(100)
