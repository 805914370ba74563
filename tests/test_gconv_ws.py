"""The warp-specialised grouped conv (``kernels/gconv_ws.py``) and the launcher's choice of it.

On the CPU the kernel cannot run (Gluon has no interpreter): these tests check the widths it takes, how a program's
channels are split, its configs' shared memory, the error a forced launch gives and the choice logic; its sm_90
compile is checked in ``test_kernel_tools``. On a Hopper GPU the same file checks every config against the fp32
reference at stage shapes and odd sizes, with and without SiLU, in both dtypes, and the chosen launch inside a CUDA
graph.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convfirst.bench_blocks import TOLERANCE, BlockCase, BlockShape, relative_error
from convfirst.kernels import KernelInputError, gconv, gconv_ws, interpreting

ON_GPU = torch.cuda.is_available() and not interpreting()
WS_HERE = ON_GPU and gconv_ws.HAVE_GLUON and torch.cuda.get_device_capability()[0] == 9
DEVICE = "cuda" if ON_GPU else "cpu"


def test_widths_channel_ranges_and_configs_that_fit():
    for c in (32, 64, 96, 256, 384, 768, 1024):
        assert gconv_ws.ws_gconv_supported(c) is None
    for c in (8, 16, 40, 200):
        assert "multiple of 32" in gconv_ws.ws_gconv_supported(c)
    # a program keeps the weights of its channel range on chip: all C where that fits beside its rings, else an
    # even split into groups of QB boxes
    one_box = {"TILE_H": 8, "TILE_W": 8, "TAP_STAGES": 4, "OUT_STAGES": 2, "QB": 1, "HALO": True}
    two_box = dict(one_box, QB=2, TAP_STAGES=3)
    assert [gconv_ws.channel_range(c, one_box) for c in (64, 384, 512, 768, 1024)] == [64, 384, 256, 384, 256]
    assert gconv_ws.channel_range(96, two_box) == 0  # 96 channels are not whole groups of two boxes
    for c in (32, 64, 96, 192, 256, 384, 768, 1024):
        configs = gconv_ws.ws_gconv_configs(c)
        assert configs
        for cf in configs:
            assert c % cf["CS"] == 0 and cf["CS"] % (32 * cf["QB"]) == 0
            assert gconv_ws.ws_gconv_smem_bytes(c, cf) <= gconv_ws.SMEM_LIMIT
    assert gconv_ws.ws_gconv_configs(40) == []
    # the accounting grows with every buffer it counts
    cf = dict(gconv_ws.ws_gconv_configs(64)[0])
    for key in ("TAP_STAGES", "OUT_STAGES"):
        assert gconv_ws.ws_gconv_smem_bytes(64, dict(cf, **{key: cf[key] + 1})) > gconv_ws.ws_gconv_smem_bytes(64, cf)
    for key in ("CS", "QB"):
        assert gconv_ws.ws_gconv_smem_bytes(64, dict(cf, **{key: 2 * cf[key]})) > gconv_ws.ws_gconv_smem_bytes(64, cf)


@pytest.mark.skipif(WS_HERE, reason="checks the refusal where the kernel cannot run")
def test_a_forced_launch_where_it_cannot_run_is_refused_by_name():
    case = BlockCase(BlockShape("gconv", 64, 8, 8), 1, "bfloat16", device=DEVICE)
    with pytest.raises(KernelInputError, match="warp-specialised form .* Hopper"):
        case.launch_poisoned(case.inputs[0], gconv_ws.ws_gconv_configs(64)[0])


def test_the_choice_is_timed_once_per_shape_and_used_in_captures(monkeypatch):
    """Where the kernel can run, the autotuned Triton kernel and every config are timed (by GPU time, from CUDA
    graphs) at a shape's first call outside a capture, separately with and without SiLU; the winner runs inside
    captures, the Triton kernel eagerly; a capture meeting an untimed shape keeps the Triton kernel; switched off,
    nothing is timed."""
    timed, capturing = [], [False]
    configs = gconv_ws.ws_gconv_configs(64)

    def fake_pick(runs, timer=None):
        timed.append((sorted(runs), timer))
        return str(configs[0])
    monkeypatch.setattr(gconv, "pick_fastest", fake_pick)
    monkeypatch.setattr(gconv_ws, "ws_gconv_usable", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    case = BlockCase(BlockShape("gconv", 64, 8, 8), 1, "bfloat16", device=DEVICE)
    p, x = case.packed, case.inputs[0]
    args = (x, p["w_taps"], p["b_g"], torch.empty_like(x))
    gconv.WS_CHOICE.clear()
    try:
        assert gconv._ws_choice(*args, False, lambda: None) is None  # eager: the Triton kernel, after timing
        assert timed == [(sorted(["triton"] + [str(cf) for cf in configs]), gconv.graph_ms)]
        capturing[0] = True
        assert gconv._ws_choice(*args, False, lambda: None) == configs[0] and len(timed) == 1
        assert gconv.last_ws_config(x) == configs[0] and gconv.last_ws_config(x, apply_silu=True) is None
        x2 = torch.randn(2, 64, 8, 8, device=DEVICE).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        assert gconv._ws_choice(x2, *args[1:], False, lambda: None) is None and len(timed) == 1
        capturing[0] = False
        gconv._ws_choice(*args, True, lambda: None)
        assert len(timed) == 2 and gconv.WS_CHOICE[(64, 8, 8, 64, "torch.bfloat16", True)] == configs[0]
        monkeypatch.setattr(gconv, "WS_GCONV", False)
        gconv.WS_CHOICE.clear()
        assert gconv._ws_choice(*args, False, lambda: None) is None and len(timed) == 2
    finally:
        gconv.WS_CHOICE.clear()


SHAPES = [(BlockShape("gconv", 96, 56, 56), 2), (BlockShape("gconv", 64, 56, 56), 1),
          (BlockShape("gconv", 192, 28, 28), 2), (BlockShape("gconv", 384, 14, 14), 3),
          (BlockShape("gconv", 768, 7, 7), 2), (BlockShape("gconv", 256, 14, 14), 1),
          (BlockShape("gconv", 1024, 14, 14), 1), (BlockShape("gconv", 64, 13, 11), 1),
          (BlockShape("gconv", 32, 9, 15), 3), (BlockShape("gconv", 160, 29, 31), 1)]


@pytest.mark.skipif(not WS_HERE, reason="the warp-specialised grouped conv runs only on a Hopper GPU")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("shape,batch", SHAPES, ids=[f"{s.C}@{s.H}x{s.W}-n{b}" for s, b in SHAPES])
def test_every_config_matches_the_reference(shape, batch, dtype):
    """Every candidate config into a NaN-poisoned output, with and without SiLU: image sizes that are not multiples
    of the patch, odd numbers of patches, batch 1, channels split among programs (C = 768, 1024)."""
    case = BlockCase(shape, batch, dtype)
    x = case.inputs[0]
    ref = case.reference(x)
    p = case.packed
    configs = gconv_ws.ws_gconv_configs(shape.C)
    if gconv_ws.HALO_VIEWS:  # the single-tap form too, which newer Tritons compile instead
        configs += gconv_ws.ws_gconv_configs(shape.C, halo=False)
    assert configs
    for cf in configs:
        err = relative_error(case.launch_poisoned(x, cf), ref)
        assert err < TOLERANCE[dtype], f"{shape.label} N={batch} {cf}: rel err {err:.3g}"
    silu_ref = F.silu(ref.float())
    for cf in configs[:2]:
        out = torch.full_like(x, float("nan"))
        gconv.launch_grouped_conv3x3(x, p["w_taps"], p["b_g"], out, apply_silu=True, config=cf)
        err = relative_error(out, silu_ref)
        assert err < TOLERANCE[dtype], f"{shape.label} N={batch} {cf} SiLU: rel err {err:.3g}"


@pytest.mark.skipif(not WS_HERE, reason="the warp-specialised grouped conv runs only on a Hopper GPU")
def test_the_chosen_launch_in_a_cuda_graph_matches_the_reference(replay_captured):
    """As a model under CUDA graphs runs it: an eager call (which times the forms and chooses), then a captured
    launch replayed on a new input."""
    case = BlockCase(BlockShape("gconv", 384, 14, 14), 64, "bfloat16")
    p, x = case.packed, case.inputs[0]
    out = torch.empty_like(x)
    replay_captured(lambda: gconv.launch_grouped_conv3x3(x, p["w_taps"], p["b_g"], out),
                    lambda: x.copy_(case.new_input(torch.Generator().manual_seed(7), "cuda")))
    assert relative_error(out, case.reference(x)) < TOLERANCE["bfloat16"], gconv.WS_CHOICE
