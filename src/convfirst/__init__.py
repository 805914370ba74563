"""ConvFirst study package: blocks, model families (registered with timm on import), counting, tools."""
from . import blocks, models  # noqa: F401  (importing models registers the families with timm)
from .blocks import ConvFirstBlock, ConvNeXtBlock, MBConvBlock, fold_bn  # noqa: F401
from .models import create  # noqa: F401

__version__ = "0.1.0"
