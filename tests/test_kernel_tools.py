"""The tools around the kernels: the SiLU identity of the GPU path, sm_90 code generation, register-cap
pruning, launch options, the Nsight Compute report parser, and the commit stamp of GPU-machine rows."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from convfirst import bench_models as bm
from convfirst.kernels import convfirst_fused, mbconv_fused, ncu_report
from convfirst.kernels._common import launch_kwargs
from convfirst.provenance import REPO_ROOT, git_commit


def test_silu_identity_of_the_gpu_path():
    # the GPU path computes h + h * tanh(h) with h = x / 2; it must equal x * sigmoid(x)
    x = torch.linspace(-30, 30, 20001, dtype=torch.float64)
    h = 0.5 * x
    torch.testing.assert_close(h + h * torch.tanh(h), x * torch.sigmoid(x), rtol=1e-12, atol=1e-12)


def _compile_outside_interpreter(code: str) -> dict:
    """Run ``code`` (which compiles for sm_90 and prints one JSON line last) in a fresh Python without
    ``TRITON_INTERPRET``, and return that JSON."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_gpu_path_compiles_to_hardware_tanh_without_the_reciprocal():
    """Compile the fused ConvFirst kernel for sm_90 (no GPU needed, outside the interpreter) and read its PTX."""
    code = r"""
import json
from convfirst.kernels import convfirst_fused
from convfirst.kernels.compile_report import CONVFIRST_SIGNATURE, compile_sm90, convfirst_constexprs
tile = dict(BLOCK_M=64, BLOCK_H=64, UNROLL_TAPS=False, DENSE_GCONV=False)
k = compile_sm90(convfirst_fused.convfirst_block_kernel, CONVFIRST_SIGNATURE, convfirst_constexprs(64, tile),
                 num_warps=4, num_stages=2, maxnreg=128)
ptx = k.asm["ptx"]
print(json.dumps({"tanh": ptx.count("tanh.approx.f32"), "rcp": ptx.count("rcp.") + ptx.count("div.full"),
                  "maxnreg": ".maxnreg 128" in ptx}))
"""
    got = _compile_outside_interpreter(code)
    assert got["tanh"] > 0, "SiLU should use tanh.approx.f32 on the GPU"
    assert got["rcp"] == 0, "no reciprocal/division should remain in the SiLU"
    assert got["maxnreg"], "the register cap should reach the PTX"


def test_resident_kernel_keeps_the_1x1_weights_in_shared_memory_outside_the_tile_loop():
    """v5 compiled for sm_90: one shared-memory allocation per weight slice, made before the tile loop (the
    compiler hoists loop-invariant dot operands), so the program's shared memory holds all of We and Wp."""
    code = r"""
import json, re
from convfirst.kernels import convfirst_fused as cf
from convfirst.kernels.compile_report import CONVFIRST_RESIDENT_SIGNATURE, compile_sm90, convfirst_constexprs
tile = dict(BLOCK_M=64, BLOCK_H=64, PROGRAMS_PER_SM=3, UNROLL_TAPS=False)
k = compile_sm90(cf.convfirst_resident_kernel, CONVFIRST_RESIDENT_SIGNATURE, convfirst_constexprs(64, tile),
                 num_warps=4, num_stages=2)
ttgir = k.asm["ttgir"]
loop = ttgir.index("scf.for %tile")
weights = [m.start() for m in re.finditer(r"%(we|wp)\w* = ttg.local_alloc %", ttgir)]
print(json.dumps({"smem": k.metadata.shared, "weights_bytes": cf.resident_weight_bytes(64, 256),
                  "allocs": len(weights), "before_loop": all(i < loop for i in weights)}))
"""
    got = _compile_outside_interpreter(code)
    assert got["allocs"] == 2 * 256 // 64, "one allocation per hidden slice of We and of Wp"
    assert got["before_loop"], "the weights must be placed in shared memory before the tile loop"
    assert got["smem"] >= got["weights_bytes"]


def test_tma_kernel_moves_its_tap_tiles_by_bulk_copies_in_a_pipeline():
    """v6 compiled for sm_90 at 96 channels (two parts): the tap tiles, residual and output are TMA bulk tensor
    copies, the tap loop is software-pipelined (more copies in the code than the loop body's two, and shared
    memory for several stages), and ptxas needs no spills under the 128-register cap."""
    code = r"""
import json
from convfirst.kernels import convfirst_fused as cf
from convfirst.kernels import compile_report as cr
out = {}
for stages in (2, 3):
    tile = dict(TILE_H=8, TILE_W=8, BLOCK_H=32, JOINT_TAPS=cf.TMA_JOINT_TAPS)
    sig = cr.convfirst_tma_signature(96, 8, 8)
    k = cr.compile_sm90(cf.convfirst_tma_kernel, sig, cr.convfirst_constexprs(96, tile), num_warps=4,
                        num_stages=stages, maxnreg=128)
    ptx = k.asm["ptx"]
    out[stages] = {"bulk_loads": ptx.count("cp.async.bulk.tensor.4d.shared"), "smem": k.metadata.shared,
                   "res": cr.compile_config(cf.convfirst_tma_kernel, sig, cr.convfirst_constexprs(96, tile), 4,
                                            stages, 128)}
print(json.dumps(out))
"""
    got = _compile_outside_interpreter(code)
    box = 64 * (64 + 32) * 2                      # one tap of both channel parts, bf16
    for stages in ("2", "3"):
        assert got[stages]["bulk_loads"] >= 2 * 2, "taps of both parts, each in the loop and its prologue"
        assert got[stages]["res"]["spill_bytes"] == 0
    assert got["3"]["bulk_loads"] > got["2"]["bulk_loads"], "a deeper pipeline issues more copies ahead"
    assert got["3"]["smem"] >= 2 * box


def test_fixed_tma_configs_cover_every_family_width(monkeypatch):
    """The fixed v6 config (as the GPU would take it) exists at every ConvFirst width, from the narrowest to 768
    channels, with as many pixels as v4's fixed tile, and keeps the [pixels, C] accumulator within registers
    up to 192 channels (wider blocks run unfused in the models; there v4's 32-pixel tile spills as well)."""
    import triton

    from convfirst.kernels._common import accumulator_fits, split_channels

    monkeypatch.setattr(convfirst_fused, "interpreting", lambda: False)
    for c in (32, 48, 64, 96, 192, 384, 768):
        cfg = convfirst_fused.tma_config(c)
        pixels = cfg["TILE_H"] * cfg["TILE_W"]
        assert pixels == convfirst_fused.heuristic_config(c, 1 << 20)["BLOCK_M"], (c, cfg)
        cf = triton.Config({}, num_warps=cfg["num_warps"], maxnreg=cfg.get("maxnreg"))
        assert c > 192 or accumulator_fits(pixels, sum(split_channels(c)), cf), (c, cfg)


def _cf(m, bh, warps, maxnreg):
    import triton

    return triton.Config({"BLOCK_M": m, "BLOCK_H": bh, "UNROLL_TAPS": False, "DENSE_GCONV": False},
                         num_warps=warps, num_stages=2, maxnreg=maxnreg)


def test_register_cap_pruning_keeps_only_tiles_whose_accumulator_fits():
    configs = [_cf(64, 32, 4, 128), _cf(64, 32, 4, 168), _cf(64, 32, 4, None)]
    kept = lambda c: [cf.maxnreg for cf in convfirst_fused._prune(configs, {"C": c, "NPIX": 10**6, "HID": 4 * c})]
    assert kept(64) == [128, 168, None]
    assert kept(192) == [168, None]      # 96 accumulator registers: over 60% of 128, under 60% of 168
    assert kept(256) == [None]           # 128 accumulator registers: only uncapped
    caps = lambda c: {cf.maxnreg for cf in mbconv_fused._prune(mbconv_fused._configs(), {"C": c, "NPIX": 10**6})}
    assert {128, 168} <= caps(64)
    assert 128 not in caps(256) and 168 not in caps(256)


def test_launch_kwargs_carry_the_register_cap():
    assert launch_kwargs(_cf(64, 64, 4, 128))["maxnreg"] == 128
    assert "maxnreg" not in launch_kwargs(_cf(64, 64, 4, None))
    assert convfirst_fused.heuristic_config(64, 10**6).get("maxnreg") in (None, 128)


def test_ncu_raw_page_parsing_and_counter_table():
    raw = ('==PROF== Connected to process\n'
           '"ID","Kernel Name","gpu__time_duration.sum","smsp__inst_executed.sum","launch__registers_per_thread"\n'
           '"","","nsecond","inst","register/thread"\n'
           '"0","convfirst_block_kernel","410,432","215,556,096","104"\n')
    kernels = ncu_report.parse_raw_csv(raw)
    assert len(kernels) == 1 and kernels[0]["gpu__time_duration.sum"] == ("410,432", "nsecond")
    rows = [{"block": "convfirst", "shape": "64@56x56", "batch": 256, "config": "BLOCK_M=64", "metric": m,
             "unit": u, "value": v, "kernel_version": "v2"} for m, (v, u) in kernels[0].items()]
    t = ncu_report.counter_table(pd.DataFrame(rows))
    np.testing.assert_allclose(t["time_us"], [410.432])
    np.testing.assert_allclose(t["warp_instr_M"], [215.556096])
    np.testing.assert_allclose(t["regs"], [104])
    assert ncu_report.parse_config("BLOCK_M=64,UNROLL_TAPS=1,maxnreg=128") == {"BLOCK_M": 64, "UNROLL_TAPS": True,
                                                                               "maxnreg": 128}
    # a matrix-product case: the layer switches and the TMA kernel's persistent flag read as booleans
    assert ncu_report.parse_config("ACT=0,PROJECT=1,PERSISTENT=1,BLOCK_N=128") == {
        "ACT": False, "PROJECT": True, "PERSISTENT": True, "BLOCK_N": 128}
    assert set(ncu_report.KERNEL_NAMES) >= {"gemm", "gemm-ws", "cublas"}
    assert all(re.search(ncu_report.KERNEL_NAMES["gemm-ws"], name)  # both Gluon kernels are found by the profiler
               for name in ("gemm_ws_kernel", "gemm_ws_ordered_kernel"))
    assert ncu_report.parse_config("ORDERED=1,STAGES=4")["ORDERED"] is True
    # the pair kernel: found by its name, its tile read with the ping-pong flag as a boolean
    assert re.search(ncu_report.KERNEL_NAMES["pair"], "pair_ws_kernel")
    assert ncu_report.parse_config("BH=64,STAGES=2,PINGPONG=1") == {"BH": 64, "STAGES": 2, "PINGPONG": True}


def test_recorded_ncu_counters_show_v2_and_v4():
    path = REPO_ROOT / "data" / "kernel_ncu_h100.csv"
    if not path.exists():
        pytest.skip("no data/kernel_ncu_h100.csv recorded")
    t = ncu_report.counter_table(pd.read_csv(path))
    assert {"v2", "v4"} <= set(t["kernel_version"])
    cf = t[(t["block"] == "convfirst") & (t["shape"] == "64@56x56")]
    best = cf.sort_values("time_us").groupby("kernel_version").head(1).set_index("kernel_version")
    assert best.loc["v4", "warp_instr_M"] < best.loc["v2", "warp_instr_M"]


def test_commit_stamp_can_be_named_by_the_measuring_command(monkeypatch):
    monkeypatch.setenv("CONVFIRST_COMMIT", "abc1234")
    assert git_commit() == "abc1234"
    monkeypatch.delenv("CONVFIRST_COMMIT")
    assert git_commit() != "abc1234"


def test_family_plan_carries_its_own_comparison_first():
    cases = bm.family_plan()
    first = {(c.model, c.variant) for c in cases if c.priority == 0}
    assert first == {(bm.REFERENCE_MODEL, "compile-default"), (bm.CONTROL_MODEL, "fused"),
                     (bm.HALF_GMAC_MODEL, "fused")}
    fused = {c.model for c in cases if c.variant == "fused"}
    assert fused == set(bm.CONVFIRSTNET_FAMILY + bm.MBCONVNET_FAMILY)
    assert {c.resolution for c in cases if c.model.startswith("efficientnet_b4")} == {384}
    # fused models with CUDA graphs at both ends: small members are launch-bound without them even at 256
    assert all(set(c.graph_batches) == {1, 256} for c in cases if c.variant == "fused")


def test_pick_tuner_keeps_the_faster_kernel_per_shape():
    """Where both kernels are candidates, each is tuned once per shape and the faster one is kept."""
    from convfirst.kernels import convfirst_fused

    calls = []
    speed = {"v4": 0.30, "v5": 0.28}
    key = ("test-shape", 64)
    convfirst_fused._KERNEL_CHOICE.pop(key, None)
    try:
        got = convfirst_fused._pick_tuner(key, calls.append, tuners=("v4", "v5"),
                                          timer=lambda fn: (fn(), speed[calls[-1]])[1])
        assert got == "v5" and calls.count("v4") == 2 and calls.count("v5") == 2
        speed["v4"] = 0.01  # cached: the choice does not change, and nothing is re-run
        assert convfirst_fused._pick_tuner(key, calls.append, tuners=("v4", "v5"), timer=lambda fn: 0.0) == "v5"
        assert len(calls) == 4
    finally:
        convfirst_fused._KERNEL_CHOICE.pop(key, None)


def test_pick_fastest_runs_each_candidate_then_keeps_the_fastest():
    from convfirst.kernels._common import pick_fastest

    calls = []
    runs = {"pixels": lambda: calls.append("pixels"), "rows": lambda: calls.append("rows")}
    speed = {"pixels": 0.04, "rows": 0.03}
    assert pick_fastest(runs, timer=lambda fn: (fn(), speed[calls[-1]])[1]) == "rows"
    assert calls == ["pixels", "pixels", "rows", "rows"]
    speed["rows"] = 0.05
    assert pick_fastest(runs, timer=lambda fn: (fn(), speed[calls[-1]])[1]) == "pixels"


def test_gemm_loads_are_vectorised_and_pipelined_for_plain_rows_and_for_patches():
    """The epilogue GEMM compiled for sm_90: with K divisible by 16 (as Triton specialises it on the GPU) and for
    patches whose rows stay aligned (C_in = 96, a constexpr), the loads become ``cp.async`` copies in a
    multi-stage pipeline; the 3-channel stem's 12-value patch rows, read as padded runs (ROWPAD 16), load as 8-byte
    vectors (Triton 3.6, the GPU machine's, loads them value by value without ROWPAD: ``NOTES_gemm.md``; 3.8 already
    vectorises both); the TMA form moves its tiles with bulk tensor copies, also when persistent."""
    code = r"""
import json
from convfirst.kernels import gemm
from convfirst.kernels import compile_report as cr
cr.DIVISIBLE_INTS = {"M", "N", "K", "H", "W"}
sig = cr._sig({"a_ptr": "*bf16", "w_ptr": "*bf16", "bias_ptr": "*fp32", "res_ptr": "*bf16", "out_ptr": "*bf16"},
              ["M", "N", "K", "H", "W", "HO", "WO"],
              ["CIN", "PATCH", "ACT_SILU", "HAS_RES", "EVEN_K", "FP32_DOT", "BLOCK_M", "BLOCK_N", "BLOCK_K",
               "GROUP_M", "PERSISTENT", "ROWPAD"])
tile = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, PERSISTENT=False, ACT_SILU=True, HAS_RES=False,
            EVEN_K=True, FP32_DOT=False, ROWPAD=0)
out = {}
for name, extra in (("rows", dict(CIN=1, PATCH=0)), ("patches", dict(CIN=96, PATCH=2)),
                    ("stem_padded", dict(CIN=3, PATCH=4, EVEN_K=False, ROWPAD=16))):
    k = cr.compile_sm90(gemm.gemm_epilogue_kernel, sig, dict(tile, **extra), num_warps=8, num_stages=4)
    ptx = k.asm["ptx"]
    out[name] = {"cp_async": ptx.count("cp.async.cg"), "smem": k.metadata.shared,
                 "b16": ptx.count("ld.global.b16"), "v2": ptx.count("ld.global.v2.b32")}
desc = lambda r, c: f"tensordesc<bf16[{r}, {c}]>"
tsig = {"a_desc": desc(128, 64), "w_desc": desc(64, 128), "res_desc": desc(128, 128), "out_desc": desc(128, 128),
        "bias_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", **{n: "constexpr" for n in
        ("ACT_SILU", "HAS_RES", "FP32_DOT", "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "PERSISTENT")}}
for persistent in (False, True):
    k = cr.compile_sm90(gemm.gemm_tma_kernel, tsig, dict(ACT_SILU=True, HAS_RES=False, FP32_DOT=False, BLOCK_M=128,
                        BLOCK_N=128, BLOCK_K=64, GROUP_M=8, PERSISTENT=persistent), num_warps=8, num_stages=4)
    out[f"tma_{persistent}"] = {"bulk": k.asm["ptx"].count("cp.async.bulk.tensor"), "smem": k.metadata.shared}
print(json.dumps(out))
"""
    got = _compile_outside_interpreter(code)
    stage_bytes = (128 * 64 + 64 * 128) * 2
    for name in ("rows", "patches"):
        assert got[name]["cp_async"] > 0, f"{name}: the A and W loads should be cp.async copies"
        assert got[name]["smem"] >= 3 * stage_bytes, f"{name}: a multi-stage pipeline needs several buffers"
    assert got["stem_padded"]["b16"] == 0 and got["stem_padded"]["v2"] > 0, got["stem_padded"]
    for persistent in ("False", "True"):
        assert got[f"tma_{persistent}"]["bulk"] > 0
        assert got[f"tma_{persistent}"]["smem"] >= 3 * stage_bytes


def test_gemm_comparison_tables_take_the_latest_run_of_each_part():
    from convfirst.kernels.compare_gemm import comparison_tables

    def rows(date, commit, ms):
        return [{"part": "sequence", "block": "convfirst", "C": 384, "H": 14, "impl": impl, "ms": ms + i,
                 "batch": 256, "date": date, "commit": commit, "gpu": "H100"} for i, impl in enumerate(["cublas", "triton-tma"])]

    patch = {"part": "patchify", "shape": "stem-t", "C": 3, "H": 224, "impl": "triton", "ms": 0.1, "batch": 256,
             "date": "2026-01-01T12:00:00Z", "commit": "ccc", "gpu": "H100"}
    df = pd.DataFrame(rows("2026-01-01T00:00:00Z", "aaa", 1.0) + rows("2026-01-02T00:00:00Z", "bbb", 5.0) + [patch])
    tables = comparison_tables(df)
    table = tables["sequence"]
    assert table.attrs["commit"] == "bbb" and table.attrs["batch"] == 256
    assert table.loc[("convfirst", 384, 14), "cublas"] == 5.0
    assert table.loc[("convfirst", 384, 14), "triton-tma"] == 6.0
    assert tables["patchify"].attrs["commit"] == "ccc"   # each part from its own latest run


def test_gemm_comparison_tables_keep_the_full_run_when_a_later_run_measured_fewer_cases():
    from convfirst.kernels.compare_gemm import comparison_tables

    def row(date, commit, c, impl, ms):
        return {"part": "gemm", "block": "convfirst", "C": c, "H": 14, "layer": "expand", "impl": impl, "ms": ms,
                "batch": 256, "date": date, "commit": commit, "gpu": "H100"}

    full = [row("2026-01-01T00:00:00Z", "aaa", c, impl, 1.0) for c in (256, 384) for impl in ("cublas", "tma")]
    partial = [row("2026-01-02T00:00:00Z", "bbb", 256, impl, 2.0) for impl in ("cublas", "tma", "new")]
    table = comparison_tables(pd.DataFrame(full + partial))["gemm"]
    assert table.attrs["commit"] == "aaa" and len(table) == 2 and list(table.columns) == ["cublas", "tma"]
    rerun = [row("2026-01-03T00:00:00Z", "ccc", c, impl, 3.0) for c in (256, 384) for impl in ("cublas", "tma")]
    assert comparison_tables(pd.DataFrame(full + partial + rerun))["gemm"].attrs["commit"] == "ccc"


def test_gluon_gemm_is_warp_specialised_with_tma_and_wgmma_and_no_spills():
    """The warp-specialised Gluon GEMM compiled for sm_90 (no GPU), every candidate tile, with the SiLU and with
    the residual epilogue: wgmma products and TMA copies (one more for the residual tile), registers moved
    between partitions by setmaxnreg (consumer warp groups 232, loader warps 24), no spills, and shared memory
    within the SM's 227 KB."""
    code = r"""
import json
from convfirst.kernels import compile_report as cr, gemm_ws
out = []
for cf in gemm_ws.ws_configs():
    for silu, res in ((True, False), (False, True)):
        out.append(dict(cf, silu=silu, res=res, **cr.gemm_ws_report(cf, silu, res)))
print(json.dumps(out))
"""
    from convfirst.kernels import gemm_ws

    if not gemm_ws.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon")
    rows = _compile_outside_interpreter(code)
    assert len(rows) == 2 * len(gemm_ws.ws_configs()) >= 4
    for r in rows:
        name = f"{r['BLOCK_M']}x{r['BLOCK_N']}x{r['BLOCK_K']} silu={r['silu']} res={r['res']}"
        assert r["wgmma"] > 0 and r["tma_copies"] >= (3 if r["res"] else 2), name
        assert {24, 232} <= set(r["setmaxnreg"]), f"{name}: partitions not given their registers: {r['setmaxnreg']}"
        assert r["spill_bytes"] == 0 and not r["wgmma_serialized"], name
        assert gemm_ws.ws_smem_bytes(r) <= r["smem"] <= 227 * 1024, name


def test_pair_kernel_pipelines_its_wgmma_at_every_width_and_chunking():
    """The pair kernel (expand, SiLU, project, residual in one launch) compiled for sm_90 (no GPU) at C = 64,
    128 and 256, every candidate chunking: its products are wgmma with the weights by TMA, ptxas does not
    serialise them (note C7512, what an in-flight second product with its register operand caused), spills
    stay within a few registers and shared memory within the SM's 227 KB."""
    code = r"""
import json
from convfirst.kernels import compile_report as cr, pair_ws
print(json.dumps([dict(cf, C=c, **cr.pair_ws_report(c, cf)) for c in (64, 128, 256) for cf in pair_ws.pair_configs(c)]))
"""
    from convfirst.kernels import pair_ws

    if not pair_ws.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon")
    rows = _compile_outside_interpreter(code)
    assert len(rows) == sum(len(pair_ws.pair_configs(c)) for c in (64, 128, 256)) >= 12
    for r in rows:
        name = f"C={r['C']} BH={r['BH']} STAGES={r['STAGES']} PINGPONG={r['PINGPONG']}"
        assert r["wgmma"] > 0 and r["tma_copies"] >= 3, name
        assert not r["wgmma_serialized"], f"{name}: ptxas serialised the wgmma instructions (C7512)"
        assert r["spill_bytes"] <= 32, f"{name}: {r['spill_bytes']} bytes spilled"
        assert {24, 232} <= set(r["setmaxnreg"]), name
        assert pair_ws.pair_smem_bytes(r["C"], r) <= r["smem"] <= 227 * 1024, name


def test_ws_block_kernel_compiles_without_spills_or_serialised_wgmma():
    """The warp-specialised fused ConvFirst kernel (v8, :mod:`convfirst_ws`) compiled for sm_90 (no GPU) at C = 32 to
    192, every candidate config: wgmma products and TMA copies, no spills under the launch's 128
    registers, no wgmma serialised by ptxas (note C7512), the partitions given their registers and shared memory
    as accounted, within the SM's 227 KB."""
    code = r"""
import json
from convfirst.kernels import compile_report as cr, convfirst_ws
print(json.dumps([dict(cf, C=c, **cr.convfirst_ws_report(c, cf)) for c in (32, 64, 96, 128, 160, 192)
                  for cf in convfirst_ws.ws_configs(c)]))
"""
    from convfirst.kernels import convfirst_ws

    if not convfirst_ws.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon")
    rows = _compile_outside_interpreter(code)
    assert len(rows) == sum(len(convfirst_ws.ws_configs(c)) for c in (32, 64, 96, 128, 160, 192)) >= 10
    for r in rows:
        name = f"C={r['C']} {r['TILE_H']}x{r['TILE_W']} BH={r['BH']} TAP_STAGES={r['TAP_STAGES']}"
        assert r["wgmma"] > 0 and r["tma_copies"] >= 4, name
        assert not r["wgmma_serialized"], f"{name}: ptxas serialised the wgmma instructions (C7512)"
        assert r["spill_bytes"] == 0 and r["regs"] <= convfirst_ws.LAUNCH_REGS, name
        assert {24, convfirst_ws.GCONV_REGS, convfirst_ws.CHAIN_REGS} <= set(r["setmaxnreg"]), name
        assert convfirst_ws.ws_smem_bytes(r["C"], r) <= r["smem"] <= 227 * 1024, name


def test_ws_gconv_kernel_compiles_without_spills_or_serialised_wgmma():
    """The warp-specialised grouped conv (:mod:`gconv_ws`) compiled for sm_90 (no GPU) at C = 32 to 1024, every
    candidate config, with and without SiLU: wgmma products, TMA copies and stores, no spills under the launch's
    registers, no wgmma serialised by ptxas, the partitions given their registers, shared memory as accounted."""
    code = r"""
import json
from convfirst.kernels import compile_report as cr, gconv_ws
print(json.dumps([dict(cf, C=c, SILU=silu, **cr.gconv_ws_report(c, cf, silu)) for c in (32, 96, 384, 768, 1024)
                  for cf in gconv_ws.ws_gconv_configs(c) for silu in ((False, True) if c == 1024 else (False,))]))
"""
    from convfirst.kernels import gconv_ws

    if not gconv_ws.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon")
    rows = _compile_outside_interpreter(code)
    assert len(rows) == sum(len(gconv_ws.ws_gconv_configs(c)) for c in (32, 96, 384, 768)) + 2 * len(
        gconv_ws.ws_gconv_configs(1024)) >= 20
    for r in rows:
        name = f"C={r['C']} {r['TILE_H']}x{r['TILE_W']} TAP_STAGES={r['TAP_STAGES']} SILU={r['SILU']}"
        assert r["wgmma"] > 0 and r["tma_copies"] >= 4 and r["tma_stores"] > 0, name
        assert not r["wgmma_serialized"], f"{name}: ptxas serialised the wgmma instructions (C7512)"
        assert r["spill_bytes"] == 0 and r["regs"] <= gconv_ws.LAUNCH_REGS, name
        assert {gconv_ws.LOADER_REGS, gconv_ws.CONSUMER_REGS} <= set(r["setmaxnreg"]), name
        assert gconv_ws.ws_gconv_smem_bytes(r["C"], r) <= r["smem"] <= 227 * 1024, name


def test_gluon_takes_no_shared_memory_view_shifted_by_a_pixel():
    """The limit that keeps the fused blocks' halo from being staged once (``NOTES_convfirst.md``): a Gluon view of
    a staged tile may start only at a multiple of its own length. Views at rows 0 and 64 compile (the probe kernel
    itself is sound); the one-pixel and 17-pixel shifts a 3x3 tap needs do not. The warp-specialised kernel (v8)
    works around it for the kernel rows only: a shift by whole image rows of a patch starts on a swizzle atom, and
    it takes that view by reinterpreting a row of the staged buffer; the kernel columns stay separate copies.
    Should a Triton release lift the restriction, this test fails and the column shifts can be views too."""
    from convfirst.kernels import gemm_ws

    if not gemm_ws.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon")
    got = _compile_outside_interpreter(r"""
import json
from convfirst.kernels.compile_report import gluon_shifted_view_compiles
print(json.dumps({off: gluon_shifted_view_compiles(off) for off in (0, 64, 1, 17)}))
""")
    assert got == {"0": True, "64": True, "1": False, "17": False}
