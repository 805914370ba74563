"""The study's figures: roofline, waterline, efficiency gap, accuracy against latency (matplotlib/seaborn).

Each function draws on a given ``ax`` (or a new one) from plain DataFrames and returns the Axes, so the
notebooks hold only a call and the tests can read the drawn data back. The arithmetic lives in
:mod:`convfirst.analysis`; nothing here computes a number the book reports.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .analysis import ISO_EFFICIENCIES, attainable_flops, iso_efficiency_time_s, ridge_intensity

BOUND_COLORS = {"memory": "tab:blue", "compute": "tab:red", "": "tab:gray"}


def _axes(ax=None, figsize=(7, 4.5)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


# ----------------------------------------------------------------------------------------------------------
# Roofline
# ----------------------------------------------------------------------------------------------------------

def plot_roofline(peak_flops: float, bandwidth: float, points: pd.DataFrame | None = None, *, ax=None,
                  intensity_range: tuple[float, float] | None = None, size_col: str = "time_us",
                  label_col: str | None = None, title: str | None = None, roof_label: str = "measured roofline",
                  points_label: str | None = None):
    """The roofline ``min(P, I * B)`` on log-log axes (TFLOP/s against FLOP/byte), with kernels as points.

    ``points`` needs ``intensity`` (FLOP/byte) and ``achieved_tflops``; a point's area follows ``size_col``
    (its time; equal sizes when the column is absent) and its colour the ``bound`` column when present.
    Points with no FLOP are left out (they have no place on a log axis); the caller lists them in a table.
    """
    ax = _axes(ax)
    ridge = ridge_intensity(peak_flops, bandwidth)
    lo, hi = intensity_range or (min(ridge / 1000, 0.1), ridge * 30)
    if points is not None and len(points):
        finite = points["intensity"].replace([np.inf, -np.inf], np.nan).dropna()
        finite = finite[finite > 0]
        if len(finite):
            lo, hi = min(lo, finite.min() / 2), max(hi, finite.max() * 2)
    x = np.geomspace(lo, hi, 400)
    x = np.unique(np.concatenate([x, [ridge]]))
    ax.plot(x, attainable_flops(x, peak_flops, bandwidth) / 1e12, color="black", lw=2, label=roof_label)
    ax.axvline(ridge, color="gray", ls=":", lw=1)
    ax.text(ridge, 0.03, f" ridge {ridge:.0f} FLOP/B", transform=ax.get_xaxis_transform(), fontsize=8,
            color="gray", ha="left", va="bottom")
    if points is not None and len(points):
        p = points[(points["achieved_tflops"] > 0) & (points["intensity"] > 0)]
        if size_col in p.columns:
            area = 10 + 300 * p[size_col] / max(float(p[size_col].max()), 1e-12)
            label = points_label or f"kernels (area ~ {size_col})"
        else:
            area = 40.0
            label = points_label or "kernels"
        colors = p["bound"].map(BOUND_COLORS).fillna("tab:gray") if "bound" in p.columns else "tab:blue"
        ax.scatter(p["intensity"], p["achieved_tflops"], s=area, c=colors, alpha=0.6, edgecolors="white",
                   linewidths=0.5, label=label)
        if label_col:
            order = np.argsort(p["intensity"].to_numpy())
            for rank, i in enumerate(order):  # alternate above/below so neighbours do not overlap
                row = p.iloc[i]
                ax.annotate(str(row[label_col]), (row["intensity"], row["achieved_tflops"]), fontsize=7,
                            textcoords="offset points", xytext=(-4, 8 if rank % 2 == 0 else -12),
                            ha="right" if row["intensity"] > ridge / 3 else "left")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("operational intensity (FLOP/byte)")
    ax.set_ylabel("throughput (TFLOP/s)")
    ax.set_title(title or f"Roofline: P = {peak_flops / 1e12:.0f} TFLOP/s, B = {bandwidth / 1e12:.2f} TB/s")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return ax


# ----------------------------------------------------------------------------------------------------------
# Waterline
# ----------------------------------------------------------------------------------------------------------

def _cumulative_steps(x_end: np.ndarray, y_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points of a line from (0, 0) through the cumulative ends of each step."""
    return np.concatenate([[0.0], x_end]), np.concatenate([[0.0], y_end])


def plot_waterline(table: pd.DataFrame | None, waterline_steps: pd.DataFrame,
                   fused_steps: pd.DataFrame | None = None, *, ax=None, x: str = "flop",
                   title: str | None = None, fused_label: str = "fused-block floor",
                   peak_flops: float | None = None):
    """Cumulative time against cumulative work (``x='flop'``, GFLOP) or step index (``x='index'``).

    Three curves on one figure: the measured kernels stacked in execution order (``table`` from
    :func:`convfirst.analysis.profile_table`), the waterline (per-layer floors, ``waterline_steps`` from
    :func:`convfirst.analysis.waterline`) and the fused floor (``fused_steps``, with ``fused=True``). The
    end of each curve is its total, written in the legend. ``table=None`` draws the floors alone (no
    profile recorded). Memory-bound steps rise steeply (time without
    work); the vertical distance between measured and waterline is what better kernels can buy, between
    waterline and fused floor what fusion can buy.
    """
    ax = _axes(ax)
    if x not in ("flop", "index"):
        raise ValueError(f"x={x!r}: choose 'flop' (cumulative GFLOP) or 'index' (kernel order)")

    def xs(df, cum_col):
        if x == "flop":
            return df[cum_col].to_numpy() / 1e9
        return np.arange(1, len(df) + 1, dtype=float)

    if table is not None:
        mx, my = _cumulative_steps(xs(table, "cum_flop"), table["cum_time_us"].to_numpy() / 1e3)
        ax.plot(mx, my, color="tab:red", lw=2, label=f"measured kernels: {my[-1]:.2f} ms")
    wx, wy = _cumulative_steps(xs(waterline_steps, "cum_flop"), waterline_steps["cum_floor_s"].to_numpy() * 1e3)
    ax.plot(wx, wy, color="tab:blue", lw=2, label=f"waterline (per-layer floors): {wy[-1]:.2f} ms")
    if fused_steps is not None:
        fx, fy = _cumulative_steps(xs(fused_steps, "cum_flop"), fused_steps["cum_floor_s"].to_numpy() * 1e3)
        ax.plot(fx, fy, color="tab:green", lw=2, ls="--", label=f"{fused_label}: {fy[-1]:.2f} ms")
    if peak_flops is not None and x == "flop":
        w_end = float(waterline_steps["cum_flop"].iloc[-1]) if len(waterline_steps) else 0.0
        ax.plot([0.0, w_end / 1e9], [0.0, w_end / peak_flops * 1e3], color="black", lw=1, ls=":",
                label=f"ideal W / P: {w_end / peak_flops * 1e3:.2f} ms")
    ax.set_xlabel("cumulative work (GFLOP)" if x == "flop" else "kernel (step) in execution order")
    ax.set_ylabel("cumulative time (ms)")
    ax.set_title(title or "Waterline")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, alpha=0.3)
    return ax


# ----------------------------------------------------------------------------------------------------------
# Efficiency gap
# ----------------------------------------------------------------------------------------------------------

def plot_efficiency_gap(points: pd.DataFrame, peak_flops: float, *, ax=None,
                        efficiencies: Sequence[float] = ISO_EFFICIENCIES, label_col: str = "model",
                        hue_col: str | None = "variant", title: str | None = None):
    """log W (GFLOP per forward pass) against log measured latency (ms), with iso-efficiency diagonals.

    ``points`` needs ``gflop`` and ``ms``. Each diagonal is ``T = W / (E * P)``: a point on the line E = 20 %
    runs at 20 % of the peak rate. Lower right is better (more work in less time).
    """
    ax = _axes(ax)
    w = points["gflop"].to_numpy(dtype=float) * 1e9
    lo, hi = w.min() / 3, w.max() * 3
    wl = np.geomspace(lo, hi, 50)
    for e in efficiencies:
        t_ms = iso_efficiency_time_s(wl, e, peak_flops) * 1e3
        ax.plot(wl / 1e9, t_ms, color="gray", lw=0.8, ls="--", alpha=0.8)
        ax.annotate(f"E = {e:.0%}", (wl[-1] / 1e9, t_ms[-1]), fontsize=7, color="gray",
                    textcoords="offset points", xytext=(2, 0), va="center")
    groups = [(None, points)] if hue_col is None or hue_col not in points.columns else list(points.groupby(hue_col))
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    for i, (name, df) in enumerate(groups):
        ax.scatter(df["gflop"], df["ms"], s=40, marker=markers[i % len(markers)], label=name, zorder=3)
    # one label per model, left of its points (a model's variants share one W, so they stack vertically)
    for label, df in points.groupby(label_col):
        row = df.loc[df["ms"].idxmax()]
        ax.annotate(str(label), (row["gflop"], row["ms"]), fontsize=7, textcoords="offset points",
                    xytext=(-6, 0), ha="right", va="center")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("work W per forward pass (GFLOP)")
    ax.set_ylabel("measured latency T (ms)")
    ax.set_title(title or f"Efficiency gap (P = {peak_flops / 1e12:.0f} TFLOP/s)")
    if hue_col is not None and hue_col in points.columns:
        ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.3)
    return ax


def plot_accuracy_latency(points: pd.DataFrame, *, ax=None, label_col: str = "model", title: str | None = None):
    """Accuracy against latency, each model twice: at its ideal latency T* (hollow) and measured T (filled),
    joined by a line whose length (on the log axis) is the efficiency gap T / T*.

    ``points`` needs ``top1`` (%), ``ideal_ms`` and ``ms``.
    """
    ax = _axes(ax)
    for _, row in points.iterrows():
        ax.plot([row["ideal_ms"], row["ms"]], [row["top1"], row["top1"]], color="gray", lw=1, zorder=1)
    ax.scatter(points["ideal_ms"], points["top1"], s=40, facecolors="none", edgecolors="tab:blue",
               label="ideal T* = W / P", zorder=2)
    ax.scatter(points["ms"], points["top1"], s=40, color="tab:red", label="measured T", zorder=3)
    for _, row in points.iterrows():
        ax.annotate(f"{row[label_col]} ({row['ms'] / row['ideal_ms']:.0f}x)", (row["ms"], row["top1"]),
                    fontsize=7, textcoords="offset points", xytext=(4, 2))
    ax.set_xscale("log")
    ax.set_xlabel("latency per forward pass (ms)")
    ax.set_ylabel("ImageNet-1k top-1 (%), cited")
    ax.set_title(title or "Accuracy against latency: ideal and measured")
    ax.margins(x=0.15, y=0.1)
    ax.legend(fontsize=8, loc="best")
    ax.grid(True, which="both", alpha=0.3)
    return ax
