"""SiLU for the kernels' epilogues: the hardware tanh on the GPU, the exact form in the interpreter.

``x * sigmoid(x)`` as Triton lowers it (``exp2`` with a denormal guard, then an IEEE reciprocal) costs about
11 instructions per element; in the fused ConvFirst kernel that was a third of all instructions executed
(ncu: the kernel issues on 56% of cycles, NOTES_convfirst.md v4). With the identity
``silu(x) = h + h * tanh(h)``, ``h = x / 2``, and PTX ``tanh.approx.f32`` (one MUFU op, maximum relative
error about 2^-11, below half an ulp of bf16 and comparable to fp16 rounding) it is 3: FMUL, MUFU.TANH, FFMA.
"""
import triton
import triton.language as tl


@triton.jit
def silu(x, EXACT: tl.constexpr):
    """SiLU of an fp32 tensor. ``EXACT``: the exp/reciprocal form (the Triton interpreter has no inline PTX)."""
    if EXACT:
        return x * tl.sigmoid(x)
    else:
        h = 0.5 * x
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [h], dtype=tl.float32, is_pure=True,
                                      pack=1)
        return h + h * t
