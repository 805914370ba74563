"""GPU timing the way the study measures (STUDY.md section 7).

Median of many runs with CUDA events (triton.testing.do_bench), warm-up first, several distinct random
inputs rotated so that small inputs are not served from L2, optional CUDA-graph replay to hide launch gaps.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def l2_rotation_count(bytes_per_input: int, l2_bytes: int | None = None, min_sets: int = 2,
                      max_sets: int = 16) -> int:
    """How many distinct input sets to rotate through so the set of them exceeds ~2x the L2 cache."""
    if l2_bytes is None:
        l2_bytes = torch.cuda.get_device_properties(0).L2_cache_size if torch.cuda.is_available() else 50 << 20
    need = -(-2 * l2_bytes // max(bytes_per_input, 1))
    return int(min(max(need, min_sets), max_sets))


def bench_ms(fn: Callable, inputs: Sequence[tuple], *, warmup_ms: float = 25, rep_ms: float = 200,
             cuda_graph: bool = False) -> float:
    """Median milliseconds of ``fn(*inputs[i])``, rotating through ``inputs`` (distinct random sets).

    With ``cuda_graph=True`` one call per input set is captured in a CUDA graph and the graph replays are
    timed (the time per call is reported).
    """
    from triton.testing import do_bench

    if not torch.cuda.is_available():
        raise RuntimeError("bench_ms needs a CUDA GPU; without one the notebooks replay recorded data")
    if not inputs:
        raise ValueError("inputs: need at least one input set")
    n = len(inputs)
    if cuda_graph:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for args in inputs:  # warm-up outside capture (compilation, autotuning, cuDNN plans)
                fn(*args)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for args in inputs:
                fn(*args)
        return do_bench(graph.replay, warmup=warmup_ms, rep=rep_ms, return_mode="median") / n

    state = {"i": 0}

    def step():
        args = inputs[state["i"] % n]
        state["i"] += 1
        fn(*args)

    return do_bench(step, warmup=warmup_ms, rep=rep_ms, return_mode="median")
