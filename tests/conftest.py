"""Shared test set-up.

- Without a CUDA GPU, Triton kernels run in Triton's interpreter on CPU tensors: ``TRITON_INTERPRET=1`` is
  set here, before any test module imports a kernel (an explicit value in the environment is kept).
- Tests marked ``gpu`` are skipped when no CUDA GPU is present (they run on the GPU machine).
- Tests marked ``book`` build the whole book; deselect them for a quick run with ``-m "not book"``.
"""
from __future__ import annotations

import os
import shutil


def _gpu_may_be_present() -> bool:
    """Cheap check made before torch is imported (torch must not load Triton before the flag is set)."""
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


if not _gpu_may_be_present():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def replay_captured():
    """As a model under CUDA graphs runs a kernel: ``run()`` once eagerly (where the launcher times its forms and
    chooses), then captured in a CUDA graph; ``refresh()`` puts new values into the captured inputs, the output is
    poisoned with NaN and the graph replayed. Returns the output ``run`` returned at capture."""
    import torch

    def replay(run, refresh):
        run()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
        refresh()
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        return out
    return replay
