"""The Triton kernels against the fp32 reference: fused ConvFirst, fused MBConv, grouped 3x3 gw8, unfused.

Without a GPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by conftest.py before
anything imports Triton) at tiny shapes; on a GPU the same tests run at real sizes, plus the ``gpu`` tests.
Every run draws fresh random inputs (never zeros) and launches into a NaN-poisoned output, so an element the
kernel forgets to write fails the test.
"""
from __future__ import annotations

import os

if not os.path.exists("/dev/nvidiactl"):  # also when this file runs without conftest.py
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from convfirst import reference
from convfirst.bench_blocks import (TOLERANCE, BlockCase, BlockShape, family_check_shapes, relative_error)
from convfirst.kernels import (KernelInputError, convfirst_block_fused, grouped_conv3x3_gw8, interpreting,
                               mbconv_block_fused, pack_block_params, pack_grouped_taps, run_block,
                               split_channels)

ON_GPU = torch.cuda.is_available() and not interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"

# (block, C, H, W, batch): tiny in the interpreter (odd sizes, C not a power of two, batch 1);
# real early/late-stage shapes on the GPU
if ON_GPU:
    CASES = [("convfirst", 64, 56, 56, 4), ("convfirst", 96, 29, 31, 3), ("convfirst", 192, 28, 28, 2),
             ("convfirst", 768, 7, 7, 5), ("convfirst", 48, 13, 11, 1),
             ("mbconv", 64, 56, 56, 2), ("mbconv", 80, 27, 29, 1), ("mbconv", 256, 14, 14, 3),
             ("mbconv", 768, 7, 7, 2),
             ("gconv", 96, 56, 56, 4), ("gconv", 40, 13, 11, 1), ("gconv", 384, 14, 14, 2)]
else:
    CASES = [("convfirst", 8, 5, 7, 1), ("convfirst", 24, 6, 5, 2), ("convfirst", 48, 7, 3, 1),
             ("mbconv", 8, 5, 7, 1), ("mbconv", 16, 3, 9, 2), ("mbconv", 48, 4, 5, 1),
             ("gconv", 8, 5, 7, 1), ("gconv", 40, 6, 5, 2)]


def _seed() -> int:
    return int.from_bytes(os.urandom(4), "little")  # fresh inputs every run


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("block, channels, height, width, batch", CASES)
def test_kernel_matches_reference(block, channels, height, width, batch, dtype):
    case = BlockCase(BlockShape(block, channels, height, width), batch, dtype, device=DEVICE, seed=_seed())
    x = case.inputs[0]
    assert x.abs().sum() > 0
    out = case.launch_poisoned(x)
    ref = case.reference(x)
    err = relative_error(out, ref)
    assert err < TOLERANCE[dtype], f"{block} C={channels} {height}x{width} N={batch} {dtype}: rel err {err:.3g}"
    assert out.is_contiguous(memory_format=torch.channels_last)


KERNEL_FORMS = ("sliced", "dense", "resident", "tma")


def form_config(form: str, channels: int, npix: int) -> dict | None:
    """An explicit config of one form of the fused ConvFirst kernel (None where the form does not apply):
    v4 sliced grouped conv, v3 dense grouped conv, v5 resident weights (persistent programs), v6 TMA patches; the same fixed
    configs ``compare_forms`` checks on the GPU."""
    from convfirst.kernels.compare_forms import applies, fixed_config

    return fixed_config(form, channels, npix) if applies(form, channels) else None


@pytest.mark.parametrize("form", KERNEL_FORMS)
@pytest.mark.parametrize("block, channels, height, width, batch",
                         [c for c in CASES if c[0] == "convfirst"] + [("convfirst", 80, 5, 3, 1)])  # 80 = 64 + 32
def test_convfirst_kernel_forms_match_reference(block, channels, height, width, batch, form):
    """Each form of the fused ConvFirst kernel, forced through an explicit config, against the fp32 reference."""
    config = form_config(form, channels, batch * height * width)
    if config is None:
        pytest.skip(f"the {form} form does not take C={channels}")
    case = BlockCase(BlockShape(block, channels, height, width), batch, "bfloat16", device=DEVICE, seed=_seed())
    x = case.inputs[0]
    out = case.launch_poisoned(x, config)
    err = relative_error(out, case.reference(x))
    assert err < TOLERANCE["bfloat16"], f"{form} C={channels} {height}x{width} N={batch}: rel err {err:.3g}"


@pytest.mark.parametrize("joint", [False, True])
@pytest.mark.parametrize("channels, height, width, batch", [(80, 5, 7, 2), (96, 9, 6, 1)] if not ON_GPU
                         else [(96, 9, 15, 2), (96, 56, 56, 2), (80, 29, 31, 1), (192, 28, 28, 2)])
def test_tma_tap_loops_match_reference(channels, height, width, batch, joint):
    """v6 with the two channel parts (80, 96: 64 + 32; 192: 128 + 64) in separate tap loops and in one."""
    config = dict(form_config("tma", channels, batch * height * width), JOINT_TAPS=joint)
    case = BlockCase(BlockShape("convfirst", channels, height, width), batch, "bfloat16", device=DEVICE, seed=_seed())
    x = case.inputs[0]
    err = relative_error(case.launch_poisoned(x, config), case.reference(x))
    assert err < TOLERANCE["bfloat16"], f"JOINT_TAPS={joint} C={channels} {height}x{width}: rel err {err:.3g}"


def test_resident_form_walks_more_tiles_than_programs():
    """The v5 grid is persistent: fewer programs than tiles, each program looping over several."""
    from convfirst.kernels._common import num_sms

    config = form_config("resident", 16, 0)
    assert config is not None
    height, width, batch = (9, 13, 2) if interpreting() else (56, 56, 64)
    tiles = -(-batch * height * width // config["BLOCK_M"])
    assert tiles > 2 * num_sms(torch.device(DEVICE)) * config["PROGRAMS_PER_SM"]
    case = BlockCase(BlockShape("convfirst", 16, height, width), batch, "bfloat16", device=DEVICE, seed=_seed())
    x = case.inputs[0]
    err = relative_error(case.launch_poisoned(x, config), case.reference(x))
    assert err < TOLERANCE["bfloat16"]


def test_resident_config_must_divide_hidden_width():
    from convfirst.kernels.convfirst_fused import launch_convfirst_block

    p = _on(_packed("convfirst", 24))  # hidden width 96: slices of 64 do not divide it
    x = _x(24)
    with pytest.raises(KernelInputError, match="BLOCK_H=64 does not divide the 96 hidden"):
        launch_convfirst_block(x, p["w_taps"], p["b_g"], p["we_t"], p["b_e"], p["wp_t"], p["b_p"], torch.empty_like(x),
                               config={"BLOCK_M": 16, "BLOCK_H": 64, "PROGRAMS_PER_SM": 1})


@pytest.mark.parametrize("block", ["convfirst", "mbconv"])
def test_unfused_sequence_and_op_match_reference(block):
    shape = BlockShape(block, 32 if not ON_GPU else 96, 5 if not ON_GPU else 28, 6 if not ON_GPU else 28)
    case = BlockCase(shape, 2, "bfloat16", device=DEVICE, seed=_seed())
    x = case.inputs[0]
    ref = case.reference(x)
    for impl in ("fused", "unfused-triton"):
        out = run_block(block, impl, x, case.packed)
        assert out.shape == x.shape
        assert relative_error(out, ref) < TOLERANCE["bfloat16"], impl


def test_grouped_conv_with_silu_matches_reference():
    torch.manual_seed(_seed())
    c = 24
    x = torch.randn(2, c, 5, 4, device=DEVICE).to(torch.float16).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(c, 8, 3, 3, device=DEVICE) / 8).half()
    b = torch.randn(c, device=DEVICE)
    out = grouped_conv3x3_gw8(x, pack_grouped_taps(w), b, True)
    ref = torch.nn.functional.silu(torch.nn.functional.conv2d(x.float(), w.float(), b, padding=1, groups=c // 8))
    assert relative_error(out, ref) < TOLERANCE["float16"]


def test_packed_taps_are_block_diagonal():
    c = 40
    w = torch.randn(c, 8, 3, 3)
    packed = pack_grouped_taps(w, torch.float32)
    assert packed.shape == (9, 48, 16)
    for t in range(9):
        for cout in range(c):
            for cin in range(48):
                expected = w[cout, cin % 8, t // 3, t % 3] if cin // 8 == cout // 8 else 0.0
                if cin // 16 == cout // 16:
                    assert packed[t, cin, cout % 16] == expected
    assert packed[:, 40:].abs().sum() == 0  # padded input channels carry no weight


@pytest.mark.parametrize("channels, parts", [(8, (16, 0)), (24, (32, 0)), (48, (64, 0)), (64, (64, 0)),
                                             (80, (64, 32)), (96, (64, 32)), (192, (128, 64)), (640, (512, 128)),
                                             (768, (512, 256)), (320, (256, 64)), (160, (128, 32))])
def test_split_channels(channels, parts):
    assert split_channels(channels) == parts
    ca, cb = parts
    assert ca + cb >= channels and ca & (ca - 1) == 0 and (cb == 0 or cb >= 32)


# --------------------------------------------------------------------------------- bad input -> clear errors
def _packed(block="convfirst", c=16, dtype=torch.bfloat16):
    return pack_block_params(block, reference.random_folded_params(block, c), dtype)


def _x(c=16, dtype=torch.bfloat16, device=DEVICE):
    return torch.randn(1, c, 4, 4, device=device).to(dtype).contiguous(memory_format=torch.channels_last)


def _call(x, p):
    return convfirst_block_fused(x, p["w_taps"], p["b_g"], p["we_t"], p["b_e"], p["wp_t"], p["b_p"])


def _on(p):
    return {k: v.to(DEVICE) for k, v in p.items()}


def test_wrong_dtype_is_named():
    with pytest.raises(KernelInputError, match="dtype torch.float32"):
        _call(_x().float(), _on(_packed()))


def test_not_channels_last_is_named():
    x = torch.randn(1, 16, 4, 4, device=DEVICE).to(torch.bfloat16)
    with pytest.raises(KernelInputError, match="channels_last"):
        _call(x, _on(_packed()))


def test_non_contiguous_is_named():
    x = torch.randn(1, 16, 4, 8, device=DEVICE).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with pytest.raises(KernelInputError, match="channels_last"):
        _call(x[:, :, :, ::2], _on(_packed()))


def test_channels_not_multiple_of_8_is_named():
    x = torch.randn(1, 12, 4, 4, device=DEVICE).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with pytest.raises(KernelInputError, match="multiple of the group width 8"):
        grouped_conv3x3_gw8(x, torch.zeros(9, 16, 16, dtype=torch.bfloat16, device=DEVICE),
                            torch.zeros(12, device=DEVICE))


def test_weight_shape_mismatch_is_named():
    with pytest.raises(KernelInputError, match="we_t"):
        _call(_x(24), _on(_packed(c=16)))
    p = _on(_packed("mbconv", 16))
    with pytest.raises(KernelInputError, match="wp_t"):
        mbconv_block_fused(_x(16), p["we_t"], p["b_e"], p["w_taps"], p["b_g"], p["wp_t"][:, :8], p["b_p"])


def test_weight_dtype_mismatch_is_named():
    with pytest.raises(KernelInputError, match="does not match the activation dtype"):
        _call(_x(dtype=torch.float16), _on(_packed(dtype=torch.bfloat16)))


def test_group_width_other_than_8_is_named():
    with pytest.raises(KernelInputError, match="group width 8"):
        pack_grouped_taps(torch.randn(16, 4, 3, 3))


@pytest.mark.skipif(ON_GPU, reason="CPU-only: a CPU tensor outside the interpreter")
def test_cpu_tensor_without_interpreter_is_named(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelInputError, match="CUDA GPU"):
        _call(_x(device="cpu"), _packed())


@pytest.mark.gpu
def test_cpu_tensor_to_gpu_weights_is_named():
    with pytest.raises(KernelInputError, match="is on"):
        _call(_x(device="cuda"), _packed())


# ------------------------------------------------------------------------------- torch.library integration
@pytest.mark.parametrize("block", ["convfirst", "mbconv"])
def test_ops_trace_with_fake_tensors(block):
    """Schema and fake (meta) implementation, as torch.compile uses them (opcheck)."""
    case = BlockCase(BlockShape(block, 16, 3, 5), 1, "bfloat16", device=DEVICE, seed=_seed())
    p = case.packed
    if block == "convfirst":
        op, args = torch.ops.convfirst.convfirst_block_fused.default, (case.inputs[0], p["w_taps"], p["b_g"],
                                                                        p["we_t"], p["b_e"], p["wp_t"], p["b_p"])
    else:
        op, args = torch.ops.convfirst.mbconv_block_fused.default, (case.inputs[0], p["we_t"], p["b_e"],
                                                                     p["w_taps"], p["b_g"], p["wp_t"], p["b_p"])
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.convfirst.grouped_conv3x3_gw8.default,
                          (case.inputs[0], pack_grouped_taps(torch.randn(16, 8, 3, 3, device=DEVICE), torch.bfloat16),
                           torch.zeros(16, device=DEVICE)), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
def test_every_family_shape_on_gpu():
    """Every distinct block shape of both families (and odd spatial sizes) at batch 1, fused and unfused."""
    from convfirst.bench_blocks import run_check

    df = run_check(family_check_shapes(), [1], ["bfloat16"], progress=False)
    bad = df[~df["passed"]]
    assert bad.empty, bad.to_string()


@pytest.mark.parametrize("block", ["convfirst", "mbconv"])
def test_eager_call_matches_the_custom_op_and_defers_to_it_when_compiling(block, monkeypatch):
    """``run_*_fused`` (what the modules call in eager mode, without the dispatcher) gives the op's output
    bit for bit, and calls the op itself while torch.compile/export traces."""
    from convfirst.kernels import convfirst_fused, mbconv_fused

    module = convfirst_fused if block == "convfirst" else mbconv_fused
    run = module.run_convfirst_fused if block == "convfirst" else module.run_mbconv_fused
    op_name = f"{block}_block_fused"
    c = 16
    p = _on(_packed(block, c))
    x = _x(c)
    args = ((p["w_taps"], p["b_g"], p["we_t"], p["b_e"], p["wp_t"], p["b_p"]) if block == "convfirst"
            else (p["we_t"], p["b_e"], p["w_taps"], p["b_g"], p["wp_t"], p["b_p"]))
    assert torch.equal(run(x, *args), getattr(module, op_name)(x, *args))
    calls = []
    op = getattr(module, op_name)
    monkeypatch.setattr(module, op_name, lambda *a: calls.append(a) or op(*a))
    run(x, *args)
    assert not calls
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    run(x, *args)
    assert len(calls) == 1
