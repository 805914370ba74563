"""What every block kernel shares: input checks with clear messages, channel splitting, weight packing.

Tensors follow one convention: activations are NCHW-shaped tensors stored ``channels_last`` (NHWC in
memory), bf16 or fp16; the kernels accumulate in fp32. Packed weights are produced once, when a fused
module is built, by :func:`pack_grouped_taps` and :func:`pack_block_params`.
"""
from __future__ import annotations

import os

import torch

#: Activation dtypes the kernels accept.
ACTIVATION_DTYPES = (torch.bfloat16, torch.float16)
#: The grouped conv the kernels implement: 3x3, stride 1, 'same' padding, 8 channels per group.
GROUP_WIDTH = 8
KERNEL_SIZE = 3


#: Launch options a fixed config may carry next to its constexprs (``maxnreg``: register cap per thread).
LAUNCH_OPTIONS = ("num_warps", "num_stages", "maxnreg")


def launch_options(config: dict) -> dict:
    """The launch options (``num_warps``, ``num_stages``, ``maxnreg``) a fixed config sets, unset ones left out."""
    return {k: v for k, v in config.items() if k in LAUNCH_OPTIONS and v is not None}


def accumulator_fits(block_m: int, width: int, cf) -> bool:
    """Whether a [block_m, width] fp32 accumulator fits config ``cf``: at most 128 registers per thread, and at
    most 60% of its register cap (``maxnreg``) where it has one (ptxas cannot compile tighter caps)."""
    regs = block_m * width // (32 * cf.num_warps)
    return regs <= 128 and not (cf.maxnreg and regs > 0.6 * cf.maxnreg)


def launch_kwargs(cf) -> dict:
    """A ``triton.Config`` as the keyword dict a fixed-config launch takes (constexprs + launch options)."""
    out = dict(cf.kwargs, num_warps=cf.num_warps, num_stages=cf.num_stages)
    if getattr(cf, "maxnreg", None):
        out["maxnreg"] = cf.maxnreg
    return out


#: The compiled kernel object of the last launch per kernel ('convfirst', 'mbconv', 'gconv'): registers,
#: spills and shared memory of the config in use (``.n_regs``, ``.n_spills``, ``.metadata.shared``).
LAST_COMPILED: dict = {}


class KernelInputError(ValueError):
    """An input a fused kernel cannot take (dtype, device, layout, shape, group width)."""


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def tracing(x: torch.Tensor) -> bool:
    """Whether a fused block must go through its custom op: while ``torch.compile``/``torch.export`` traces
    (the op's fake implementation describes its output) or for meta tensors. Eager code calls the kernels
    directly and skips the dispatcher's per-call cost."""
    return torch.compiler.is_compiling() or x.device.type == "meta"


def autotuning() -> bool:
    """Autotune on the GPU unless ``CONVFIRST_AUTOTUNE=0`` (then each kernel uses its fixed heuristic config)."""
    return not interpreting() and os.environ.get("CONVFIRST_AUTOTUNE", "1") != "0"


def median_ms(fn) -> float:
    """Median time of ``fn()`` in ms (Triton's ``do_bench``; used to choose between kernels at launch)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=50, return_mode="median")


def pick_fastest(runs: dict, timer=None) -> str:
    """Run each candidate once (its first call with a shape autotunes it), time it, and return the fastest name."""
    timer = timer or median_ms
    times = {}
    for name, run in runs.items():
        run()
        times[name] = timer(run)
    return min(times, key=times.get)


def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def split_channels(channels: int) -> tuple[int, int]:
    """Split C into two power-of-two widths (CA, CB) with CA + CB >= C and little padding.

    Triton tensors have power-of-two shapes, so a tile of C channels is held as two parts:
    96 = 64 + 32, 192 = 128 + 64, 80 = 64 + 32 (16 padded), 64 = 64 + 0. CB is at least 32 when it is
    not 0: a 16-wide part would make 16-deep/16-wide matmuls that Triton runs as mma.sync next to the
    Hopper wgmma of the other part, and that mix gave wrong results on the H100 (triton 3.6) for some tiles.
    """
    if channels <= 16:
        return 16, 0
    ca = 1 << (channels.bit_length() - 1)
    if ca == channels:
        return ca, 0
    cb = max(32, next_pow2(channels - ca))
    if cb >= ca:  # e.g. 48 -> 64 + 0 rather than 32 + 32
        return next_pow2(channels), 0
    return ca, cb


def check_device(x: torch.Tensor, name: str = "x") -> None:
    """Raise :class:`KernelInputError` unless ``x`` is where a kernel can run: a CUDA GPU, the CPU in the Triton
    interpreter, or the meta device (tracing)."""
    if x.device.type == "meta":
        return
    if x.device.type == "cpu":
        if not interpreting():
            raise KernelInputError(f"{name}: is on the CPU; the Triton kernels run on a CUDA GPU (move it with "
                                   f"x.cuda()), or on the CPU only in the Triton interpreter (set "
                                   f"TRITON_INTERPRET=1 before importing convfirst.kernels)")
    elif x.device.type != "cuda":
        raise KernelInputError(f"{name}: device {x.device} is not supported; use a CUDA GPU")


def check_activation(x: torch.Tensor, name: str = "x") -> None:
    """Raise :class:`KernelInputError` unless ``x`` is a dense channels_last bf16/fp16 NCHW tensor on a usable device."""
    if not isinstance(x, torch.Tensor):
        raise KernelInputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise KernelInputError(f"{name}: expected an NCHW-shaped 4-d tensor, got shape {tuple(x.shape)}")
    if x.dtype not in ACTIVATION_DTYPES:
        raise KernelInputError(f"{name}: dtype {x.dtype} is not supported; the kernels take torch.bfloat16 or "
                               f"torch.float16 activations (cast with x.to(torch.bfloat16))")
    check_device(x, name)
    c = x.shape[1]
    if c % GROUP_WIDTH:
        raise KernelInputError(f"{name}: {c} channels is not a multiple of the group width {GROUP_WIDTH}")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise KernelInputError(f"{name}: must be a dense channels_last (NHWC in memory) tensor; convert with "
                               f"x.contiguous(memory_format=torch.channels_last)")


def check_same_device(x: torch.Tensor, **tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.device != x.device:
            raise KernelInputError(f"{name} is on {t.device} but the activation is on {x.device}")


def check_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise KernelInputError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def check_weight_dtype(x: torch.Tensor, **tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.dtype != x.dtype:
            raise KernelInputError(f"{name}: dtype {t.dtype} does not match the activation dtype {x.dtype}; "
                                   f"pack the weights in the activation dtype")


def packed_taps_rows(channels: int) -> int:
    """Rows of the packed grouped-conv weight: channels rounded up to a multiple of 16."""
    return -(-channels // 16) * 16


@torch.no_grad()
def pack_grouped_taps(w_g: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Grouped 3x3 gw8 weight [C, 8, 3, 3] -> per-tap block-diagonal 16x16 slices [9, C16, 16].

    ``out[t, ci, c % 16]`` holds ``w_g[c, ci % 8, t // 3, t % 3]`` when input channel ``ci`` and output
    channel ``c`` are in the same group of 8, and 0 otherwise. Channels are handled in slices of 16 (two
    groups): for slice ``s`` and tap ``t`` the kernel multiplies the [pixels, 16] input slice by the 16x16
    matrix ``out[t, 16*s:16*s+16, :]`` on the tensor cores. Half of each matrix is zero, so the tensor cores
    do 2x the grouped conv's useful work, instead of C/8 x with one dense C x C matrix per tap.
    """
    if w_g.dim() != 4 or w_g.shape[1] != GROUP_WIDTH or w_g.shape[2:] != (KERNEL_SIZE, KERNEL_SIZE):
        raise KernelInputError(f"w_g: expected a grouped conv weight [C, {GROUP_WIDTH}, {KERNEL_SIZE}, "
                               f"{KERNEL_SIZE}] (group width {GROUP_WIDTH}, 3x3), got {tuple(w_g.shape)}")
    c = w_g.shape[0]
    if c % GROUP_WIDTH:
        raise KernelInputError(f"w_g: {c} output channels is not a multiple of the group width {GROUP_WIDTH}")
    c16 = packed_taps_rows(c)
    out = torch.zeros(9, c16, 16, dtype=torch.float32, device=w_g.device)
    cout = torch.arange(c, device=w_g.device)
    taps = w_g.float().reshape(c, GROUP_WIDTH, 9)
    for kin in range(GROUP_WIDTH):
        cin = (cout // GROUP_WIDTH) * GROUP_WIDTH + kin
        out[:, cin, cout % 16] = taps[:, kin, :].T
    return out.to(dtype or w_g.dtype).contiguous()


@torch.no_grad()
def pack_block_params(block: str, folded: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Folded block parameters (names of :mod:`convfirst.reference`) -> the tensors the kernels read.

    Returns ``w_taps`` [9, C16, 16] (grouped conv, see :func:`pack_grouped_taps`), ``we_t`` [C, E*C]
    (expand weight, transposed), ``wp_t`` [E*C, C] (project weight, transposed), all in ``dtype``; and the
    biases ``b_g``, ``b_e``, ``b_p`` in fp32 (the kernels add them to fp32 accumulators).
    """
    if block not in ("convfirst", "mbconv"):
        raise KernelInputError(f"block={block!r}: choose 'convfirst' or 'mbconv'")
    if dtype not in ACTIVATION_DTYPES:
        raise KernelInputError(f"dtype {dtype} is not supported; use torch.bfloat16 or torch.float16")
    w_e, w_p = folded["w_e"], folded["w_p"]
    if w_e.dim() == 4:
        w_e = w_e.reshape(w_e.shape[0], w_e.shape[1])
    if w_p.dim() == 4:
        w_p = w_p.reshape(w_p.shape[0], w_p.shape[1])
    hidden, channels = w_e.shape
    check_shape("w_p", w_p, (channels, hidden))
    grouped = channels if block == "convfirst" else hidden
    check_shape("w_g", folded["w_g"], (grouped, GROUP_WIDTH, KERNEL_SIZE, KERNEL_SIZE))
    check_shape("b_g", folded["b_g"], (grouped,))
    check_shape("b_e", folded["b_e"], (hidden,))
    check_shape("b_p", folded["b_p"], (channels,))
    return {
        "w_taps": pack_grouped_taps(folded["w_g"], dtype),
        "b_g": folded["b_g"].float().contiguous(),
        "we_t": w_e.t().to(dtype).contiguous(),
        "b_e": folded["b_e"].float().contiguous(),
        "wp_t": w_p.t().to(dtype).contiguous(),
        "b_p": folded["b_p"].float().contiguous(),
    }


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4
