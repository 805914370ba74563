"""The epilogue-fused GEMM and the patchify conv (``convfirst.kernels.gemm``) against fp32 references.

CPU: Triton's interpreter at tiny sizes; GPU: real sizes and every autotuning candidate. Fresh random inputs
every run, NaN-poisoned outputs.
"""
from __future__ import annotations

import copy
import math
import os

if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import triton

from convfirst.bench_blocks import TOLERANCE, BlockCase, BlockShape, relative_error
from convfirst.kernels import KernelInputError, PatchifyConv2d, interpreting
from convfirst.kernels import gemm, gemm_ws
from convfirst.kernels.unfused import GEMM_BACKENDS, convfirst_block_unfused, mbconv_block_unfused

ON_GPU = torch.cuda.is_available() and not interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"
# (M, K, N): M not a multiple of any tile, K below / not a multiple of the K step
SIZES = [(37, 48, 40), (70, 96, 24)] if not ON_GPU else [(1000, 96, 384), (50176, 384, 1536), (50176, 256, 1024),
                                                          (777, 1536, 384),
                                                          (257, 48, 80)]


def _gen():
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))


def _operands(m, k, n, dtype, gen):
    a = torch.randn(m, k, generator=gen).to(DEVICE, dtype)
    w_t = (torch.randn(k, n, generator=gen) / math.sqrt(k)).to(DEVICE, dtype)
    bias = (0.1 * torch.randn(n, generator=gen)).to(DEVICE)
    res = torch.randn(m, n, generator=gen).to(DEVICE, dtype)
    return a, w_t, bias, res


WS_HERE = gemm_ws.ws_available(torch.device(DEVICE))


@pytest.mark.parametrize("form", gemm.FORMS)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("act, with_residual", [("none", False), ("silu", False), ("none", True), ("silu", True)])
@pytest.mark.parametrize("m, k, n", SIZES)
def test_matmul_epilogue_matches_reference(m, k, n, act, with_residual, dtype, form):
    if form == "gluon-ws" and not WS_HERE:
        pytest.skip("the Gluon form runs only on a Hopper GPU (the interpreter does not execute Gluon)")
    a, w_t, bias, res = _operands(m, k, n, getattr(torch, dtype), _gen())
    assert a.abs().sum() > 0
    residual = res if with_residual else None
    out = torch.full((m, n), float("nan"), device=DEVICE, dtype=a.dtype)
    gemm.launch_matmul(a, w_t, bias, act, residual, out=out, form=form)
    err = relative_error(out, gemm.matmul_reference(a, w_t, bias, act, residual))
    assert err < TOLERANCE[dtype], f"{m}x{k}x{n} {act} residual={with_residual}: rel err {err:.3g}"


def _candidates():
    """(form, config): every autotuning candidate of both forms on the GPU, so none that the autotuner may pick
    is untested; small tiles in the interpreter."""
    if ON_GPU:
        from convfirst.kernels._common import launch_kwargs
        return ([("pointer", launch_kwargs(cf)) for cf in gemm.gemm_configs()]
                + [("tma", launch_kwargs(cf)) for cf in gemm.tma_configs()]
                + [("gluon-ws", cf) for cf in gemm_ws.ws_configs()])
    return [("pointer", gemm.heuristic_config(1, 1, 1)), ("tma", gemm.tma_heuristic_config()),
            ("pointer", {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 16, "GROUP_M": 2}),
            ("pointer", {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 2, "PERSISTENT": True}),
            ("tma", {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 16, "GROUP_M": 2}),
            ("tma", {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 2, "PERSISTENT": True})]


@pytest.mark.parametrize("form, config", _candidates(), ids=str)
def test_every_gemm_config_matches_reference(form, config):
    """Several row and column tiles; K both a multiple of every K step (the unmasked loop the 1x1 layers take)
    and not (a partial last step). With a residual where the config fits shared memory with one, else without."""
    if form == "gluon-ws" and not WS_HERE:
        pytest.skip("the Gluon form runs only on a Hopper GPU")
    residual_fits = form != "tma" or gemm.tma_config_fits(config, True)
    for m, k, n in ((300, 128, 96), (300, 80, 96)) if ON_GPU else ((45, 64, 72), (45, 40, 72)):
        a, w_t, bias, res = _operands(m, k, n, torch.bfloat16, _gen())
        res = res if residual_fits else None
        out = torch.full((m, n), float("nan"), device=DEVICE, dtype=a.dtype)
        gemm.launch_matmul(a, w_t, bias, "silu", res, config=config, out=out, form=form)
        err = relative_error(out, gemm.matmul_reference(a, w_t, bias, "silu", res))
        assert err < TOLERANCE["bfloat16"], f"{m}x{k}x{n}: rel err {err:.3g}"


def test_auto_form_times_the_candidates_once_per_shape(monkeypatch):
    """The default form: where the Gluon kernel can run, the TMA kernel and each ordered Gluon tile are timed at
    a shape's first eager call, and the fastest is kept for that shape (not re-timed) and run inside CUDA graph
    captures; eager calls run the TMA kernel (its launch costs less host time). A capture that meets a shape
    never timed runs the TMA kernel; without autotuning, or without Gluon on a Hopper GPU, nothing is timed."""
    tiles = gemm_ws.ws_configs(ordered=True)
    timed = []
    capturing = [False]

    def fake_pick(runs, timer=None):
        timed.append(sorted(runs))
        return str(tiles[1])
    monkeypatch.setattr(gemm, "pick_fastest", fake_pick)
    monkeypatch.setattr(gemm_ws, "ws_available", lambda device: True)
    monkeypatch.setattr(gemm, "autotuning", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    a, w_t, bias, _ = _operands(64, 32, 48, torch.bfloat16, _gen())
    args = (a, w_t, bias, None, torch.empty(64, 48, dtype=a.dtype, device=DEVICE), 64, 48, 32, "silu")
    gemm.AUTO_CHOICE.clear()
    try:
        assert gemm._auto_form(*args) == ("tma", None)                    # eager: timed, TMA runs
        assert timed == [sorted(["tma"] + [str(cf) for cf in tiles])]    # one timing of every candidate
        capturing[0] = True
        assert gemm._auto_form(*args) == ("gluon-ws", tiles[1])          # captured: the fastest
        assert len(timed) == 1
        assert gemm._auto_form(*args[:-1], "none") == ("tma", None)      # a shape never timed, in a capture
        assert len(timed) == 1
        capturing[0] = False
        gemm._auto_form(*args[:-1], "none")                               # another epilogue: another timing
        assert len(timed) == 2
        monkeypatch.setattr(gemm, "autotuning", lambda: False)
        assert gemm._auto_form(*args[:5], 128, 48, 32, "silu") == ("tma", None)
        assert len(timed) == 2
    finally:
        gemm.AUTO_CHOICE.clear()


@pytest.mark.skipif(not WS_HERE, reason="the Gluon form runs only on a Hopper GPU")
@pytest.mark.parametrize("act, with_res", [("silu", False), ("none", True)])
def test_auto_form_in_a_cuda_graph_matches_reference(act, with_res):
    """The default form as a model under CUDA graphs runs it: an eager call (which times the candidates), then a
    captured call replayed on new inputs, against fp64; the captured launch runs the form chosen for the shape."""
    m, k, n = 6000, 256, 1024
    a, w_t, bias, res = _operands(m, k, n, torch.bfloat16, _gen())
    res = res if with_res else None
    out = torch.empty(m, n, device=DEVICE, dtype=a.dtype)
    gemm.launch_matmul(a, w_t, bias, act, res, out=out, form="auto")  # eager: timing, then the TMA kernel
    assert (m, n, k, act, with_res, a.dtype, a.device) in gemm.AUTO_CHOICE
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gemm.launch_matmul(a, w_t, bias, act, res, out=out, form="auto")
    fresh = _operands(m, k, n, torch.bfloat16, _gen())
    a.copy_(fresh[0])
    if res is not None:
        res.copy_(fresh[3])
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    err = relative_error(out, gemm.matmul_reference(a, w_t, bias, act, res))
    assert err < TOLERANCE["bfloat16"], f"{act} residual={with_res} ({gemm.AUTO_CHOICE}): rel err {err:.3g}"


@pytest.mark.skipif(not WS_HERE, reason="the Gluon form runs only on a Hopper GPU")
@pytest.mark.parametrize("config", gemm_ws.ws_configs(), ids=str)
def test_gluon_gemm_walks_several_tiles_per_program(config):
    """Enough rows that each persistent program takes about ten tiles, some programs an odd number (so their two
    consumers get unequal counts), with a partial last row tile: the ring's phases, the consumers'
    turns (ordered form) and the staging tile's reuse across tiles, with the SiLU and with the residual."""
    sms = torch.cuda.get_device_properties(DEVICE).multi_processor_count
    m = config["BLOCK_M"] * (5 * sms + 1) + 37
    for act, with_res in (("silu", False), ("none", True)):
        a, w_t, bias, res = _operands(m, 256, 2 * config["BLOCK_N"], torch.bfloat16, _gen())
        res = res if with_res else None
        out = torch.full((m, w_t.shape[1]), float("nan"), device=DEVICE, dtype=a.dtype)
        gemm.launch_matmul(a, w_t, bias, act, res, config=config, out=out, form="gluon-ws")
        err = relative_error(out, gemm.matmul_reference(a, w_t, bias, act, res))
        assert err < TOLERANCE["bfloat16"], f"{config} {act} residual={with_res}: rel err {err:.3g}"


@pytest.mark.parametrize("padded_rows", [True, False])
@pytest.mark.parametrize("cin, cout, patch, h, w, batch", [(3, 16, 4, 8, 12, 2), (16, 24, 2, 6, 10, 1),
                                                           (5, 8, 3, 9, 6, 1)] if not ON_GPU
                         else [(3, 96, 4, 224, 224, 4), (96, 192, 2, 56, 56, 3), (384, 768, 2, 14, 14, 2),
                               (40, 24, 2, 6, 10, 1), (5, 8, 3, 9, 6, 1)])
def test_patchify_conv_matches_conv2d(cin, cout, patch, h, w, batch, padded_rows, monkeypatch):
    """Both ways of reading patch rows: value by value, and (where a row's P * CIN values are not a multiple of 8:
    the stem's 12, and 15 here) as masked runs of the next power of two."""
    monkeypatch.setattr(gemm, "PAD_PATCH_ROWS", padded_rows)
    run = patch * cin
    assert gemm.patch_rowpad(patch, cin) == (triton.next_power_of_2(run) if padded_rows and run % 8 else 0)
    gen = _gen()
    x = torch.randn(batch, cin, h, w, generator=gen).to(DEVICE, torch.bfloat16).contiguous(
        memory_format=torch.channels_last)
    weight = (torch.randn(cout, cin, patch, patch, generator=gen) / math.sqrt(cin * patch * patch)).to(
        DEVICE, torch.bfloat16)
    bias = (0.1 * torch.randn(cout, generator=gen)).to(DEVICE)
    out = torch.full((batch, cout, h // patch, w // patch), float("nan"), device=DEVICE,
                     dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    gemm.launch_patchify(x, gemm.patchify_weight(weight), bias, patch, out=out)
    ref = F.conv2d(x.double(), weight.double(), bias.double(), stride=patch)
    assert relative_error(out, ref) < TOLERANCE["bfloat16"]


def test_patchify_module_runs_the_kernel_on_half_precision_channels_last_input(monkeypatch):
    conv = nn.Conv2d(8, 16, 2, stride=2).to(DEVICE, torch.bfloat16)
    module = PatchifyConv2d.from_conv(conv).eval()
    calls = []
    real = gemm.patchify_conv
    monkeypatch.setattr("convfirst.kernels.modules.patchify_conv", lambda *a: calls.append(a) or real(*a))
    x = torch.randn(2, 8, 6, 4, device=DEVICE).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = module(x)
        expected = F.conv2d(x.float(), conv.weight.float(), conv.bias.float(), stride=2)
    assert len(calls) == 1 and got.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(got, expected) < TOLERANCE["bfloat16"]
    bias = conv.bias.float()[None, :, None, None]
    with torch.no_grad():  # a changed weight is seen (the packed copy is rebuilt)
        module.weight.mul_(2)
        assert relative_error(module(x), 2 * expected - bias) < TOLERANCE["bfloat16"]
        module.bias = nn.Parameter(module.bias + 5)           # a replaced bias too
        assert relative_error(module(x), 2 * expected - bias + 5) < TOLERANCE["bfloat16"]
        copied = copy.deepcopy(module)                        # a copy packs its own tensors
        assert "_kernel_cache" not in copied.__dict__
        copied.weight.mul_(0.5)
        copied.weight.mul_(2)
        copied.weight.mul_(0.5)
        assert relative_error(copied(x), expected + 5) < TOLERANCE["bfloat16"]
        assert relative_error(module(x), 2 * expected - bias + 5) < TOLERANCE["bfloat16"]


def test_patchify_module_keeps_autograd_when_gradients_are_wanted():
    """With gradients on, the module takes the differentiable addmm path (the kernel has no backward)."""
    module = PatchifyConv2d.from_conv(nn.Conv2d(8, 16, 2, stride=2).to(DEVICE, torch.bfloat16)).train()
    x = torch.randn(2, 8, 4, 4, device=DEVICE).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    assert not module._uses_kernel(x)
    module(x).float().sum().backward()
    assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert module._uses_kernel(x)


def test_fold_conv_bn_leaves_an_inference_form_that_runs_the_kernel_without_no_grad():
    from convfirst.kernels import fold_conv_bn

    model = nn.Sequential(nn.Sequential(nn.Conv2d(8, 16, 2, stride=2, bias=False), nn.BatchNorm2d(16))).eval()
    fold_conv_bn(model)
    conv = model[0][0]
    assert isinstance(conv, PatchifyConv2d) and not any(p.requires_grad for p in conv.parameters())
    conv.to(DEVICE, torch.bfloat16)
    x = torch.randn(1, 8, 4, 6, device=DEVICE).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    assert conv._uses_kernel(x)


@pytest.mark.parametrize("block", ["convfirst", "mbconv"])
def test_sequence_backends_agree_with_the_reference(block):
    shape = BlockShape(block, 24, 5, 6) if not ON_GPU else BlockShape(block, 384 if block == "convfirst" else 256, 14, 14)
    case = BlockCase(shape, 2, "bfloat16", device=DEVICE, seed=int.from_bytes(os.urandom(4), "little"))
    x = case.inputs[0]
    ref = case.reference(x)
    run = convfirst_block_unfused if block == "convfirst" else mbconv_block_unfused
    for backend in GEMM_BACKENDS:
        out = run(x, case.packed, gemm=backend)
        assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
        assert relative_error(out, ref) < TOLERANCE["bfloat16"], backend
    with pytest.raises(KernelInputError, match="gemm='cutlass'"):
        run(x, case.packed, gemm="cutlass")


@pytest.mark.skipif(WS_HERE, reason="here the Gluon form can run")
def test_gluon_form_without_a_hopper_gpu_is_refused_by_name():
    a, w_t, bias, _ = _operands(16, 16, 16, torch.bfloat16, _gen())
    with pytest.raises(KernelInputError, match="form='gluon-ws' needs Triton's Gluon and a Hopper"):
        gemm.launch_matmul(a, w_t, bias, form="gluon-ws")


def test_bad_input_is_named():
    a, w_t, bias, res = _operands(8, 16, 24, torch.bfloat16, _gen())
    with pytest.raises(KernelInputError, match="dtype torch.float32"):
        gemm.matmul_bias_act(a.float(), w_t, bias)
    with pytest.raises(KernelInputError, match="weight dtype torch.float16"):
        gemm.matmul_bias_act(a, w_t.half(), bias)
    with pytest.raises(KernelInputError, match=r"contiguous \[K=16, N\]"):
        gemm.matmul_bias_act(a, w_t[:8], bias)
    with pytest.raises(KernelInputError, match="contiguous \\[M, K\\]"):
        gemm.matmul_bias_act(a.t(), w_t, bias)
    with pytest.raises(KernelInputError, match=r"bias must be a contiguous tensor of shape \(24,\)"):
        gemm.matmul_bias_act(a, w_t, bias[:5])
    with pytest.raises(KernelInputError, match="bias must be a contiguous"):  # a strided view would be misread
        gemm.matmul_bias_act(a, w_t, torch.stack([bias, bias], 1)[:, 0])
    with pytest.raises(KernelInputError, match="act='gelu'"):
        gemm.matmul_bias_act(a, w_t, bias, "gelu")
    with pytest.raises(KernelInputError, match="residual must be"):
        gemm.matmul_bias_act(a, w_t, bias, "none", res[:4])
    x = torch.randn(1, 8, 6, 5, device=DEVICE).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w8 = torch.randn(32, 4, device=DEVICE).to(torch.bfloat16)
    with pytest.raises(KernelInputError, match="multiples of the patch size 2"):
        gemm.patchify_conv(x, w8, torch.zeros(4, device=DEVICE), 2)
    with pytest.raises(KernelInputError, match="channels_last"):
        gemm.patchify_conv(x.contiguous()[..., :4], w8, torch.zeros(4, device=DEVICE), 2)
    with pytest.raises(KernelInputError, match="patch=0"):
        gemm.patchify_conv(x, w8, torch.zeros(4, device=DEVICE), 0)


def test_ops_have_fake_implementations():
    a, w_t, bias, res = _operands(8, 16, 24, torch.bfloat16, _gen())
    torch.library.opcheck(gemm.matmul_bias_act_op, (a, w_t, bias, "silu", res),
                          test_utils=("test_schema", "test_faketensor"))
    x = torch.randn(1, 8, 4, 6, device=DEVICE).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(gemm.patchify_conv_op, (x, torch.randn(32, 4, device=DEVICE).to(torch.bfloat16),
                                                  torch.zeros(4, device=DEVICE), 2),
                          test_utils=("test_schema", "test_faketensor"))
