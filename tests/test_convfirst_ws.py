"""The warp-specialised fused ConvFirst kernel (v8, ``kernels/convfirst_ws.py``) and the launcher's choice of it.

On the CPU the kernel cannot run (Gluon has no interpreter): these tests check what it accepts, its configs'
shared memory, the error a forced launch gives and the choice logic; its sm_90 compile is checked in
``test_kernel_tools``. On a Hopper GPU the same file checks every config against the fp32 reference at real
and odd sizes, in both dtypes, and the autotuned path inside a CUDA graph.
"""
from __future__ import annotations

import pytest
import torch

from convfirst.bench_blocks import TOLERANCE, BlockCase, BlockShape, relative_error
from convfirst.kernels import KernelInputError, convfirst_fused, convfirst_ws, interpreting

ON_GPU = torch.cuda.is_available() and not interpreting()
WS_HERE = ON_GPU and convfirst_ws.HAVE_GLUON and torch.cuda.get_device_capability()[0] == 9
DEVICE = "cuda" if ON_GPU else "cpu"


def test_widths_it_takes_and_configs_that_fit():
    for c in (32, 64, 96, 128, 160, 192):
        assert convfirst_ws.ws_block_supported(c, 4 * c) is None
    for c in (224, 256, 384):  # accumulators of 256 columns do not fit under the register cap
        assert "from 32 to 192" in convfirst_ws.ws_block_supported(c, 4 * c)
    assert "multiple of 32" in convfirst_ws.ws_block_supported(48, 192)
    assert "multiple of 64" in convfirst_ws.ws_block_supported(64, 224)
    for c in (32, 64, 96, 128, 160, 192):
        configs = convfirst_ws.ws_configs(c)
        assert configs and all(convfirst_ws.ws_smem_bytes(c, cf) <= 220 * 1024 for cf in configs)
    # past 128 accumulator columns: 32-wide hidden chunks and one stage of grouped-conv output
    assert {(cf["BH"], cf["G_STAGES"]) for cf in convfirst_ws.ws_configs(192)} == {(32, 1)}
    assert {cf["G_STAGES"] for c in (32, 64, 96, 128) for cf in convfirst_ws.ws_configs(c)} == {2}
    # the accounting grows with every buffer it counts
    cf = dict(convfirst_ws.ws_configs(64)[0])
    more = dict(cf, TAP_STAGES=cf["TAP_STAGES"] + 1)
    assert convfirst_ws.ws_smem_bytes(64, more) > convfirst_ws.ws_smem_bytes(64, cf)


@pytest.mark.skipif(WS_HERE, reason="checks the refusal where the kernel cannot run")
def test_a_forced_launch_where_it_cannot_run_is_refused_by_name():
    case = BlockCase(BlockShape("convfirst", 32, 8, 8), 1, "bfloat16", device=DEVICE)
    with pytest.raises(KernelInputError, match="warp-specialised form .* Hopper"):
        case.launch_poisoned(case.inputs[0], convfirst_ws.ws_configs(32)[0])


def test_the_choice_is_timed_once_per_shape_and_not_in_a_capture(monkeypatch):
    """Where the kernel can run, the best Triton kernel and every config are timed at a shape's first call outside a
    capture and the winner is kept; a capture meeting an untimed shape keeps the Triton kernel; where the kernel
    cannot run nothing is timed."""
    timed, capturing = [], [False]
    configs = convfirst_ws.ws_configs(64)

    def fake_pick(runs, timer=None):
        timed.append(sorted(runs))
        return str(configs[0])
    monkeypatch.setattr(convfirst_fused, "pick_fastest", fake_pick)
    monkeypatch.setattr(convfirst_ws, "ws_block_usable", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    case = BlockCase(BlockShape("convfirst", 64, 8, 8), 1, "bfloat16", device=DEVICE)
    p, x = case.packed, case.inputs[0]
    args = (x, p["w_taps"], p["b_g"], p["we_t"], p["b_e"], p["wp_t"], p["b_p"], torch.empty_like(x))
    convfirst_fused.WS_CHOICE.clear()
    try:
        assert convfirst_fused._ws_choice(*args, lambda: None) == configs[0]
        assert timed == [sorted(["triton"] + [str(cf) for cf in configs])]
        assert convfirst_fused._ws_choice(*args, lambda: None) == configs[0] and len(timed) == 1
        capturing[0] = True
        x2 = torch.randn(2, 64, 8, 8, device=DEVICE).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        assert convfirst_fused._ws_choice(x2, *args[1:], lambda: None) is None and len(timed) == 1
        monkeypatch.setattr(convfirst_fused, "WS_BLOCK", False)
        capturing[0] = False
        assert convfirst_fused._ws_choice(*args, lambda: None) is None and len(timed) == 1
    finally:
        convfirst_fused.WS_CHOICE.clear()


SHAPES = [(BlockShape("convfirst", 64, 56, 56), 2), (BlockShape("convfirst", 96, 56, 56), 3),
          (BlockShape("convfirst", 128, 28, 28), 2), (BlockShape("convfirst", 32, 56, 56), 1),
          (BlockShape("convfirst", 64, 13, 11), 1), (BlockShape("convfirst", 96, 9, 15), 1),
          (BlockShape("convfirst", 128, 29, 31), 1), (BlockShape("convfirst", 96, 7, 7), 1),
          (BlockShape("convfirst", 192, 28, 28), 2), (BlockShape("convfirst", 192, 11, 13), 1),
          (BlockShape("convfirst", 160, 14, 14), 1)]


@pytest.mark.skipif(not WS_HERE, reason="the warp-specialised kernel runs only on a Hopper GPU")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("shape,batch", SHAPES, ids=[f"{s.C}@{s.H}x{s.W}-n{b}" for s, b in SHAPES])
def test_every_config_matches_the_reference(shape, batch, dtype):
    """Every candidate config into a NaN-poisoned output: image sizes that are not multiples of the patch, an
    odd number of patches (the last pair's second patch is a copy whose output is masked), batch 1."""
    case = BlockCase(shape, batch, dtype)
    x = case.inputs[0]
    ref = case.reference(x)
    configs = convfirst_ws.ws_configs(shape.C)
    if convfirst_ws.HALO_VIEWS:  # the single-tap form too, which newer Tritons compile instead
        configs += convfirst_ws.ws_configs(shape.C, halo=False)
    for cf in configs:
        err = relative_error(case.launch_poisoned(x, cf), ref)
        assert err < TOLERANCE[dtype], f"{shape.label} N={batch} {cf}: rel err {err:.3g}"


@pytest.mark.skipif(not WS_HERE, reason="the warp-specialised kernel runs only on a Hopper GPU")
def test_the_autotuned_launch_in_a_cuda_graph_matches_the_reference(replay_captured):
    """As a model under CUDA graphs runs the block: an eager call (which times the kernels and chooses), then a
    captured launch replayed on a new input."""
    case = BlockCase(BlockShape("convfirst", 96, 56, 56), 64, "bfloat16")
    p, x = case.packed, case.inputs[0]
    out = torch.empty_like(x)
    replay_captured(lambda: convfirst_fused.launch_convfirst_block(x, p["w_taps"], p["b_g"], p["we_t"], p["b_e"],
                                                                   p["wp_t"], p["b_p"], out),
                    lambda: x.copy_(case.new_input(torch.Generator().manual_seed(7), "cuda")))
    assert relative_error(out, case.reference(x)) < TOLERANCE["bfloat16"], convfirst_fused.WS_CHOICE
