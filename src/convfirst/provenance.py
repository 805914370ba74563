"""Who measured what, where: the provenance columns every measured row carries."""
from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"

#: Columns every measured CSV row must carry (see STUDY.md, section 7).
PROVENANCE_COLUMNS = ("gpu", "driver", "torch", "triton", "cuda", "commit", "date")


def git_commit(short: bool = True) -> str:
    """The commit of the working tree, with '+dirty' when it has uncommitted changes; 'unknown' outside git.

    ``CONVFIRST_COMMIT`` in the environment overrides it: a tree copied to a GPU machine may carry a ``.git``
    that does not match its files, so the measuring command names the commit it was copied from.
    """
    if os.environ.get("CONVFIRST_COMMIT"):
        return os.environ["CONVFIRST_COMMIT"]
    try:
        args = ["git", "rev-parse"] + (["--short"] if short else []) + ["HEAD"]
        sha = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:  # no git, or not a checkout (e.g. a copied tree on the GPU machine)
        return _commit_from_file()


def _commit_from_file() -> str:
    f = REPO_ROOT / "COMMIT"
    return f.read_text().strip() if f.exists() else "unknown"


def gpu_short_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100'; used in data file names such as block_bench_h100.csv."""
    low = name.lower()
    for key in ("h200", "h100", "a100", "l40s", "l4", "b200", "gh200", "rtx"):
        if key in low:
            return key
    return low.replace("nvidia", "").strip().split()[0] if low.strip() else "cpu"


@functools.lru_cache(maxsize=None)
def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except Exception:
        return "unknown"


def environment_info() -> dict[str, str]:
    """Provenance of a measurement made now, on this machine's first CUDA device (or the CPU)."""
    import torch
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = "none"
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        driver = _driver_version()
        cuda = torch.version.cuda or "unknown"
    else:
        gpu, driver, cuda = f"cpu ({platform.processor() or platform.machine()})", "none", "none"
    return {
        "gpu": gpu,
        "driver": driver,
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": cuda,
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def with_provenance(df, env: dict[str, str] | None = None, **extra):
    """``df`` (a pandas DataFrame) with the provenance columns set on every row, plus ``extra`` columns.

    ``env``: a provenance dict from :func:`environment_info` taken once for a whole run (so all its rows share
    one date stamp); taken now when omitted. Modifies and returns ``df``.
    """
    for key, value in {**(env if env is not None else environment_info()), **extra}.items():
        df[key] = value
    return df

