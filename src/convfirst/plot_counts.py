"""Figures and display tables of the "Operations and bytes" chapter (counts from :mod:`convfirst.counting`).

Every function takes tables computed by :mod:`convfirst.counting` and returns a figure or a DataFrame
ready to show; nothing here counts or measures. Units are in the column names and axis labels.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .records import DataError

__all__ = ["ridge_intensity", "block_table_for_display", "model_table_for_display", "plot_block_intensity",
           "plot_intensity_vs_gmac", "plot_bytes_per_image", "describe_block_bounds", "describe_model_bounds",
           "show_text"]

_DTYPE_NAMES = {1: "int8/fp8", 2: "bf16", 4: "fp32", 8: "fp64"}


def ridge_intensity(gpu: str, dtype: str = "bfloat16") -> tuple[float | None, str]:
    """The ridge point P/B (FLOP per byte) of ``gpu`` from its recorded ceilings, and a note saying where
    it comes from. ``(None, reason)`` when no ceilings are recorded for that GPU."""
    from .ceilings import CEILINGS_PREFIX, bandwidth_bytes_per_s, load_ceilings, peak_flops
    from .records import recorded_file

    try:
        path = recorded_file(CEILINGS_PREFIX, gpu)
        row = load_ceilings(gpu)
    except DataError as err:
        return None, f"no measured ceilings for this GPU ({err}); the figures are drawn without a ridge line"
    p, b = peak_flops(row, dtype), bandwidth_bytes_per_s(row)
    note = (f"ridge point P/B = {p / 1e12:.0f} TFLOP/s / {b / 1e12:.2f} TB/s = {p / b:.0f} FLOP/B, "
            f"measured on {row['gpu']} ({dtype} matmul, copy bandwidth), from data/{path.name}")
    return p / b, note


def block_table_for_display(blocks: pd.DataFrame, ridge: float | None = None) -> pd.DataFrame:
    """A :func:`convfirst.counting.block_accounting_table` in readable units, with the bound each form is
    under at ``ridge`` (memory-bound when its intensity is below the ridge point)."""
    out = pd.DataFrame({
        "block": blocks["block"],
        "C": blocks["C"], "HxW": blocks["H"].astype(str) + "x" + blocks["W"].astype(str), "E": blocks["E"],
        "GFLOP": blocks["flop"] / 1e9,
        "MB unfused": blocks["bytes_unfused"] / 1e6,
        "MB fused": blocks["bytes_fused"] / 1e6,
        "FLOP/B unfused": blocks["intensity_unfused"],
        "FLOP/B fused": blocks["intensity_fused"],
        "bytes saved x": blocks["bytes_unfused"] / blocks["bytes_fused"],
    })
    if ridge is not None:
        out["unfused is"] = np.where(blocks["intensity_unfused"] >= ridge, "compute-bound", "memory-bound")
        out["fused is"] = np.where(blocks["intensity_fused"] >= ridge, "compute-bound", "memory-bound")
    return out.round(2)


def model_table_for_display(models: pd.DataFrame) -> pd.DataFrame:
    """A :func:`convfirst.counting.models_table` in readable units (per image at the counted batch)."""
    out = pd.DataFrame({
        "model": models["model"], "family": models["family"], "resolution": models["resolution"],
        "params (M)": models["params_m"], "GMAC": models["gmac"],
        "activations (M)": models["activations_m"],
        "MB/image unfused": models["bytes_unfused_mb"], "MB/image fused": models["bytes_fused_mb"],
        "FLOP/B unfused": models["intensity_unfused"], "FLOP/B fused": models["intensity_fused"],
    })
    return out.round(2)


def _ridge_line(ax, ridge: float | None, orientation: str = "h") -> None:
    if ridge is None:
        return
    draw = ax.axhline if orientation == "h" else ax.axvline
    draw(ridge, color="0.3", linestyle="--", linewidth=1)
    if orientation == "h":
        ax.annotate(f"ridge point {ridge:.0f} FLOP/B", xy=(0.99, ridge), ha="right", xycoords=("axes fraction", "data"),
                    xytext=(0, 3), textcoords="offset points", fontsize=8, color="0.3")


def plot_block_intensity(blocks: pd.DataFrame, ridge: float | None = None, dtype_bytes: int = 2):
    """Bars of operational intensity (FLOP/B, log scale) per block shape, unfused vs fused."""
    labels = blocks["block"] + " " + blocks["C"].astype(str) + "@" + blocks["H"].astype(str)
    long = pd.concat([
        pd.DataFrame({"block shape": labels, "form": "unfused (one kernel per layer)",
                      "intensity": blocks["intensity_unfused"]}),
        pd.DataFrame({"block shape": labels, "form": "fused (one kernel per block)",
                      "intensity": blocks["intensity_fused"]}),
    ])
    fig, ax = plt.subplots(figsize=(9, 4))
    sns.barplot(data=long, x="block shape", y="intensity", hue="form", ax=ax, palette=["#bbbbbb", "#1f77b4"])
    ax.set_yscale("log")
    ax.set_ylabel(f"operational intensity (FLOP/byte, {_DTYPE_NAMES.get(dtype_bytes, dtype_bytes)})")
    ax.set_xlabel("block (channels @ spatial size)")
    ax.tick_params(axis="x", rotation=30)
    _ridge_line(ax, ridge)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def plot_intensity_vs_gmac(models: pd.DataFrame, ridge: float | None = None, dtype_bytes: int = 2):
    """Each model at (GMAC per image, intensity): open marker unfused, filled marker fused, joined by a
    line when fusion changes it. Log-log axes."""
    fig, ax = plt.subplots(figsize=(8, 5))
    palette = dict(zip(sorted(models["family"].unique()), sns.color_palette("deep")))
    for row in models.itertuples():
        color = palette[row.family]
        ax.scatter(row.gmac, row.intensity_unfused, facecolors="none", edgecolors=color, s=40)
        if row.intensity_fused > row.intensity_unfused * 1.001:
            ax.scatter(row.gmac, row.intensity_fused, color=color, s=40)
            ax.plot([row.gmac] * 2, [row.intensity_unfused, row.intensity_fused], color=color, lw=0.8)
        ax.annotate(row.model, (row.gmac, max(row.intensity_unfused, row.intensity_fused)),
                    xytext=(4, 2), textcoords="offset points", fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic per image (GMAC)")
    ax.set_ylabel(f"model operational intensity (FLOP/byte, {_DTYPE_NAMES.get(dtype_bytes, dtype_bytes)})")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=f) for f, c in palette.items()]
    handles += [plt.Line2D([], [], marker="o", ls="", mfc="none", mec="0.3", label="unfused"),
                plt.Line2D([], [], marker="o", ls="", color="0.3", label="fused blocks")]
    ax.legend(handles=handles, fontsize=8, frameon=False, loc="upper left")
    _ridge_line(ax, ridge)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def plot_bytes_per_image(models: pd.DataFrame, dtype_bytes: int = 2):
    """Horizontal bars: compulsory DRAM traffic per image (MB), unfused vs fused, per model."""
    order = models.sort_values("gmac")["model"]
    long = pd.concat([
        pd.DataFrame({"model": models["model"], "form": "unfused", "MB": models["bytes_unfused_mb"]}),
        pd.DataFrame({"model": models["model"], "form": "fused blocks", "MB": models["bytes_fused_mb"]}),
    ])
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(models) + 1.5))
    sns.barplot(data=long, y="model", x="MB", hue="form", order=order, ax=ax, palette=["#bbbbbb", "#1f77b4"])
    ax.set_xlabel(f"compulsory DRAM traffic per image (MB, {_DTYPE_NAMES.get(dtype_bytes, dtype_bytes)})")
    ax.set_ylabel("")
    ax.legend(fontsize=8, frameon=False)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def _label(row) -> str:
    return f"{row['block']} {row['C']}@{row['H']}"


def describe_block_bounds(blocks: pd.DataFrame, ridge: float | None) -> str:
    """One computed paragraph on which block shapes are memory- or compute-bound, unfused and fused."""
    saved = blocks["bytes_unfused"] / blocks["bytes_fused"]
    text = (f"Fusing a block cuts its compulsory traffic by {saved.min():.1f}x to {saved.max():.1f}x "
            f"over these {len(blocks)} shapes.")
    if ridge is None:
        return text
    mem_unfused = blocks["intensity_unfused"] < ridge
    comp_fused = blocks["intensity_fused"] >= ridge
    text += (f" At the ridge point of {ridge:.0f} FLOP/B, {int(mem_unfused.sum())} of {len(blocks)} shapes are "
             f"memory-bound unfused")
    above = [_label(r) for _, r in blocks[~mem_unfused].iterrows()]
    text += f" (not: {', '.join(above)})" if above else ""
    text += f", and {int(comp_fused.sum())} of {len(blocks)} are compute-bound fused."
    return text


def describe_model_bounds(models: pd.DataFrame, ridge: float | None) -> str:
    """One computed paragraph on where whole models sit against the ridge point, unfused and fused."""
    ours = models[models["family"] == "ours"]
    saved = ours["bytes_unfused_mb"] / ours["bytes_fused_mb"]
    text = ""
    if len(ours):
        text = (f"Fusing the blocks of our {len(ours)} models cuts their traffic per image by "
                f"{saved.min():.1f}x to {saved.max():.1f}x.")
    if ridge is None:
        return text
    below = models["intensity_unfused"] < ridge
    text += (f" Unfused, {int(below.sum())} of {len(models)} models sit below the ridge point of {ridge:.0f} "
             f"FLOP/B")
    if len(ours):
        text += f"; with fused blocks, {int((ours['intensity_fused'] >= ridge).sum())} of our {len(ours)} sit above it."
    else:
        text += "."
    return text


def show_text(text: str) -> None:
    """Display a computed paragraph as Markdown in a notebook (plain print elsewhere)."""
    try:
        from IPython.display import Markdown, display

        display(Markdown(text))
    except ImportError:
        print(text)
