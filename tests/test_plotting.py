"""The figures draw what the analysis computes: read the drawn data back and check it by hand."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from convfirst import plotting  # noqa: E402
from convfirst.analysis import ISO_EFFICIENCIES, profile_table, waterline  # noqa: E402

P = 100e12
B = 2e12  # ridge at 50 FLOP/byte


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_roofline_passes_through_the_ridge_on_both_roofs():
    points = pd.DataFrame({"intensity": [5.0, 500.0], "achieved_tflops": [5.0, 60.0],
                           "time_us": [10.0, 30.0], "bound": ["memory", "compute"]})
    ax = plotting.plot_roofline(P, B, points)
    roof = ax.get_lines()[0]
    x, y = roof.get_xdata(), roof.get_ydata()
    i = int(np.argmin(np.abs(x - 50.0)))
    assert x[i] == pytest.approx(50.0)          # the ridge is one of the drawn points
    assert y[i] == pytest.approx(100.0)         # where the memory roof I*B reaches P (in TFLOP/s)
    below = x < 50.0
    np.testing.assert_allclose(y[below], x[below] * B / 1e12)   # memory roof
    np.testing.assert_allclose(y[~below], 100.0)                 # compute roof
    offsets = ax.collections[0].get_offsets()
    np.testing.assert_allclose(offsets, [[5.0, 5.0], [500.0, 60.0]])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "FLOP/byte" in ax.get_xlabel() and "TFLOP/s" in ax.get_ylabel()


def test_roofline_leaves_out_points_without_work():
    points = pd.DataFrame({"intensity": [np.nan, 5.0], "achieved_tflops": [0.0, 5.0], "time_us": [1.0, 1.0]})
    ax = plotting.plot_roofline(P, B, points)
    assert len(ax.collections[0].get_offsets()) == 1


def test_iso_efficiency_lines_pass_through_the_right_points():
    points = pd.DataFrame({"model": ["a", "b"], "variant": ["eager", "eager"], "gflop": [100.0, 2000.0],
                           "ms": [10.0, 40.0]})
    ax = plotting.plot_efficiency_gap(points, P)
    lines = ax.get_lines()[:len(ISO_EFFICIENCIES)]
    for e, line in zip(ISO_EFFICIENCIES, lines):
        w_gflop, t_ms = line.get_xdata(), line.get_ydata()
        # T = W / (E P): W = 1000 GFLOP at E = 50 % on P = 100 TFLOP/s takes 20 ms
        np.testing.assert_allclose(t_ms, w_gflop * 1e9 / (e * P) * 1e3)
        assert np.interp(np.log(1000.0), np.log(w_gflop), np.log(t_ms)) == pytest.approx(
            np.log(1000e9 / (e * P) * 1e3))
    # point a: 100 GFLOP in 10 ms is 10 TFLOP/s = 10 % of P: it lies on the E = 10 % line
    line10 = lines[ISO_EFFICIENCIES.index(0.1)]
    t_at_a = np.exp(np.interp(np.log(100.0), np.log(line10.get_xdata()), np.log(line10.get_ydata())))
    assert t_at_a == pytest.approx(10.0)
    assert "GFLOP" in ax.get_xlabel() and "ms" in ax.get_ylabel()


def test_accuracy_latency_joins_ideal_and_measured_at_equal_accuracy():
    points = pd.DataFrame({"model": ["a"], "top1": [80.0], "ideal_ms": [2.0], "ms": [20.0]})
    ax = plotting.plot_accuracy_latency(points)
    gap = ax.get_lines()[0]
    np.testing.assert_allclose(gap.get_xdata(), [2.0, 20.0])
    np.testing.assert_allclose(gap.get_ydata(), [80.0, 80.0])
    hollow, filled = ax.collections[:2]
    np.testing.assert_allclose(hollow.get_offsets(), [[2.0, 80.0]])
    np.testing.assert_allclose(filled.get_offsets(), [[20.0, 80.0]])
    assert "10x" in ax.texts[0].get_text()


def test_waterline_curves_end_at_their_totals():
    layers = pd.DataFrame({"module": ["s", "b.x", "b.y", "h"], "flop": [1e12, 2e11, 5e11, 0.0],
                           "bytes": [2e9, 4e10, 6e10, 4e9], "bytes_fused": [2e9, 1e10, 1e10, 4e9],
                           "fused_block": ["", "b", "b", ""], "folded": [False] * 4})
    kernels = pd.DataFrame({"index": [0, 1, 2, 3], "kernel": ["k0", "k1", "k2", "k3"],
                            "time_us": [11_000.0, 40_000.0, 45_000.0, 4_000.0], "layers": ["s", "b.x", "b.y", "h"],
                            "mapping": ["module-range"] * 4})
    table = profile_table(kernels, layers, P, B)
    ax = plotting.plot_waterline(table, waterline(layers, P, B), waterline(layers, P, B, fused=True))
    measured, water, fused = ax.get_lines()
    assert measured.get_ydata()[-1] == pytest.approx(100.0)       # ms
    assert water.get_ydata()[-1] == pytest.approx(62.0)           # 10 + 20 + 30 + 2
    assert fused.get_ydata()[-1] == pytest.approx(22.0)           # 10 + max(7, 10) + 2
    np.testing.assert_allclose(water.get_xdata(), [0.0, 1000.0, 1200.0, 1700.0, 1700.0])  # GFLOP
    assert measured.get_xdata()[0] == 0.0 and measured.get_ydata()[0] == 0.0
    assert "100.00 ms" in measured.get_label() and "22.00 ms" in fused.get_label()
    ax2 = plotting.plot_waterline(table, waterline(layers, P, B), x="index")
    np.testing.assert_allclose(ax2.get_lines()[0].get_xdata(), [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="x="):
        plotting.plot_waterline(table, waterline(layers, P, B), x="time")
