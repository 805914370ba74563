"""Roofline floors, waterlines, joins and efficiencies on synthetic inputs with answers worked out by hand."""
import numpy as np
import pandas as pd
import pytest

from convfirst import analysis
from convfirst.analysis import (ROOT_MODULE, attainable_flops, bound_by, computational_efficiency,
                                efficiency_table, ideal_time_s, iso_efficiency_time_s, join_layers,
                                kernel_groups, profile_table, ridge_intensity, roofline_floor_s, waterline,
                                waterline_s, waterline_summary)

# Round ceilings so every floor below can be checked by hand: P = 100 TFLOP/s, B = 2 TB/s, ridge 50 FLOP/B.
P = 100e12
B = 2e12


def layer_table() -> pd.DataFrame:
    """A stem, one fused block of three layers (plus its folded BatchNorm and its add), and a head."""
    return pd.DataFrame([
        # module,          flop,  bytes, bytes_fused, fused_block, folded
        ("stem",           1e12,  2e9,   2e9,  "",      False),   # W/P 10 ms, Q/B 1 ms  -> 10 ms
        ("b.conv_g",       2e11,  4e10,  1e10, "b",     False),   # 2 ms vs 20 ms        -> 20 ms
        ("b.bn_g",         0.0,   0.0,   0.0,  "b",     True),    # folded: no kernel
        ("b.conv_e",       5e11,  6e10,  0.0,  "b",     False),   # 5 ms vs 30 ms        -> 30 ms
        ("b",              0.0,   2e10,  1e10, "b",     False),   # add: 0 vs 10 ms      -> 10 ms
        ("head",           0.0,   4e9,   4e9,  "",      False),   # 0 vs 2 ms            -> 2 ms
    ], columns=["module", "flop", "bytes", "bytes_fused", "fused_block", "folded"])


def test_floor_is_the_larger_of_compute_and_memory_time():
    assert roofline_floor_s(1e12, 2e9, P, B) == pytest.approx(10e-3)      # compute-bound
    assert roofline_floor_s(2e11, 4e10, P, B) == pytest.approx(20e-3)     # memory-bound
    np.testing.assert_allclose(roofline_floor_s([1e12, 0.0], [0.0, 2e12], P, B), [10e-3, 1.0])


def test_point_exactly_at_the_ridge_sits_on_both_roofs():
    ridge = ridge_intensity(P, B)
    assert ridge == pytest.approx(50.0)
    # at the ridge, the memory roof I*B equals the compute roof P
    assert attainable_flops(ridge, P, B) == pytest.approx(P)
    assert ridge * B == pytest.approx(P)
    # a kernel at the ridge: compute time equals memory time, and both give the floor
    flop, nbytes = 5e11, 5e11 / ridge
    assert flop / P == pytest.approx(nbytes / B)
    assert roofline_floor_s(flop, nbytes, P, B) == pytest.approx(flop / P)
    # just below the ridge the memory roof is the lower one, just above the compute roof
    assert attainable_flops(ridge * 0.9, P, B) == pytest.approx(0.9 * P)
    assert attainable_flops(ridge * 1.1, P, B) == pytest.approx(P)


def test_bound_by_labels_each_side_of_the_ridge():
    assert list(bound_by([1e12, 2e11], [2e9, 4e10], P, B)) == ["compute", "memory"]


def test_bad_ceilings_are_rejected():
    with pytest.raises(ValueError, match="ceilings must be positive"):
        roofline_floor_s(1.0, 1.0, 0.0, B)
    with pytest.raises(ValueError, match="efficiency"):
        iso_efficiency_time_s(1.0, 0.0, P)


def test_waterline_of_a_synthetic_sequence_matches_the_hand_sum():
    steps = waterline(layer_table(), P, B)
    # the folded BatchNorm is no kernel: five steps in execution order
    assert list(steps["modules"]) == ["stem", "b.conv_g", "b.conv_e", "b", "head"]
    np.testing.assert_allclose(steps["floor_s"], [10e-3, 20e-3, 30e-3, 10e-3, 2e-3])
    np.testing.assert_allclose(steps["cum_floor_s"], [10e-3, 30e-3, 60e-3, 70e-3, 72e-3])
    np.testing.assert_allclose(steps["cum_flop"], [1e12, 1.2e12, 1.7e12, 1.7e12, 1.7e12])
    assert list(steps["bound"]) == ["compute", "memory", "memory", "memory", "memory"]
    assert waterline_s(layer_table(), P, B) == pytest.approx(72e-3)


def test_fusing_a_block_replaces_its_floors_by_one():
    steps = waterline(layer_table(), P, B, fused=True)
    assert list(steps["modules"]) == ["stem", "b", "head"]
    # block: sum W = 7e11 -> 7 ms; fused bytes 1e10 + 0 + 1e10 = 2e10 -> 10 ms; floor 10 ms (memory)
    np.testing.assert_allclose(steps["floor_s"], [10e-3, 10e-3, 2e-3])
    assert steps.loc[1, "n_layers"] == 3
    assert waterline_s(layer_table(), P, B, fused=True) == pytest.approx(22e-3)


def test_layer_table_without_needed_columns_names_them():
    with pytest.raises(ValueError, match="bytes_fused"):
        waterline(layer_table().drop(columns="bytes_fused"), P, B, fused=True)


def kernels() -> pd.DataFrame:
    """An eager-like profile: the stem's conv plus a cast kernel, the block's three kernels, an unmapped
    copy, the head."""
    return pd.DataFrame([
        (0, "cast", 1.0, "stem", "module-range"),
        (1, "conv", 11_000.0, "stem", "module-range"),
        (2, "gconv", 40_000.0, "b.conv_g", "module-range"),
        (3, "gemm", 45_000.0, "b.conv_e", "module-range"),
        (4, "add", 12_000.0, "b", "module-range"),
        (5, "memcpy", 3.0, "", "unmapped"),
        (6, "mean", 4_000.0, "head", "module-range"),
    ], columns=["index", "kernel", "time_us", "layers", "mapping"])


def test_kernel_groups_merge_consecutive_kernels_of_one_layer_and_keep_unmapped_ones():
    groups = kernel_groups(kernels())
    assert list(groups["layers"]) == ["stem", "b.conv_g", "b.conv_e", "b", "", "head"]
    assert groups.loc[0, "kernels"] == "cast + conv"
    assert groups.loc[0, "n_kernels"] == 2
    assert groups.loc[0, "time_us"] == pytest.approx(11_001.0)
    assert groups.loc[4, "mapping"] == "unmapped"


def test_profile_table_joins_flop_bytes_and_floors():
    table = profile_table(kernels(), layer_table(), P, B)
    stem = table.iloc[0]
    assert stem["flop"] == 1e12 and stem["bytes"] == 2e9
    assert stem["floor_us"] == pytest.approx(10_000.0)
    assert stem["fraction_of_floor"] == pytest.approx(10_000.0 / 11_001.0)
    assert stem["achieved_tflops"] == pytest.approx(1e12 / 11_001e-6 / 1e12)
    assert stem["achieved_gbps"] == pytest.approx(2e9 / 11_001e-6 / 1e9)
    assert stem["intensity"] == pytest.approx(500.0)
    gconv = table.iloc[1]
    assert gconv["floor_us"] == pytest.approx(20_000.0) and gconv["bound"] == "memory"
    unmapped = table.iloc[4]
    assert unmapped["flop"] == 0 and unmapped["bytes"] == 0 and unmapped["mapping"] == "unmapped"
    assert np.isnan(unmapped["intensity"])
    assert len(table.attrs["unclaimed"]) == 0
    # the table's times sum to the profile's; its floors to the waterline
    assert table["time_us"].sum() == pytest.approx(kernels()["time_us"].sum())
    assert table["floor_us"].sum() == pytest.approx(72_000.0)


def test_fused_kernel_claims_its_whole_block_with_fused_bytes():
    fused_kernels = pd.DataFrame([
        (0, "conv", 11_000.0, "stem", "module-range"),
        (1, "convfirst_block_fused", 12_000.0, "b", "module-range"),
        (2, "mean", 4_000.0, "head", "module-range"),
    ], columns=["index", "kernel", "time_us", "layers", "mapping"])
    table = profile_table(fused_kernels, layer_table(), P, B, fused=True)
    block = table.iloc[1]
    assert block["flop"] == pytest.approx(7e11)
    assert block["bytes"] == pytest.approx(2e10)
    assert block["floor_us"] == pytest.approx(10_000.0)
    assert block["n_layers"] == 3
    # without fused=True the same kernel claims only the rows named exactly 'b' (the add)
    plain = profile_table(fused_kernels, layer_table(), P, B)
    assert plain.iloc[1]["flop"] == 0 and len(plain.attrs["unclaimed"]) == 2


def test_a_layer_is_claimed_once_and_root_rows_match_the_root_label():
    layers = pd.DataFrame({"module": ["", "fc"], "flop": [0.0, 1e9], "bytes": [1e6, 1e6]})
    groups = pd.DataFrame({"layers": [ROOT_MODULE, "fc", "fc"], "time_us": [1.0, 2.0, 3.0]})
    joined = join_layers(groups, layers)
    assert list(joined["bytes"]) == [1e6, 1e6, 0.0]
    assert list(joined["flop"]) == [0.0, 1e9, 0.0]


def test_waterline_summary_reports_what_fusion_and_kernels_can_buy():
    table = profile_table(kernels(), layer_table(), P, B)
    s = waterline_summary(table, layer_table(), P, B)
    assert s["measured_ms"] == pytest.approx(112.004)
    assert s["waterline_ms"] == pytest.approx(72.0)
    assert s["fused_floor_ms"] == pytest.approx(22.0)
    assert s["ideal_ms"] == pytest.approx(17.0)
    assert s["kernels_can_buy"] == pytest.approx(112.004 / 72.0)
    assert s["fusion_can_buy"] == pytest.approx(72.0 / 22.0)


def test_efficiency_and_ideal_time():
    assert ideal_time_s(2e12, P) == pytest.approx(20e-3)
    assert computational_efficiency(2e12, 40e-3, P) == pytest.approx(0.5)
    # on the iso-efficiency line E, the efficiency of the point is E
    for e in analysis.ISO_EFFICIENCIES:
        t = iso_efficiency_time_s(3e12, e, P)
        assert computational_efficiency(3e12, t, P) == pytest.approx(e)
    with pytest.raises(ValueError):
        computational_efficiency(1.0, 0.0, P)


def test_efficiency_table_scales_work_with_batch():
    latency = pd.DataFrame({"model": ["m", "m"], "variant": ["eager", "eager"], "batch": [1, 10],
                            "ms": [1.0, 4.0]})
    out = efficiency_table(latency, {"m": 5e10}, P)
    np.testing.assert_allclose(out["gflop"], [50.0, 500.0])
    np.testing.assert_allclose(out["ideal_ms"], [0.5, 5.0])
    np.testing.assert_allclose(out["efficiency"], [0.5, 1.25])
    np.testing.assert_allclose(out["gap"], [2.0, 0.8])
    with pytest.raises(ValueError, match="no FLOP count"):
        efficiency_table(latency, {"other": 1.0}, P)


def test_profile_latency_and_accuracy_join():
    profiles = pd.DataFrame({"model": ["a", "a", "b"], "variant": ["eager"] * 3, "batch": [1, 1, 1],
                             "time_us": [500.0, 1500.0, 100.0]})
    lat = analysis.profile_latency(profiles)
    assert dict(zip(lat["model"], lat["ms"])) == {"a": 2.0, "b": 0.1}
    acc = pd.DataFrame({"model": ["a"], "top1": [80.0], "source": ["somewhere"]})
    joined = analysis.accuracy_latency(lat, acc)
    assert list(joined["model"]) == ["a"] and joined["top1"].iloc[0] == 80.0


def test_recorded_profiles_join_to_counted_layers():
    """The recorded H100 profile of the equal-shape control joins to its counted layers: almost all of
    the model's FLOP lands on a mapped kernel, nothing is double counted."""
    from convfirst import counting
    from convfirst.profiling import load_kernel_profiles, select_profile

    prof = load_kernel_profiles("h100")
    for variant in ("eager", "compile-default"):
        k = select_profile(prof, "convfirstnet_t", variant, 32)
        assert len(k) > 100
        layers = counting.count_layers("convfirstnet_t", batch=32)
        table = profile_table(k, layers, P, B)
        assert table["time_us"].sum() == pytest.approx(k["time_us"].sum())
        assert table["flop"].sum() == pytest.approx(layers["flop"].sum())
        assert (table["mapping"] == "unmapped").sum() <= 2
        assert len(table.attrs["unclaimed"]) == 0


def test_a_module_named_by_two_generated_kernels_shares_its_operators_in_order():
    """Squeeze-excite under torch.compile: the pooling lands in one generated kernel, the gating multiply in
    the next; the module's two rows go one to each group instead of both to the first."""
    layers = pd.DataFrame({"module": ["act", "se", "se.gate", "se"], "op": ["silu", "mean", "sigmoid", "mul"],
                           "kind": ["act", "pool", "act", "mul"], "flop": [0.0] * 4,
                           "bytes": [10.0, 5.0, 1.0, 20.0], "folded": [False] * 4})
    groups = pd.DataFrame({"layers": ["act;se", "se.gate;se"], "time_us": [1.0, 1.0]})
    joined = join_layers(groups, layers)
    assert list(joined["bytes"]) == [15.0, 21.0]
    assert list(joined["kind"]) == ["act", "mul"]


def test_kernels_of_a_folded_batchnorm_are_named_as_such():
    layers = pd.DataFrame({"module": ["conv", "bn"], "kind": ["conv_dense", "norm_bn"], "flop": [1e9, 0.0],
                           "bytes": [1e6, 0.0], "folded": [False, True]})
    groups = pd.DataFrame({"layers": ["conv", "bn"], "time_us": [1.0, 1.0]})
    joined = join_layers(groups, layers)
    assert list(joined["kind"]) == ["conv_dense", "norm_bn (folded)"]
    assert joined["bytes"].iloc[1] == 0.0


def test_profile_waterlines_of_a_counted_model_with_a_known_measured_time():
    """A synthetic profile of convfirstnet_p whose every module takes exactly twice its floors: the
    measured total must be twice the waterline; a variant with no recorded profile keeps its floors."""
    from convfirst.analysis import count_model_layers, profile_waterlines

    layers = count_model_layers("convfirstnet_p", 2)
    live = layers[~layers["folded"]].copy()
    live["floor_us"] = roofline_floor_s(live["flop"], live["bytes"], P, B) * 1e6
    per_module = live.groupby("module", sort=False)["floor_us"].sum()
    kernels = pd.DataFrame({"model": "convfirstnet_p", "variant": "eager", "batch": 2, "dtype": "bfloat16",
                            "index": range(len(per_module)), "kernel": [f"k{i}" for i in range(len(per_module))],
                            "time_us": 2 * per_module.to_numpy(),
                            "layers": [m or ROOT_MODULE for m in per_module.index], "mapping": "module-range"})
    results, summary = profile_waterlines(kernels, [["convfirstnet_p", "eager"], ["convfirstnet_p", "fused"]],
                                          2, P, B)
    eager = summary.iloc[0]
    assert eager["measured_ms"] == pytest.approx(2 * eager["waterline_ms"])
    assert eager["kernels_can_buy"] == pytest.approx(2.0)
    assert eager["fused_floor_ms"] < eager["waterline_ms"]
    assert eager["unmapped_time_share"] == 0.0
    fused = summary.iloc[1]
    assert fused["note"] == "no recorded profile" and np.isnan(fused["measured_ms"])
    assert fused["waterline_ms"] == pytest.approx(eager["waterline_ms"])
    assert results[("convfirstnet_p", "fused")]["table"] is None
    kinds = analysis.time_by_layer_kind(results)
    assert kinds["time_share"].sum() == pytest.approx(1.0)
    assert set(kinds["kind"]) >= {"conv_grouped", "conv_pointwise", "act", "add"}
    # every kind runs at exactly half its floor in this synthetic profile
    np.testing.assert_allclose(kinds.loc[kinds["floor_ms"] > 0, "fraction_of_floor"], 0.5)


def test_relative_to_the_reference_model():
    points = pd.DataFrame({"model": ["ref", "small"], "gflop": [100.0, 10.0], "ideal_ms": [1.0, 0.1],
                           "ms": [5.0, 4.0]})
    rel = analysis.relative_to(points, "ref")
    assert rel.loc[1, "work_x"] == pytest.approx(0.1)
    assert rel.loc[1, "measured_x"] == pytest.approx(0.8)
    assert rel.loc[1, "gap"] == pytest.approx(40.0)
    with pytest.raises(ValueError, match="reference model"):
        analysis.relative_to(points, "missing")


def test_block_types_for_baselines_and_families():
    from convfirst.blocks import ConvFirstBlock

    assert ConvFirstBlock in analysis.block_types_for("convfirstnet_t")
    assert analysis.block_types_for("convnext_tiny")[0].__name__ == "ConvNeXtBlock"
    assert {t.__name__ for t in analysis.block_types_for("efficientnet_b0")} == {"InvertedResidual",
                                                                               "DepthwiseSeparableConv"}
    assert analysis.block_types_for("vit_base_patch16_224") == ()


def test_recorded_ceilings_belong_to_the_run_nearest_in_time():
    from convfirst.ceilings import ceilings_at, ceilings_for, recorded_ceilings
    from convfirst.records import DataError

    rows = recorded_ceilings("h100")
    assert list(rows["date"]) == sorted(rows["date"])
    for _, row in rows.iterrows():
        assert ceilings_at("h100", row["date"])["date"] == row["date"]
    latest, gpu = ceilings_for("replay", "h100")
    assert gpu == "h100" and latest["date"] == rows["date"].iloc[-1]
    assert latest["bf16_tflops"] > 100 and latest["copy_tbps"] > 1
    with pytest.raises(DataError, match="GPUs with recorded data"):
        ceilings_for("replay", "a100")
    with pytest.raises(ValueError, match="mode"):
        ceilings_for("auto", "h100")


def test_efficiency_against_cited_keeps_the_best_variant_and_places_it_in_the_range():
    table = pd.DataFrame({
        "model": ["a", "a", "b", "c", "d"],
        "variant": ["eager", "compiled", "eager", "eager", "eager"],
        "batch": [256, 256, 256, 256, 32],
        "efficiency": [0.10, 0.30, 0.04, 0.60, 0.99],
    })
    cited = pd.DataFrame({"family": ["F", "G"], "efficiency_low_pct": [19, 47], "efficiency_high_pct": [35, 55],
                          "source": ["s1", "s2"]})
    family = {"a": "F", "b": "F", "c": "G", "d": "G"}.get
    got = analysis.efficiency_against_cited(table, cited, 256, family).set_index("model")
    assert list(got.index) == ["a", "b", "c"]          # d has no row at batch 256
    assert got.loc["a", "variant"] == "compiled" and got.loc["a", "measured_pct"] == pytest.approx(30.0)
    assert list(got["position"]) == ["within", "below", "above"]
    assert got.loc["c", "source"] == "s2"
