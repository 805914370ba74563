"""A GPU's two ceilings, measured: dense matmul rate P (FLOP/s) and DRAM bandwidth B (bytes/s).

Measured the way STUDY.md section 7 says: large sizes, random data (never zeros), median of many runs
with CUDA events. Every floor, efficiency and roofline in the book uses the ceilings measured on the GPU
that produced the timings (``data/ceilings_<gpu>.csv``), never a datasheet number.
"""
from __future__ import annotations

import pandas as pd

from .provenance import environment_info, gpu_short_name
from .records import load_measurements, recorded_file

CEILINGS_PREFIX = "ceilings"


def measure_matmul_tflops(dtype: str = "bfloat16", n: int = 8192) -> float:
    """Achieved TFLOP/s of an n x n x n matmul on random data (median of do_bench)."""
    import torch
    from triton.testing import do_bench

    dt = getattr(torch, dtype)
    a = torch.randn(n, n, device="cuda", dtype=dt)
    b = torch.randn(n, n, device="cuda", dtype=dt)
    ms = do_bench(lambda: a @ b, warmup=100, rep=500, return_mode="median")
    return 2 * n**3 / (ms * 1e-3) / 1e12


def measure_copy_tbps(nbytes: int = 4 << 30) -> float:
    """Achieved TB/s of a device-to-device copy, counting bytes read plus bytes written."""
    import torch
    from triton.testing import do_bench

    src = torch.randn(nbytes // 4, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=100, rep=500, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e12


def measure_ceilings() -> pd.DataFrame:
    """One row of ceilings for this machine's GPU, with provenance columns."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("measure_ceilings needs a CUDA GPU; use load_ceilings(gpu) to replay recorded ones")
    props = torch.cuda.get_device_properties(0)
    row = {
        "bf16_tflops": measure_matmul_tflops("bfloat16"),
        "fp16_tflops": measure_matmul_tflops("float16"),
        "copy_tbps": measure_copy_tbps(),
        "sm_count": props.multi_processor_count,
        "l2_mb": props.L2_cache_size / 2**20,
        "memory_gb": props.total_memory / 1e9,
        **environment_info(),
    }
    row["gpu_short"] = gpu_short_name(row["gpu"])
    return pd.DataFrame([row])


def load_ceilings(gpu: str) -> pd.Series:
    """The most recent recorded ceilings of ``gpu`` (short name, e.g. 'h100')."""
    df = load_measurements(recorded_file(CEILINGS_PREFIX, gpu))
    return df.sort_values("date").iloc[-1]


def peak_flops(ceilings: pd.Series | dict, dtype: str = "bfloat16") -> float:
    """P in FLOP/s for ``dtype`` from a ceilings row."""
    key = {"bfloat16": "bf16_tflops", "float16": "fp16_tflops"}.get(dtype)
    if key is None:
        raise ValueError(f"dtype={dtype!r}: ceilings are recorded for 'bfloat16' and 'float16'")
    return float(ceilings[key]) * 1e12


def bandwidth_bytes_per_s(ceilings: pd.Series | dict) -> float:
    """B in bytes/s from a ceilings row."""
    return float(ceilings["copy_tbps"]) * 1e12


def recorded_ceilings(gpu: str) -> pd.DataFrame:
    """Every recorded ceilings row of ``gpu``, oldest first (a clear error listing GPUs with data if none)."""
    return load_measurements(recorded_file(CEILINGS_PREFIX, gpu)).sort_values("date").reset_index(drop=True)


def ceilings_for(mode: str, gpu: str) -> tuple[pd.Series, str]:
    """The ceilings a chapter uses, and the GPU short name they belong to.

    ``mode='measure'``: measured now on this machine's GPU and appended to ``data/ceilings_<gpu>.csv``
    (``gpu`` becomes this machine's GPU); ``mode='replay'``: the latest recorded row of ``gpu``.
    """
    from .records import data_path, save_measurements

    if mode == "measure":
        row = measure_ceilings()
        gpu = str(row["gpu_short"].iloc[0])
        save_measurements(row, data_path(f"{CEILINGS_PREFIX}_{gpu}.csv"), key=["gpu_short"])
        return row.iloc[0], gpu
    if mode != "replay":
        raise ValueError(f"mode={mode!r}: expected 'measure' or 'replay' (see convfirst.params.resolve_mode)")
    return load_ceilings(gpu), gpu


def ceilings_at(gpu: str, date: str) -> pd.Series:
    """The recorded ceilings of ``gpu`` measured nearest in time to ``date`` (ISO 8601 UTC), i.e. those of
    the run that produced a measurement made then (runs measure their ceilings first)."""
    rows = recorded_ceilings(gpu)
    gap = (pd.to_datetime(rows["date"], utc=True) - pd.to_datetime(date, utc=True)).abs()
    return rows.loc[gap.idxmin()]
