"""The model benchmark's plan, arithmetic and tables, on CPU and on synthetic rows with known answers.

The GPU timings themselves are checked where they are recorded: every row of data/model_bench_<gpu>.csv
must satisfy the identities tested at the end of this file.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from convfirst import bench_models as bm
from convfirst.params import ParameterError
from convfirst.records import DataError, recorded_gpus


# ----------------------------------------------------------------------------------------------------------
# plan
# ----------------------------------------------------------------------------------------------------------

def test_budget_plan_covers_the_headline_comparison_first():
    plan = bm.budget_plan()
    first = {(c.model, c.variant) for c in plan if c.priority == 0}
    assert {("convnext_tiny", "compile-default"), ("convfirstnet_t", "fused"), ("convfirstnet_h", "fused")} <= first
    assert [c.priority for c in plan] == sorted(c.priority for c in plan)
    by_key = {(c.model, c.variant, c.resolution): c for c in plan}
    for m in ("convfirstnet_t", "convfirstnet_h"):  # full batch sweeps, CUDA graphs at 1 and 8
        assert by_key[(m, "fused", 224)].batches == bm.BATCHES
        assert by_key[(m, "fused", 224)].graph_batches == (1, 8)
    assert by_key[("convnext_tiny", "eager", 224)].batches == bm.BATCHES
    assert by_key[("convnext_tiny", "compile-default", 224)].batches == (1, 32, 256)
    for m in bm.ALL_MODELS:  # every model at least in eager mode at 224, at batch 1 (with graphs) and 256
        c = by_key[(m, "eager", 224)]
        assert {1, 256} <= set(c.batches) and 1 in c.graph_batches, m
    for m in bm.CONVFIRSTNET_FAMILY + bm.MBCONVNET_FAMILY:
        assert (m, "fused", 224) in by_key
    for m, r in bm.NATIVE_RESOLUTION.items():
        assert (m, "eager", r) in by_key
    assert not any(c.variant == "compile-max-autotune" for c in plan)
    with_autotune = bm.budget_plan(max_autotune=True)
    assert ("convnext_tiny", "compile-max-autotune", 224) in {(c.model, c.variant, c.resolution) for c in with_autotune}
    for c in plan:
        assert c.variant not in bm.FUSED_VARIANTS or bm.is_fusable(c.model)


def test_full_plan_skips_fused_variants_of_baselines():
    plan = bm.full_plan(["convnext_tiny", "convfirstnet_t", "efficientnet_b2"], ["eager", "fused"], [1, 256])
    got = {(c.model, c.variant, c.resolution) for c in plan}
    assert got == {("convnext_tiny", "eager", 224), ("convfirstnet_t", "eager", 224),
                   ("convfirstnet_t", "fused", 224), ("efficientnet_b2", "eager", 224),
                   ("efficientnet_b2", "eager", 288)}


def test_bad_cases_name_the_parameter():
    with pytest.raises(ParameterError, match="variant='fused'"):
        bm.BenchCase("convnext_tiny", "fused", (1,))
    with pytest.raises(ParameterError, match="model='convnext_huge'"):
        bm.BenchCase("convnext_huge", "eager", (1,))
    with pytest.raises(ParameterError, match="variant='compiled'"):
        bm.BenchCase("convnext_tiny", "compiled", (1,))
    with pytest.raises(ParameterError, match="batches"):
        bm.BenchCase("convnext_tiny", "eager", (0,))
    with pytest.raises(ParameterError, match="graph_batches"):
        bm.BenchCase("convnext_tiny", "eager", (256,), graph_batches=(1,))
    with pytest.raises(ParameterError, match="models"):
        bm.full_plan(["resnet18"])


# ----------------------------------------------------------------------------------------------------------
# arithmetic
# ----------------------------------------------------------------------------------------------------------

def test_efficiency_is_work_over_time_times_peak():
    # 4.47 GMAC x 2 x 256 images in 17.1 ms is 134 TFLOP/s; on a 695 TFLOP/s GPU that is 19.3 %
    assert bm.efficiency(4.47, 256, 17.1, 695.0) == pytest.approx(2 * 4.47e9 * 256 / 17.1e-3 / 695e12)
    assert bm.efficiency(4.47, 256, 17.1, 695.0) == pytest.approx(0.1926, abs=1e-4)
    assert bm.efficiency(1.0, 1, 2.0 / 695e12 * 1e9 * 1e3, 695.0) == pytest.approx(1.0)


def test_gmac_matches_timm_published_counts():
    assert bm.model_gmac("convnext_tiny") == pytest.approx(4.47, rel=0.02)
    assert bm.model_gmac("efficientnet_b0") == pytest.approx(0.40, rel=0.05)
    half = bm.model_gmac("convfirstnet_h") / bm.model_gmac("convnext_tiny")
    assert 0.4 < half < 0.6  # the member the 4x target names has about half ConvNeXt-T's arithmetic


def test_relative_error():
    ref = torch.tensor([3.0, 4.0])
    assert bm.relative_error(ref, ref) == 0.0
    assert bm.relative_error(ref + torch.tensor([0.3, 0.4]), ref) == pytest.approx(0.1)


def test_randomized_batchnorm_makes_blocks_non_trivial():
    model = bm.create_model("convfirstnet_p", dtype="float32", device="cpu")
    blocks = [m for m in model.modules() if type(m).__name__ == "ConvFirstBlock"]
    assert blocks
    x = torch.randn(1, blocks[0].channels if hasattr(blocks[0], "channels") else 48, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(blocks[0](x), x)  # ConvFirstNet zero-inits the last BN; randomized it is not
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_fused_check_accepts_same_function_and_rejects_a_different_one():
    model = bm.create_model("convfirstnet_p", dtype="bfloat16", device="cpu")
    same = bm.check_fused_output(model, model, resolution=64, batch=2)
    assert same.passed and same.fused_rel_err == same.unfused_rel_err < 2e-2
    off = bm.check_fused_output(model, lambda x: model(x) * 1.05, resolution=64, batch=2)
    assert not off.passed and off.fused_rel_err > 0.04
    nan = bm.check_fused_output(model, lambda x: model(x) * float("nan"), resolution=64, batch=2)
    assert not nan.passed


@pytest.mark.parametrize("name", ["convfirstnet_p", "mbconvnet_p"])
def test_fused_variant_builds_and_passes_its_check_in_the_interpreter(name):
    """The fused path of the benchmark end to end on CPU (Triton interpreter), tiny input."""
    model = bm.create_model(name, dtype="bfloat16", device="cpu")
    fused = bm.build_variant(model, name, "fused", resolution=224, batch=256)  # planned for 224x224 inputs
    assert not fused.training
    n_blocks = sum(hasattr(m, "folded") for m in model.modules())  # ConvFirst / MBConv blocks
    n_fused = sum(type(m).__name__.startswith("Fused") for m in fused.modules())
    n_seq = sum(type(m).__name__.startswith("Sequence") for m in fused.modules())
    n_torch = sum(hasattr(m, "folded") for m in fused.modules())
    assert 0 < n_fused and n_fused + n_seq + n_torch == n_blocks
    assert bm.fused_block_count(fused) == f"fused {n_fused}, triton-seq {n_seq}, pytorch {n_torch}"
    check = bm.check_fused_output(model, fused, resolution=32, batch=1)
    assert check.passed, check
    assert 0 < check.fused_rel_err < 3e-2


# ----------------------------------------------------------------------------------------------------------
# tables from synthetic rows with known answers
# ----------------------------------------------------------------------------------------------------------

PEAK = 700.0


def _row(model, variant, batch, ms, gmac, graphs=False, resolution=224):
    return {"model": model, "family": bm.model_family(model), "variant": variant, "batch": batch,
            "resolution": resolution, "dtype": "bfloat16", "cuda_graphs": graphs, "ms": ms,
            "img_per_s": batch / (ms * 1e-3), "gmac": gmac, "params_m": 1.0,
            "efficiency": bm.efficiency(gmac, batch, ms, PEAK), "date": "2026-01-01T00:00:00Z"}


@pytest.fixture
def synthetic_run() -> pd.DataFrame:
    rows = [
        _row("convnext_tiny", "eager", 256, 34.0, 4.4), _row("convnext_tiny", "compile-default", 256, 17.0, 4.4),
        _row("convnext_tiny", "compile-max-autotune", 256, 16.0, 4.4),
        _row("convnext_tiny", "compile-default", 1, 2.0, 4.4),
        _row("convnext_tiny", "compile-default", 1, 1.0, 4.4, graphs=True),
        _row("convfirstnet_t", "eager", 256, 30.0, 4.5), _row("convfirstnet_t", "fused", 256, 8.0, 4.5),
        _row("convfirstnet_t", "fused-compile", 256, 6.4, 4.5),
        _row("convfirstnet_h", "fused", 256, 4.0, 2.2),
        _row("efficientnet_b0", "eager", 256, 10.0, 0.4),
    ]
    return pd.DataFrame(rows)


def test_best_latency_picks_fastest_setting(synthetic_run):
    best = bm.best_latency(synthetic_run).set_index(["model", "batch"])
    assert best.loc[("convnext_tiny", 256), "variant"] == "compile-max-autotune"
    assert bool(best.loc[("convnext_tiny", 1), "cuda_graphs"]) is True
    ref = bm.reference_throughput(synthetic_run, 256)
    assert ref["ms"] == 16.0
    with pytest.raises(ParameterError, match="batch 8"):
        bm.reference_throughput(synthetic_run, 8)


def test_four_x_decomposition_multiplies_to_the_measured_ratio(synthetic_run):
    table = bm.four_x_decomposition(synthetic_run, 256).set_index("model")
    t = table.loc["convfirstnet_t"]
    assert t["variant"] == "fused-compile"
    assert t["arithmetic_ratio"] == pytest.approx(4.4 / 4.5)
    assert t["speedup"] == pytest.approx(16.0 / 6.4)
    assert t["measured_throughput_ratio"] == pytest.approx(t["speedup"])
    h = table.loc["convfirstnet_h"]
    assert h["speedup"] == pytest.approx(4.0) and bool(h["reaches_4x"])
    assert not bool(t["reaches_4x"])
    assert set(table.index) == {"convfirstnet_t", "convfirstnet_h"}  # members without fused rows are left out


def test_model_table_cites_accuracy_and_marks_our_family_not_measured(synthetic_run):
    acc = pd.DataFrame({"model": ["convnext_tiny", "efficientnet_b0"], "top1": [82.1, 77.7],
                        "source": ["timm results", "timm results"]})
    table = bm.model_table(synthetic_run, batches=(1, 256), accuracy=acc).set_index("model")
    assert table.loc["convnext_tiny", "top1"] == 82.1
    assert table.loc["convfirstnet_t", "top1"] == "not measured here"
    assert table.loc["convfirstnet_t", "speedup_vs_convnext_tiny"] == pytest.approx(16.0 / 6.4)
    assert table.loc["convnext_tiny", "ms_b1"] == 1.0
    assert math.isnan(table.loc["convfirstnet_t", "ms_b1"])


# ----------------------------------------------------------------------------------------------------------
# recorded data
# ----------------------------------------------------------------------------------------------------------

def test_missing_gpu_names_the_gpus_that_have_data():
    with pytest.raises(DataError, match="GPUs with recorded data"):
        bm.load_model_bench("b300")


REQUIRED = ["model", "variant", "batch", "resolution", "dtype", "cuda_graphs", "ms", "img_per_s", "gmac",
            "efficiency", "gpu", "commit", "date", "driver", "torch", "triton", "cuda", "layout", "peak_tflops"]


@pytest.mark.parametrize("gpu", recorded_gpus(bm.MODEL_BENCH_PREFIX) or ["none-recorded"])
def test_recorded_rows_are_consistent(gpu):
    if gpu == "none-recorded":
        pytest.skip("no data/model_bench_<gpu>.csv recorded yet")
    df = bm.load_model_bench(gpu)
    assert not [c for c in REQUIRED if c not in df.columns]
    assert set(df["variant"]) <= set(bm.VARIANTS)
    assert (df["dtype"] == "bfloat16").all() and (df["layout"] == "channels_last").all()
    assert (df["ms"] > 0).all()
    np.testing.assert_allclose(df["img_per_s"], df["batch"] / (df["ms"] * 1e-3), rtol=1e-6)
    np.testing.assert_allclose(df["efficiency"], 2 * df["gmac"] * 1e9 * df["batch"]
                               / (df["ms"] * 1e-3 * df["peak_tflops"] * 1e12), rtol=1e-6)
    assert (df["efficiency"] < 1.0).all()  # nothing beats the measured peak
    fused = df[df["variant"].isin(bm.FUSED_VARIANTS)]
    assert (fused["fused_rel_err"] < 5e-2).all()
    for _, run in df.groupby("date"):  # one run: one GPU, one peak
        assert run["gpu"].nunique() == 1 and run["peak_tflops"].nunique() == 1


def test_native_resolutions_match_the_cited_complexity_table():
    from convfirst.provenance import DATA_DIR

    path = DATA_DIR / "cited_model_stats.csv"
    if not path.exists():
        pytest.skip("no cited model statistics recorded")
    cited = pd.read_csv(path, comment="#").set_index("model")
    for model, res in bm.NATIVE_RESOLUTION.items():
        assert int(cited.loc[model, "img_size"]) == res, model


def test_speed_targets_against_known_ratios(synthetic_run):
    rows = bm.speed_targets(synthetic_run, 256)
    control_speed, control_e, half_speed = rows["measured"]
    assert control_speed == pytest.approx(16.0 / 6.4)          # 2.5x: met exactly
    assert control_e == pytest.approx(bm.efficiency(4.5, 256, 6.4, PEAK))
    assert half_speed == pytest.approx(16.0 / 4.0)
    assert list(rows["met"]) == [True, control_e >= 0.5, True]
    assert "compile-max-autotune" in rows["reference"].iloc[0]
    no_fused = bm.speed_targets(synthetic_run[~synthetic_run["variant"].isin(bm.FUSED_VARIANTS)], 256)
    assert no_fused["measured"].isna().all() and no_fused["met"].isna().all()
    assert list(rows["model"]) == ["convfirstnet_t", "convfirstnet_t", "convfirstnet_h"]


def test_matmul_headroom_adds_up_per_stage(synthetic_run, monkeypatch):
    """Per stage, blocks x (ours - cuBLAS's matmul); with the two GEMMs as the sequence path for every width,
    then with the pair kernel, which takes ConvFirstNet-H's C = 256 stage out of the estimate."""
    from convfirst.kernels import unfused

    monkeypatch.setattr(unfused, "SEQUENCE_GEMM", "triton")

    def row(c, h, impl, ms, date="2026-01-01T00:00:00Z", tanh="", layer="expand"):
        return {"part": "epilogue", "block": "convfirst", "C": c, "H": h, "layer": layer, "impl": impl, "ms": ms,
                "date": date, "silu_tanh": tanh}
    epi = pd.DataFrame([row(384, 14, "triton-tma", 0.13), row(384, 14, "cublas-mm", 0.11),
                        row(384, 14, "triton-tma", 0.12, date="2026-01-02T00:00:00Z", tanh="f32"),  # latest wins
                        row(384, 14, "triton-tma", 0.01, date="2026-01-03T00:00:00Z", tanh="f16x2"),  # not shipped
                        row(768, 7, "triton-tma", 0.10), row(768, 7, "cublas-mm", 0.09),
                        row(256, 14, "triton-tma", 0.08), row(256, 14, "cublas-mm", 0.05),
                        row(256, 14, "triton-tma", 0.07, layer="project"), row(256, 14, "cublas-mm", 0.06, layer="project"),
                        {**row(256, 14, "triton-tma", 0.01), "part": "gemm"},            # another part: ignored
                        {**row(256, 14, "gluon-ws-ordered", 0.065, layer="project"), "part": "gemm"},  # faster: used
                        {**row(768, 7, "gluon-ws-ordered", 0.2), "part": "gemm"}])       # slower: not used
    head = bm.matmul_headroom(synthetic_run, epi)
    t = head[head["model"] == "convfirstnet_t"].set_index("C")
    assert list(t.index) == [384, 768] and list(t["blocks"]) == [9, 3]
    assert t.loc[384, "saving_ms"] == pytest.approx(9 * 0.01) and t.loc[768, "saving_ms"] == pytest.approx(3 * 0.01)
    assert t["model_ms"].iloc[0] == pytest.approx(6.4)
    assert t["model_ms_with_saving"].iloc[0] == pytest.approx(6.4 - 0.12)
    assert t["target_ms"].iloc[0] == pytest.approx(16.0 / 2.5)
    h = head[head["model"] == "convfirstnet_h"].set_index("layer")
    assert list(h["C"]) == [256, 256] and h.loc["expand", "saving_ms"] == pytest.approx(11 * 0.03)
    assert h.loc["project", "saving_ms"] == pytest.approx(11 * 0.005)  # ours = the ordered Gluon kernel's 0.065
    assert h["model_ms_with_saving"].iloc[0] == pytest.approx(4.0 - 11 * 0.035)
    assert h["target_ms"].iloc[0] == pytest.approx(16.0 / 4.0)
    monkeypatch.setattr(unfused, "SEQUENCE_GEMM", "pair")
    assert bm.sequence_runs_pair(256) and not bm.sequence_runs_pair(384) and not bm.sequence_runs_pair(768)
    paired = bm.matmul_headroom(synthetic_run, epi)
    assert paired[paired["model"] == "convfirstnet_h"].empty  # its only timed stage runs the pair kernel
    assert paired[paired["model"] == "convfirstnet_t"].reset_index(drop=True).equals(
        head[head["model"] == "convfirstnet_t"].reset_index(drop=True))


def test_coverage_throughput_and_latency_views(synthetic_run):
    cases = [bm.BenchCase("convnext_tiny", "compile-default", (1, 32, 256)),
             bm.BenchCase("convfirstnet_t", "fused", (1, 256))]
    cov = bm.plan_coverage(synthetic_run, cases).set_index("model")
    assert cov.loc["convnext_tiny", "measured_batches"] == [1, 256]
    assert cov.loc["convnext_tiny", "missing_batches"] == [32]
    assert cov.loc["convfirstnet_t", "missing_batches"] == [1]
    pts = bm.throughput_points(synthetic_run, 256).set_index(["model", "implementation"])
    assert pts.loc[("convfirstnet_t", "fused kernels"), "variant"] == "fused-compile"
    assert pts.loc[("convfirstnet_t", "PyTorch (eager or torch.compile)"), "variant"] == "eager"
    assert pts.loc[("convnext_tiny", "PyTorch (eager or torch.compile)"), "gflop"] == pytest.approx(2 * 4.4 * 256)
    lat = bm.latency_by_batch(synthetic_run, ["convnext_tiny"])
    one = lat[(lat["variant"] == "compile-default") & (lat["batch"] == 1)]
    assert len(one) == 1 and one["ms"].iloc[0] == 1.0  # the CUDA-graph row wins


def test_stage_breakdown_adds_up_for_the_control():
    table = bm.stage_breakdown("h100", bm.CONTROL_MODEL, 256)
    if table is None:
        pytest.skip("no data/block_bench_h100.csv recorded")
    assert list(table["C"]) == [96, 192, 384, 768] and list(table["blocks"]) == [3, 3, 9, 3]
    measured = table.dropna(subset=["fused_ms"])
    np.testing.assert_allclose(measured["stage_fused_ms"], measured["blocks"] * measured["fused_ms"])
    assert (measured["stage_best_ms"] <= measured["stage_fused_ms"] + 1e-12).all()
    assert bm.stage_breakdown("b300", bm.CONTROL_MODEL) is None


def test_recorded_rows_takes_the_latest_complete_run_and_fills_missing_cases_from_other_runs():
    def row(model, variant, batch, date, ms, commit="abc1234"):
        return {"model": model, "variant": variant, "batch": batch, "resolution": 224, "dtype": "bfloat16",
                "cuda_graphs": False, "ms": ms, "date": date, "commit": commit}

    old, new, later, latest = ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z",
                               "2026-01-04T00:00:00Z")
    df = pd.DataFrame([
        row("convnext_tiny", "compile-default", 256, old, 16.0, "0ld0001"),   # superseded by the anchor
        row("convnext_tiny", "compile-default", 256, new, 15.0),
        row("efficientnet_b0", "eager", 256, old, 13.0, "0ld0001"),          # not reached by the anchor: kept
        row("resnet50", "eager", 256, old, 20.0, "0ld0001+dirty"),  # from an uncommitted tree: not shown
        row("convfirstnet_t", "fused", 256, old, 25.0, "0ld0001"),  # the anchor has this case: not shown
        row("convfirstnet_t", "fused", 8, old, 2.0, "0ld0001"),     # a batch the anchor lacks: filled in
        row("convfirstnet_h", "fused", 256, "2025-12-01T00:00:00Z", 8.0, "0ld0000"),  # a model the anchor
        row("convfirstnet_h", "fused", 256, old, 7.0, "0ld0001"),   # did not reach: its latest run fills in
        row("convfirstnet_t", "fused", 256, new, 11.0),
        row("convnext_tiny", "compile-max-autotune", 256, later, 14.5),  # a later PyTorch-only run fills in
        row("convnext_tiny", "compile-default", 256, later, 99.0, "abc1234+dirty"),  # dirty: never shown
        row("convfirstnet_t", "fused", 256, latest, 10.0, "def5678"),  # later, but without the reference: not
    ])                                                                   # the anchor, and the anchor has it
    got = bm.recorded_rows(df).set_index(["model", "variant", "batch"])["ms"].to_dict()
    assert got == {("convnext_tiny", "compile-default", 256): 15.0, ("convfirstnet_t", "fused", 256): 11.0,
                   ("efficientnet_b0", "eager", 256): 13.0, ("convnext_tiny", "compile-max-autotune", 256): 14.5,
                   ("convfirstnet_t", "fused", 8): 2.0, ("convfirstnet_h", "fused", 256): 7.0}
