"""The pair kernel (both 1x1 layers of a ConvFirst block in one launch) and the sequence path that chooses it.

On the CPU the kernel cannot run (Gluon has no interpreter): these tests check the choice logic, the fallback to
the two GEMMs, the input checks and the custom op; its compile is checked in ``test_kernel_tools``. On a Hopper
GPU the same file checks its values against fp64 at real sizes, in eager calls and inside a CUDA graph.
"""
from __future__ import annotations

import math
import os

import pytest
import torch

from convfirst.bench_blocks import TOLERANCE, relative_error
from convfirst.blocks import ConvFirstBlock
from convfirst.kernels import KernelInputError, interpreting, pair_ws, unfused
from convfirst.kernels.modules import SequenceConvFirstBlock

ON_GPU = torch.cuda.is_available() and not interpreting()
DEVICE = "cuda" if ON_GPU else "cpu"
PAIR_HERE = ON_GPU and pair_ws.HAVE_GLUON and torch.cuda.get_device_capability()[0] == 9


def _gen():
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))


def _pair_operands(m, c, dtype=torch.bfloat16, gen=None, expansion=4):
    gen = gen or _gen()
    h = expansion * c
    y = torch.randn(m, c, generator=gen).to(DEVICE, dtype)
    we_t = (torch.randn(c, h, generator=gen) / math.sqrt(c)).to(DEVICE, dtype)
    wp_t = (torch.randn(h, c, generator=gen) / math.sqrt(h)).to(DEVICE, dtype)
    b_e = (0.1 * torch.randn(h, generator=gen)).to(DEVICE)
    b_p = (0.1 * torch.randn(c, generator=gen)).to(DEVICE)
    return y, we_t, b_e, wp_t, b_p, torch.randn(m, c, generator=gen).to(DEVICE, dtype)


def test_expand_project_matches_the_reference_on_its_fallback_or_kernel():
    """The public entry: on the CPU (and wherever the kernel cannot run) it is the two GEMMs; on a Hopper GPU,
    at a 256@14 shape, the faster of the kernel and the GEMMs. Either way the values match fp64."""
    m, c = (60, 32) if not ON_GPU else (256 * 196, 256)
    ops = _pair_operands(m, c)
    out = unfused.expand_project(*ops)
    assert out.shape == (m, c) and out.dtype == ops[0].dtype
    assert relative_error(out, pair_ws.pair_reference(*ops)) < TOLERANCE["bfloat16"]


def test_the_choice_is_timed_once_per_shape_and_kept_for_captures(monkeypatch):
    """Where the kernel can run, the two GEMMs and every candidate chunking are timed at a shape's first call
    outside a capture and the fastest is kept (not re-timed); a capture that meets a shape never timed runs the
    two GEMMs; where the kernel cannot run nothing is timed."""
    timed, launched, capturing = [], [], [False]
    configs = pair_ws.pair_configs(256)

    def fake_pick(runs, timer=None):
        timed.append(sorted(runs))
        return str(configs[1])
    monkeypatch.setattr("convfirst.kernels._common.pick_fastest", fake_pick)
    monkeypatch.setattr(pair_ws, "pair_usable", lambda *a: True)
    monkeypatch.setattr(pair_ws, "launch_pair", lambda *a: launched.append(a[-1]))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    two = []
    y, we_t, b_e, wp_t, b_p, res = _pair_operands(8, 256)
    pair_ws.PAIR_CHOICE.clear()
    try:
        pair_ws.expand_project(y, we_t, b_e, wp_t, b_p, res, lambda: two.append(1))
        assert timed == [sorted(["two-gemm"] + [str(cf) for cf in configs])] and launched == [configs[1]]
        capturing[0] = True
        pair_ws.expand_project(y, we_t, b_e, wp_t, b_p, res, lambda: two.append(1))
        assert len(timed) == 1 and launched == [configs[1]] * 2 and not two
        y2 = y[:4].contiguous()
        pair_ws.expand_project(y2, we_t, b_e, wp_t, b_p, res[:4].contiguous(), lambda: two.append(1))
        assert len(timed) == 1 and two == [1]  # a shape never timed, in a capture: the two GEMMs
        monkeypatch.setattr(pair_ws, "pair_usable", lambda *a: False)
        capturing[0] = False
        pair_ws.expand_project(y2, we_t, b_e, wp_t, b_p, res[:4].contiguous(), lambda: two.append(1))
        assert len(timed) == 1 and two == [1, 1]
    finally:
        pair_ws.PAIR_CHOICE.clear()


def test_the_kernel_is_not_offered_where_it_cannot_run():
    y, we_t, b_e, wp_t, b_p, res = _pair_operands(8, 64)
    if not PAIR_HERE:
        assert not pair_ws.pair_usable(y, we_t, wp_t, res)
    assert pair_ws.pair_supported(384, 1536).startswith("C=384")
    assert "multiple of 64" in pair_ws.pair_supported(256, 1000)
    assert pair_ws.pair_supported(256, 1024) is None
    assert all(pair_ws.pair_smem_bytes(c, cf) <= 220 * 1024 for c in (64, 128, 256) for cf in pair_ws.pair_configs(c))


def test_bad_input_is_named():
    y, we_t, b_e, wp_t, b_p, res = _pair_operands(8, 32)
    with pytest.raises(KernelInputError, match="dtype torch.float32"):
        unfused.expand_project(y.float(), we_t, b_e, wp_t, b_p, res)
    with pytest.raises(KernelInputError, match="weight dtype torch.float16"):
        unfused.expand_project(y, we_t, b_e, wp_t.half(), b_p, res)
    with pytest.raises(KernelInputError, match=r"contiguous \[K=128, N\]"):
        unfused.expand_project(y, we_t, b_e, wp_t[:64], b_p, res)
    with pytest.raises(KernelInputError, match="the residual add needs them equal"):
        unfused.expand_project(y, we_t, b_e, wp_t[:, :16].contiguous(), b_p[:16], res)
    with pytest.raises(KernelInputError, match="residual must be a contiguous"):
        unfused.expand_project(y, we_t, b_e, wp_t, b_p, res[:4])
    with pytest.raises(KernelInputError, match=r"bias must be a contiguous tensor of shape \(32,\)"):
        unfused.expand_project(y, we_t, b_e, wp_t, b_p[:5], res)


def test_the_op_has_a_fake_implementation():
    torch.library.opcheck(unfused.expand_project_op, _pair_operands(8, 32),
                          test_utils=("test_schema", "test_faketensor"))


def test_sequence_block_runs_its_backend_and_refuses_an_unknown_one(monkeypatch):
    """The models' sequence block runs ``SEQUENCE_GEMM`` (default "pair") and gives the block's output; a
    misspelt value is named."""
    c, hw = (24, 6) if not ON_GPU else (256, 14)
    block = ConvFirstBlock(c).eval()
    for bn in (block.bn_g, block.bn_e, block.bn_p):  # non-trivial folded BatchNorms
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
    seq = SequenceConvFirstBlock.from_block(block).to(DEVICE)
    x = torch.randn(2, c, hw, hw, device=DEVICE).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = block.to(DEVICE).to(torch.bfloat16).float()(x.float())
    assert unfused.SEQUENCE_GEMM == os.environ.get("CONVFIRST_SEQUENCE_GEMM", "pair")
    assert relative_error(seq(x), expected) < 1.5e-2
    monkeypatch.setattr(unfused, "SEQUENCE_GEMM", "pairs")
    with pytest.raises(KernelInputError, match="gemm='pairs'"):
        seq(x)


@pytest.mark.skipif(not PAIR_HERE, reason="the pair kernel runs only on a Hopper GPU")
@pytest.mark.parametrize("c", [64, 128, 256])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_every_chunking_matches_fp64(c, dtype):
    """Every candidate at row counts that leave a partial tile, a partial last wave of programs and about three
    tiles per program, into NaN-poisoned outputs."""
    sms = torch.cuda.get_device_properties(DEVICE).multi_processor_count
    for m in (196, 1000, pair_ws.TILE_ROWS * 3 * sms + 37):
        ops = _pair_operands(m, c, getattr(torch, dtype))
        ref = pair_ws.pair_reference(*ops)
        for cf in pair_ws.pair_configs(c):
            out = torch.full((m, c), float("nan"), device=DEVICE, dtype=ops[0].dtype)
            pair_ws.launch_pair(*ops, out, cf)
            err = relative_error(out, ref)
            assert err < TOLERANCE[dtype], f"M={m} C={c} {cf}: rel err {err:.3g}"


@pytest.mark.skipif(not PAIR_HERE, reason="the pair kernel runs only on a Hopper GPU")
def test_the_chosen_path_in_a_cuda_graph_matches_fp64():
    """As a model under CUDA graphs runs it: an eager call (which times and chooses), then a captured call
    replayed on new inputs."""
    m, c = 256 * 196, 256
    ops = _pair_operands(m, c)
    unfused.expand_project(*ops)
    assert (m, c, 4 * c, ops[0].dtype, ops[0].device) in pair_ws.PAIR_CHOICE
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = unfused.expand_project(*ops)
    fresh = _pair_operands(m, c)
    for t, f in zip(ops, fresh):
        t.copy_(f)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert relative_error(out, pair_ws.pair_reference(*ops)) < TOLERANCE["bfloat16"], pair_ws.PAIR_CHOICE
