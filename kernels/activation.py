"""SiLU for the kernels' epilogues: the hardware tanh on the GPU, the exact form in the interpreter.

``x * sigmoid(x)`` as Triton lowers it (``exp2`` with a denormal guard, then an IEEE reciprocal) costs about
11 instructions per element; in the fused ConvFirst kernel that was a third of all instructions executed
(ncu: the kernel issues on 56% of cycles, NOTES_convfirst.md v4). With the identity
``silu(x) = h + h * tanh(h)``, ``h = x / 2``, and PTX ``tanh.approx.f32`` (one MUFU op, maximum relative
error about 2^-11, below half an ulp of bf16 and comparable to fp16 rounding) it is 3: FMUL, MUFU.TANH, FFMA.
"""
import os

import triton
import triton.language as tl

#: Which hardware tanh the SiLU uses: "f32" (one MUFU op per element) or "f16x2" (one MUFU op per two elements,
#: the pair rounded to fp16 first; tanh's own error is then about 2^-10.7). Read once, at import.
TANH = os.environ.get("CONVFIRST_SILU_TANH", "f32")
if TANH not in ("f32", "f16x2"):
    raise ValueError(f"CONVFIRST_SILU_TANH={TANH!r}; expected 'f32' or 'f16x2'")
PACKED_TANH = tl.constexpr(TANH == "f16x2")


@triton.jit
def silu(x, EXACT: tl.constexpr):
    """SiLU of an fp32 tensor. ``EXACT``: the exp/reciprocal form (the Triton interpreter has no inline PTX)."""
    if EXACT:
        return x * tl.sigmoid(x)
    else:
        h = 0.5 * x
        if PACKED_TANH:
            # two elements per MUFU op: the pair rounded to fp16x2 (|h| past fp16's range becomes inf, whose tanh
            # is 1, so the SiLU stays h + h), tanh, back to fp32
            t = tl.inline_asm_elementwise(
                "{ .reg .b32 p; .reg .b16 lo, hi; cvt.rn.f16x2.f32 p, $3, $2; tanh.approx.f16x2 p, p; "
                "mov.b32 {lo, hi}, p; cvt.f32.f16 $0, lo; cvt.f32.f16 $1, hi; }",
                "=f,=f,f,f", [h], dtype=tl.float32, is_pure=True, pack=2)
        else:
            t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [h], dtype=tl.float32,
                                          is_pure=True, pack=1)
        return h + h * t
