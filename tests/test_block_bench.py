"""The block benchmark's helpers and the fuse-or-not planner, on the recorded H100 data (CPU only)."""
from __future__ import annotations

import pandas as pd
import pytest

from convfirst import bench_blocks as bb
from convfirst import planner
from convfirst.params import ParameterError
from convfirst.records import recorded_gpus


def test_parse_shape_and_bad_shapes():
    s = bb.parse_shape("convfirst:64@56")
    assert (s.block, s.C, s.H, s.W, s.E) == ("convfirst", 64, 56, 56, 4)
    assert bb.parse_shape("mbconv:128@28x14:6") == bb.BlockShape("mbconv", 128, 28, 14, 6)
    with pytest.raises(ParameterError, match="block shape"):
        bb.parse_shape("convfirst-64")
    with pytest.raises(ParameterError, match="block"):
        bb.parse_shape("resnet:64@56")


def test_floor_uses_counting_and_closed_form():
    flop, nbytes = bb.shape_counts(bb.BlockShape("convfirst", 64, 56, 56), 256)
    px = 256 * 56 * 56
    assert flop == 2 * 64 * (8 * 9 + 2 * 4 * 64) * px          # 2C(8k^2 + 2EC) per pixel
    assert 4 * 64 * px <= nbytes < 4 * 64 * px * 1.01          # 4C bytes per pixel + the weights
    floor, compute, memory = bb.floor_ms(flop, nbytes, 700e12, 3e12)
    assert floor == max(compute, memory) and compute == pytest.approx(flop / 700e12 * 1e3)


def test_executed_flop_counts_the_kernels_redundancy():
    useful = 2 * 64 * (8 * 9 + 2 * 4 * 64)
    assert planner.executed_flop("convfirst", 64, 56, 56, 4, 1) / (56 * 56) == useful + 2 * 64 * 8 * 9


needs_data = pytest.mark.skipif("h100" not in recorded_gpus("block_bench"), reason="no recorded H100 benchmark")


@needs_data
def test_recorded_benchmark_has_every_impl_and_provenance():
    df = bb.load_results("h100")
    at256 = df[df["batch"] == 256]
    for block, c, h in [("convfirst", 64, 56), ("mbconv", 64, 56)]:
        impls = set(at256[(at256["block"] == block) & (at256["C"] == c) & (at256["H"] == h)]["impl"])
        assert {"eager", "compile-default", "compile-max-autotune", "unfused-triton", "fused"} <= impls
    assert (df["floor_ms"] > 0).all() and (df["ms"] > 0).all()
    ours = df[df["impl"].isin(["fused", "triton", "unfused-triton"])]
    assert (ours["rel_err"] < 1e-2).all()


@needs_data
def test_target_table_reports_met_and_missed_honestly():
    t = bb.target_table(bb.load_results("h100"))
    assert len(t) == len(bb.SPEED_TARGETS)
    row = t.set_index("target").loc["grouped 3x3 gw8 96@56: 2x cuDNN"]
    assert row["met"] == (row["reference_ms"] / row["ours_ms"] >= 2.0)
    assert ((t["measured"] >= t["required"]) == t["met"]).all()


@needs_data
def test_planner_uses_measured_data_and_calibrated_model():
    table = planner.plan([("convfirst", 64, 56, 56, 4), ("convfirst", 48, 56, 56, 4)], [256], "h100")
    measured = table[table["C"] == 64].iloc[0]
    assert measured["source"] == "measured"
    bench = bb.load_results("h100")
    at = bench[(bench["block"] == "convfirst") & (bench["C"] == 64) & (bench["H"] == 56) & (bench["batch"] == 256)
               & (bench["dtype"] == "bfloat16")]
    assert measured["fused_ms"] == pytest.approx(at[at["impl"] == "fused"]["ms"].iloc[0])
    assert measured["choice"] == ("fused" if measured["fused_ms"] <= measured["unfused_ms"] else "unfused")
    partly = table[table["C"] == 48].iloc[0]  # fused timed at 48@56, the unfused paths not: modelled
    fused_48 = bench[(bench["block"] == "convfirst") & (bench["C"] == 48) & (bench["H"] == 56)
                    & (bench["batch"] == 256) & (bench["dtype"] == "bfloat16") & (bench["impl"] == "fused")]
    if len(fused_48):
        assert partly["source"].startswith("fused measured; unfused: roofline model calibrated on convfirst ")
        assert partly["fused_ms"] == pytest.approx(fused_48["ms"].median())
    else:
        assert partly["source"].startswith("roofline model calibrated on convfirst ")
    # a width no run has timed (128@28 was, at bb58eab): fused and unfused both from the calibrated model
    assert not len(bench[(bench["block"] == "convfirst") & (bench["C"] == 160) & (bench["H"] == 28)])
    modelled = planner.plan([("convfirst", 160, 28, 28, 4)], [256], "h100").iloc[0]
    assert modelled["source"].startswith("roofline model calibrated on convfirst ")


def test_planner_ideal_model_without_data(monkeypatch):
    monkeypatch.setattr(planner, "load_block_bench", lambda gpu: None)
    table = planner.plan([("convfirst", 64, 56, 56, 4)], [256], "h100")
    assert table.iloc[0]["source"] == "roofline model (ideal)"
    with pytest.raises(ParameterError, match="source"):
        planner.plan([("convfirst", 64, 56, 56, 4)], [256], "h100", source="guess")


def test_floor_target_uses_the_floor_of_the_run_that_timed_our_kernel():
    """Each run computes floors with its own measured P and B; the floor target divides our kernel's floor by
    our kernel's time, both from one run, whatever the floors of other impls' (older) rows say."""
    rows = [{"block": "convfirst", "C": 64, "H": 56, "batch": 256, "dtype": "bfloat16", "impl": impl, "ms": ms,
             "floor_ms": floor} for impl, ms, floor in (("fused", 0.25, 0.1), ("compile-default", 1.0, 0.05),
                                                       ("compile-max-autotune", 0.9, 0.05))]
    t = bb.target_table(pd.DataFrame(rows)).set_index("target")
    assert t.loc["ConvFirst 64@56: 50% of the roofline floor", "measured"] == pytest.approx(0.1 / 0.25)
    assert t.loc["ConvFirst 64@56: 3x the best torch.compile", "measured"] == pytest.approx(0.9 / 0.25)
