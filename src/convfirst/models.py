"""The ConvFirstNet and MBConvNet model families, registered with timm.

A model is a stem, four stages of identical residual blocks with a downsampling layer between stages, and a
classifier head::

    stem:        4x4 conv, stride 4 ("patchify", as in ConvNeXt) -> BatchNorm          224 -> 56
    stage i:     depths[i] blocks of widths[i] channels (ConvFirst or MBConv, stride 1)
    downsample:  2x2 conv, stride 2, widths[i] -> widths[i+1] -> BatchNorm           56 -> 28 -> 14 -> 7
    head:        global average pool -> LayerNorm -> dropout -> linear

**What is this study's own design.** The paper (Lavin, arXiv 2404.03617) names the ConvFirst block and a
ConvFirstNet family, but its stage tables were not available to us. Everything above the block is our
choice: the patchify stem and 2x2 downsampling layers copy ConvNeXt's macro design so that
``convfirstnet_t`` is an *equal-shape control* of ConvNeXt-T (same widths 96/192/384/768, same depths
3/3/9/3, same expansion 4; only the block differs). We use BatchNorm rather than LayerNorm in the stem and
downsampling layers so that every normalisation before the head folds into a conv at inference. The other
members, and the whole MBConvNet family (an MBConv-gw8 family for the EfficientNet comparison, with the same
macro design), are sized by us to span about 0.5 to 9 GMAC at 224x224; their GMAC are computed by
:mod:`convfirst.counting`, not claimed from the paper. None of these models has trained weights here.

Usage::

    import convfirst, timm
    model = timm.create_model("convfirstnet_t")          # or convfirst.models.create("convfirstnet_t")
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd
import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, register_model
from timm.models._registry import generate_default_cfgs

from .blocks import make_block
from .params import ParameterError

__all__ = ["ModelSpec", "MODEL_SPECS", "ConvFirstNet", "create", "check_model_name", "model_names",
           "family_table", "family_block_shapes"]


@dataclass(frozen=True)
class ModelSpec:
    """The shape of one family member: block type, per-stage widths and depths, expansion, group width."""

    block: str
    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    expansion: int = 4
    group_width: int = 8
    kernel_size: int = 3
    note: str = field(default="", compare=False)


#: The single table of the families' shapes (our design; see the module docstring).
MODEL_SPECS: dict[str, ModelSpec] = {
    # ConvFirstNet: ConvFirst blocks (grouped 3x3 gw8 first, then 1x1 expand/project)
    "convfirstnet_p": ModelSpec("convfirst", (32, 64, 128, 256), (3, 3, 9, 3),
                                note="ConvNeXt-T depths at 1/3 of its widths"),
    "convfirstnet_n": ModelSpec("convfirst", (48, 96, 192, 384), (3, 3, 9, 3),
                                note="ConvNeXt-T depths at 1/2 of its widths"),
    "convfirstnet_h": ModelSpec("convfirst", (64, 128, 256, 512), (3, 3, 11, 3),
                                note="about half of ConvNeXt-T's GMAC"),
    "convfirstnet_t": ModelSpec("convfirst", (96, 192, 384, 768), (3, 3, 9, 3),
                                note="equal-shape control of ConvNeXt-T (widths, depths, expansion)"),
    "convfirstnet_s": ModelSpec("convfirst", (96, 192, 384, 768), (3, 3, 27, 3),
                                note="equal-shape control of ConvNeXt-S"),
    # MBConvNet: MBConv blocks (1x1 expand, grouped 3x3 gw8 on E*C, 1x1 project; no squeeze-excite)
    "mbconvnet_p": ModelSpec("mbconv", (32, 64, 128, 256), (2, 2, 6, 2), note="near EfficientNet-B0's GMAC"),
    "mbconvnet_n": ModelSpec("mbconv", (48, 96, 192, 384), (2, 2, 6, 2)),
    "mbconvnet_h": ModelSpec("mbconv", (64, 128, 256, 512), (2, 3, 9, 2)),
    "mbconvnet_t": ModelSpec("mbconv", (96, 192, 384, 768), (3, 3, 9, 3),
                             note="ConvNeXt-T's widths and depths with MBConv blocks"),
    "mbconvnet_s": ModelSpec("mbconv", (96, 192, 384, 768), (3, 3, 27, 3),
                             note="ConvNeXt-S's widths and depths with MBConv blocks"),
}


def model_names() -> list[str]:
    """Names of all family members, in table order."""
    return list(MODEL_SPECS)


def check_model_name(name: str) -> str:
    """``name`` if it is a family member, else a :class:`ParameterError` listing the valid names."""
    if name not in MODEL_SPECS:
        raise ParameterError(f"model {name!r} is not a ConvFirstNet/MBConvNet family member; valid names: "
                             f"{model_names()}")
    return name


def _conv_bn(in_ch: int, out_ch: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, bias=False), nn.BatchNorm2d(out_ch))


class Stage(nn.Module):
    """An optional downsampling layer followed by ``depth`` stride-1 residual blocks of one width."""

    def __init__(self, in_channels: int, channels: int, depth: int, block: str, expansion: int,
                 group_width: int, kernel_size: int, drop_path_rates: list[float]):
        super().__init__()
        self.downsample = (_conv_bn(in_channels, channels, 2, stride=2) if in_channels != channels
                           else nn.Identity())
        self.blocks = nn.Sequential(*[
            make_block(block, channels, expansion=expansion, group_width=group_width, kernel_size=kernel_size,
                       drop_path=drop_path_rates[i])
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvFirstNet(nn.Module):
    """Four-stage residual convnet of ConvFirst (or MBConv) blocks; see the module docstring for the design.

    Args:
        widths, depths: channels and number of blocks of the four stages.
        block: 'convfirst' or 'mbconv'.
        expansion, group_width, kernel_size: block shape (E, g, k).
        num_classes: classifier outputs (0 for a feature extractor).
        in_chans: input image channels.
        drop_rate: dropout before the classifier; drop_path_rate: stochastic depth, linear over the blocks.
        zero_init_last: start the last BatchNorm of every block at zero (each block the identity), a common
            choice for training from scratch. Off by default so that an untrained model's blocks compute
            something non-trivial, which kernel correctness checks on fresh models rely on.
    """

    def __init__(self, widths=(96, 192, 384, 768), depths=(3, 3, 9, 3), block: str = "convfirst",
                 expansion: int = 4, group_width: int = 8, kernel_size: int = 3, num_classes: int = 1000,
                 in_chans: int = 3, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 zero_init_last: bool = False):
        super().__init__()
        if len(widths) != 4 or len(depths) != 4:
            raise ParameterError(f"widths={widths!r} and depths={depths!r} must each list 4 stages")
        if block not in ("convfirst", "mbconv"):
            raise ParameterError(f"block={block!r} is not allowed; choose one of ['convfirst', 'mbconv']")
        self.block_type, self.widths, self.depths = block, tuple(widths), tuple(depths)
        self.expansion, self.group_width, self.kernel_size = expansion, group_width, kernel_size
        self.num_classes, self.num_features = num_classes, widths[-1]
        self.drop_rate = drop_rate

        self.stem = _conv_bn(in_chans, widths[0], 4, stride=4)
        n_blocks = sum(depths)
        rates = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        stages, in_ch, start = [], widths[0], 0
        for width, depth in zip(widths, depths):
            stages.append(Stage(in_ch, width, depth, block, expansion, group_width, kernel_size,
                                rates[start:start + depth]))
            in_ch, start = width, start + depth
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=w, reduction=4 * 2 ** i, module=f"stages.{i}")
                             for i, w in enumerate(widths)]
        self.head_norm = nn.LayerNorm(widths[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(widths[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        if zero_init_last:
            # the last BatchNorm of each residual branch starts at zero: every block starts as the identity
            for m in self.modules():
                if isinstance(getattr(m, "bn_p", None), nn.BatchNorm2d):
                    nn.init.zeros_(m.bn_p.weight)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.head_norm(x.mean((2, 3))))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    return {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
            "crop_pct": 0.875, "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225), "first_conv": "stem.0", "classifier": "head",
            "license": "apache-2.0", **kwargs}


default_cfgs = generate_default_cfgs({name: _cfg() for name in MODEL_SPECS})


def _build(name: str, pretrained: bool = False, **kwargs) -> ConvFirstNet:
    check_model_name(name)
    if pretrained:
        raise ParameterError(f"pretrained=True: no trained weights exist for {name!r} in this study "
                             f"(ImageNet training was not run); use pretrained=False")
    spec = MODEL_SPECS[name]
    args = dict(block=spec.block, widths=spec.widths, depths=spec.depths, expansion=spec.expansion,
                group_width=spec.group_width, kernel_size=spec.kernel_size)
    args.update(kwargs)
    return build_model_with_cfg(ConvFirstNet, name, pretrained=False,
                                feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True), **args)


def create(name: str, **kwargs) -> ConvFirstNet:
    """A family member by name (same as ``timm.create_model(name)``); a clear error for unknown names."""
    return _build(check_model_name(name), **kwargs)


@register_model
def convfirstnet_p(pretrained=False, **kwargs) -> ConvFirstNet:
    return _build("convfirstnet_p", pretrained, **kwargs)


@register_model
def convfirstnet_n(pretrained=False, **kwargs) -> ConvFirstNet:
    return _build("convfirstnet_n", pretrained, **kwargs)


@register_model
def convfirstnet_h(pretrained=False, **kwargs) -> ConvFirstNet:
    return _build("convfirstnet_h", pretrained, **kwargs)


@register_model
def convfirstnet_t(pretrained=False, **kwargs) -> ConvFirstNet:
    return _build("convfirstnet_t", pretrained, **kwargs)


@register_model
def convfirstnet_s(pretrained=False, **kwargs) -> ConvFirstNet:
    return _build("convfirstnet_s", pretrained, **kwargs)


@register_model
def mbconvnet_p(pretrained=False, **kwargs) -> ConvFirstNet:
    return _build("mbconvnet_p", pretrained, **kwargs)


@register_model
def mbconvnet_n(pretrained=False, **kwargs) -> ConvFirstNet:
    return _build("mbconvnet_n", pretrained, **kwargs)


@register_model
def mbconvnet_h(pretrained=False, **kwargs) -> ConvFirstNet:
    return _build("mbconvnet_h", pretrained, **kwargs)


@register_model
def mbconvnet_t(pretrained=False, **kwargs) -> ConvFirstNet:
    return _build("mbconvnet_t", pretrained, **kwargs)


@register_model
def mbconvnet_s(pretrained=False, **kwargs) -> ConvFirstNet:
    return _build("mbconvnet_s", pretrained, **kwargs)


def family_table() -> pd.DataFrame:
    """The spec table as a DataFrame (one row per model) for the book to print."""
    rows = []
    for name, spec in MODEL_SPECS.items():
        d = asdict(spec)
        rows.append({"model": name, "block": d["block"], "widths": "/".join(map(str, spec.widths)),
                     "depths": "/".join(map(str, spec.depths)), "blocks": sum(spec.depths),
                     "expansion": spec.expansion, "group_width": spec.group_width,
                     "kernel_size": spec.kernel_size, "note": spec.note})
    return pd.DataFrame(rows)


def stage_resolutions(resolution: int = 224) -> list[int]:
    """Spatial size of the four stages for a square input (stem stride 4, then 2x per stage)."""
    if resolution % 32:
        raise ParameterError(f"resolution={resolution} must be a multiple of 32 (stem stride 4, three 2x "
                             f"downsamplings)")
    return [resolution // 4 // 2 ** i for i in range(4)]


def family_block_shapes(resolution: int = 224, names: list[str] | None = None) -> pd.DataFrame:
    """Every distinct block shape the families use at ``resolution``.

    A DataFrame with one row per distinct (block, C, H, W, E, group_width, kernel_size), plus ``count``
    (blocks of that shape over the listed models) and ``models`` (which models use it). Iterate with
    ``for row in family_block_shapes().itertuples(): row.block, row.C, row.H, row.W, row.E``.
    """
    names = model_names() if names is None else [check_model_name(n) for n in names]
    per_model = []
    for name in names:
        spec = MODEL_SPECS[name]
        for width, depth, size in zip(spec.widths, spec.depths, stage_resolutions(resolution)):
            per_model.append({"block": spec.block, "C": width, "H": size, "W": size, "E": spec.expansion,
                              "group_width": spec.group_width, "kernel_size": spec.kernel_size,
                              "count": depth, "model": name})
    df = pd.DataFrame(per_model)
    keys = ["block", "C", "H", "W", "E", "group_width", "kernel_size"]
    out = (df.groupby(keys, sort=False)
             .agg(count=("count", "sum"), models=("model", lambda m: ",".join(dict.fromkeys(m))))
             .reset_index())
    return out.sort_values(["block", "C", "H"]).reset_index(drop=True)
