"""Kernel profiles: parsing the profiler's trace, mapping kernels to layers, and a real profile on the GPU."""
import json

import pandas as pd
import pytest
import torch

from convfirst import profiling
from convfirst.analysis import ROOT_MODULE
from convfirst.profiling import (ModuleRanges, innermost_enclosing, map_by_anchor_order, map_by_module,
                                 median_over_repeats, parse_chrome_trace, tidy_profile)


def ev(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": tid, "args": args}


def synthetic_trace(repeats=2, conv_us=(7.0, 9.0)):
    """Two forward passes of a conv (one library call launching a cast and a conv kernel) and a ReLU."""
    events = []
    for r in range(repeats):
        t0 = 1000.0 * r
        events += [
            ev("user_annotation", f"forward:{r}", t0, 100),
            ev("user_annotation", "module:(model)", t0 + 1, 98),
            ev("user_annotation", "module:conv", t0 + 10, 30),
            ev("cpu_op", "aten::conv2d", t0 + 12, 25),
            ev("cpu_op", "aten::_to_copy", t0 + 13, 3),
            ev("cuda_runtime", "cudaLaunchKernel", t0 + 14, 1, correlation=10 * r + 1),
            ev("cuda_runtime", "cudaLaunchKernel", t0 + 20, 1, correlation=10 * r + 2),
            ev("user_annotation", "module:act", t0 + 50, 20),
            ev("cpu_op", "aten::relu", t0 + 52, 10),
            ev("cuda_driver", "cuLaunchKernel", t0 + 55, 1, correlation=10 * r + 3),
            # GPU side (another 'thread'): start times order the kernels
            ev("kernel", "cast_kernel", t0 + 500, 1.0, tid=7, correlation=10 * r + 1),
            ev("kernel", "conv_kernel", t0 + 502, conv_us[r], tid=7, correlation=10 * r + 2),
            ev("kernel", "relu_kernel", t0 + 520, 3.0, tid=7, correlation=10 * r + 3),
        ]
    events.append(ev("kernel", "outside_kernel", 5000, 2.0, tid=7, correlation=999))  # no launch recorded
    return {"traceEvents": events}


def test_innermost_enclosing_handles_nesting_and_boundaries():
    intervals = [(0, 100, "outer"), (10, 20, "a"), (20, 30, "b"), (40, 50, "c")]
    got = innermost_enclosing(intervals, [5, 10, 15, 25, 45, 100, 150])
    assert got == [["outer"], ["outer", "a"], ["outer", "a"], ["outer", "b"], ["outer", "c"], ["outer"], []]


def test_parse_chrome_trace_maps_each_kernel_to_its_module_and_op():
    df = parse_chrome_trace(synthetic_trace())
    first = df[df["repeat"] == 0]
    assert list(first["kernel"]) == ["cast_kernel", "conv_kernel", "relu_kernel"]
    assert list(first["module"]) == ["conv", "conv", "act"]
    assert list(first["index"]) == [0, 1, 2]
    assert list(first["anchor"]) == [True, True, False]
    assert first["op_call"].iloc[0] == first["op_call"].iloc[1]          # one library call
    assert first["ops"].iloc[0] == "aten::conv2d > aten::_to_copy"
    outside = df[df["repeat"] == -1]
    assert list(outside["kernel"]) == ["outside_kernel"] and outside["module"].iloc[0] == ""


def test_median_over_repeats_takes_the_median_time_per_kernel():
    df = median_over_repeats(parse_chrome_trace(synthetic_trace(repeats=2, conv_us=(7.0, 9.0))))
    assert list(df["kernel"]) == ["cast_kernel", "conv_kernel", "relu_kernel"]
    assert df["time_us"].tolist() == [1.0, 8.0, 3.0]
    assert df["time_us_min"].tolist() == [1.0, 7.0, 3.0]
    assert (df["repeats"] == 2).all()


def test_map_by_module_keeps_unmapped_kernels():
    kernels = pd.DataFrame({"index": [0, 1], "kernel": ["a", "b"], "time_us": [1.0, 2.0],
                            "module": ["conv", ""]})
    out = map_by_module(kernels)
    assert list(out["mapping"]) == ["module-range", "unmapped"]
    assert len(out) == 2


def _kernels(rows):
    return pd.DataFrame(rows, columns=["index", "kernel", "module", "anchor", "op_call"])


def test_map_by_anchor_order_matches_library_calls_and_segments():
    eager = _kernels([
        (0, "conv0", "stem", True, 1.0), (1, "ln", "norm", False, None),
        (2, "gemm", "fc1", True, 2.0), (3, "gelu", "act", False, None), (4, "add", "block", False, None),
        (5, "gemm", "fc2", True, 3.0), (6, "mean", "head", False, None)])
    compiled = _kernels([
        (0, "triton_cast", "", False, None),
        (1, "cudnn_conv", "", True, 10.0),
        (2, "triton_ln", "", False, None),
        (3, "memset", "", True, 20.0), (4, "nvjet", "", True, 20.0),   # one addmm call, two kernels
        (5, "triton_gelu_add", "", False, None),
        (6, "nvjet", "", True, 30.0),
        (7, "triton_mean", "", False, None),
        (8, "extra_gemm", "", True, 40.0)])                            # no eager counterpart
    out = map_by_anchor_order(compiled, eager)
    assert list(out["layers"]) == ["", "stem", "norm", "fc1", "fc1", "act;block", "fc2", "head", ""]
    assert list(out["mapping"]) == ["unmapped", "anchor-order", "segment-order", "anchor-order",
                                    "anchor-order", "segment-order", "anchor-order", "segment-order",
                                    "unmapped"]


def test_tidy_profile_keeps_the_recorded_columns():
    table = pd.DataFrame({"model": ["m"], "variant": ["eager"], "batch": [1], "dtype": ["bfloat16"],
                          "layout": ["channels_last"], "cast": ["model"], "index": [0], "kernel": ["k"], "time_us": [1.0],
                          "time_us_min": [1.0], "repeats": [5], "module": ["conv"], "module_type": ["Conv2d"],
                          "ops": ["Torch-Compiled Region > aten::convolution > aten::cudnn_convolution"],
                          "op_call": [1.0], "anchor": [True], "layers": [None], "mapping": ["unmapped"]})
    out = tidy_profile(table)
    assert list(out.columns) == list(profiling.PROFILE_COLUMNS)
    assert out["op"].iloc[0] == "aten::convolution" and out["layers"].iloc[0] == ""


def test_module_ranges_nest_inside_the_model_range_on_cpu(tmp_path):
    from torch.profiler import ProfilerActivity, profile, record_function

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Sequential(torch.nn.ReLU()))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with ModuleRanges(model):
            with record_function("forward:0"):
                model(torch.randn(1, 3, 8, 8))
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    events = json.loads(path.read_text())["traceEvents"]
    names = [e["name"] for e in events if e.get("cat") == "user_annotation"]
    assert names[:1] == ["forward:0"]
    assert set(names[1:]) == {f"module:{ROOT_MODULE}", "module:0", "module:1", "module:1.0"}
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())   # hooks removed


def test_recorded_profile_has_every_model_variant_and_provenance():
    from convfirst.records import load_measurements, recorded_file

    prof = load_measurements(recorded_file("kernel_profile", "h100"))
    have = set(zip(prof["model"], prof["variant"]))
    for model in ("convnext_tiny", "efficientnet_b0", "convfirstnet_t"):
        assert (model, "eager") in have and (model, "compile-default") in have
    assert prof["time_us"].gt(0).all()
    # unmapped kernels are listed, and they are a small share of the time
    for _, g in prof.groupby(["model", "variant", "batch"]):
        assert g.loc[g["mapping"] == "unmapped", "time_us"].sum() < 0.05 * g["time_us"].sum()


@pytest.mark.gpu
def test_profile_of_a_real_model_maps_almost_every_kernel():
    eager = profiling.profile_model("convfirstnet_p", "eager", 8, repeats=2)
    assert len(eager) > 20
    assert (eager["mapping"] == "unmapped").mean() < 0.1
    compiled = profiling.profile_model("convfirstnet_p", "compile-default", 8, repeats=2, eager_profile=eager)
    assert (compiled["mapping"] != "unmapped").mean() > 0.8


def test_recorded_latency_prefers_the_model_benchmark_and_fills_in_from_profiles():
    from convfirst.records import DataError

    asked = ["convnext_tiny", "efficientnet_b0", "convfirstnet_t"]
    lat = profiling.recorded_latency("h100", asked)
    assert not lat.duplicated(["model", "variant", "batch"]).any()
    assert (lat["ms"] > 0).all()
    assert set(lat["source"]) <= {"model benchmark (wall clock)", "model benchmark (wall clock, CUDA graph)",
                                  "kernel profile (sum of kernel times)"}
    prof = profiling.load_kernel_profiles("h100")
    prof = prof[prof["model"].isin(asked)]
    assert set(lat["model"]) <= set(asked)
    # every profiled case of the models asked for has a latency
    assert set(zip(prof["model"], prof["variant"], prof["batch"])) <= set(zip(lat["model"], lat["variant"],
                                                                              lat["batch"]))
    with pytest.raises(DataError, match="h100"):
        profiling.recorded_latency("a100")


def test_select_profile_names_what_is_recorded():
    from convfirst.params import ParameterError

    prof = profiling.load_kernel_profiles("h100")
    one = profiling.select_profile(prof, "convnext_tiny", "eager", 256)
    assert list(one["index"]) == list(range(len(one)))
    assert (one["cast"] == "model").all() and one["date"].nunique() == 1
    with pytest.raises(ParameterError, match="recorded"):
        profiling.select_profile(prof, "convnext_tiny", "eager", 7)


def test_check_cases_rejects_bad_pairs_with_a_clear_message():
    from convfirst.params import ParameterError

    assert profiling.check_cases([("convnext_tiny", "eager")]) == [["convnext_tiny", "eager"]]
    with pytest.raises(ParameterError, match="pairs"):
        profiling.check_cases("convnext_tiny")
    with pytest.raises(ParameterError, match="variants"):
        profiling.check_cases([["convnext_tiny", "jit"]])
    with pytest.raises(ParameterError, match="models"):
        profiling.check_cases([["alexnet", "eager"]])
    with pytest.raises(ParameterError, match="fused"):
        profiling.check_cases([["convnext_tiny", "fused"]])


def test_check_recorded_batch_lists_the_recorded_ones():
    from convfirst.params import ParameterError

    prof = profiling.load_kernel_profiles("h100")
    assert profiling.check_recorded_batch(prof, 256) == 256
    with pytest.raises(ParameterError, match=r"recorded batches: \[1, 32, 256\]"):
        profiling.check_recorded_batch(prof, 7)
