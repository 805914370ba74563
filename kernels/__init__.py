"""Triton kernels of the study: one kernel per ConvFirst / MBConv block, and a grouped 3x3 gw8 conv.

Each kernel is a ``torch.library`` custom op (``torch.ops.convfirst.*``) with a fake implementation, so
``torch.compile`` traces models that use it. Set ``TRITON_INTERPRET=1`` *before* importing this package to
run the kernels on CPU tensors in Triton's interpreter (slow; for tests at tiny sizes).

- :func:`convfirst_block_fused`, :func:`mbconv_block_fused`: the fused blocks (packed weights), as custom ops;
  :func:`run_convfirst_fused`, :func:`run_mbconv_fused`: the same for eager code, without the dispatcher's
  per-call cost (the modules use these).
- :func:`grouped_conv3x3_gw8`: the standalone grouped conv; :func:`matmul_bias_act`: a matmul with its bias,
  SiLU and residual in the epilogue; :func:`patchify_conv`: a conv with kernel == stride as one such matmul
  reading the patches in place; :func:`convfirst_block_unfused` and :func:`mbconv_block_unfused`: the same
  blocks as a sequence of our gconv and matmul kernels (or cuBLAS, ``gemm="cublas"``).
- :class:`FusedConvFirstBlock`, :class:`FusedMBConvBlock` (``from_block(block)``), their unfused-sequence
  counterparts :class:`SequenceConvFirstBlock`, :class:`SequenceMBConvBlock`, and :func:`fuse`.
- :func:`pack_block_params`, :func:`pack_grouped_taps`: weight packing.

Design notes, floors and measured versions: ``NOTES_convfirst.md``, ``NOTES_mbconv.md``, ``NOTES_gconv.md``,
``NOTES_gemm.md``.
``python -m convfirst.kernels.compile_report`` prints registers/spills of every config without a GPU.
"""
from ._common import (KernelInputError, interpreting, pack_block_params, pack_grouped_taps,
                      split_channels)
from .convfirst_fused import convfirst_block_fused, run_convfirst_fused
from .gconv import grouped_conv3x3_gw8
from .gemm import matmul_bias_act, patchify_conv
from .mbconv_fused import mbconv_block_fused, run_mbconv_fused
from .modules import (FusedConvFirstBlock, FusedMBConvBlock, PatchifyConv2d, SequenceConvFirstBlock,
                      SequenceMBConvBlock, count_fused_blocks, count_sequence_blocks, fold_conv_bn, fuse)
from .unfused import convfirst_block_unfused, mbconv_block_unfused

__all__ = ["KernelInputError", "interpreting", "pack_block_params", "pack_grouped_taps", "split_channels",
           "convfirst_block_fused", "mbconv_block_fused", "grouped_conv3x3_gw8", "FusedConvFirstBlock",
           "FusedMBConvBlock", "SequenceConvFirstBlock", "SequenceMBConvBlock", "fuse", "count_fused_blocks",
           "count_sequence_blocks", "convfirst_block_unfused", "fold_conv_bn", "PatchifyConv2d",
           "mbconv_block_unfused", "run_block", "run_convfirst_fused", "run_mbconv_fused", "matmul_bias_act",
           "patchify_conv"]


def run_block(block: str, impl: str, x, packed):
    """``impl`` in ('fused', 'unfused-triton') of ``block`` in ('convfirst', 'mbconv') on x with packed weights."""
    if block == "convfirst":
        if impl == "fused":
            return run_convfirst_fused(x, packed["w_taps"], packed["b_g"], packed["we_t"], packed["b_e"],
                                       packed["wp_t"], packed["b_p"])
        if impl == "unfused-triton":
            return convfirst_block_unfused(x, packed)
    elif block == "mbconv":
        if impl == "fused":
            return run_mbconv_fused(x, packed["we_t"], packed["b_e"], packed["w_taps"], packed["b_g"],
                                    packed["wp_t"], packed["b_p"])
        if impl == "unfused-triton":
            return mbconv_block_unfused(x, packed)
    raise KernelInputError(f"run_block: block={block!r}, impl={impl!r}; blocks: 'convfirst', 'mbconv'; "
                           f"impls: 'fused', 'unfused-triton'")
