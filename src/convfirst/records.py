"""Reading and writing measured and cited data in ``data/`` without ever losing a measurement.

Rules:
- measured CSVs carry the provenance columns (:data:`convfirst.provenance.PROVENANCE_COLUMNS`);
- cited CSVs carry a ``source`` column;
- :func:`save_measurements` appends new rows to an existing file and refuses to replace rows
  (same key columns, same commit and date) unless told to; it never truncates a file.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import pandas as pd

from .provenance import DATA_DIR, PROVENANCE_COLUMNS


class DataError(ValueError):
    """A data file is missing, malformed or would be overwritten."""


def data_path(name: str) -> Path:
    return DATA_DIR / name


def check_provenance(df: pd.DataFrame, what: str = "measurements") -> None:
    missing = [c for c in PROVENANCE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{what}: missing provenance column(s) {missing}; every measured row needs "
                        f"{list(PROVENANCE_COLUMNS)}")
    empty = [c for c in PROVENANCE_COLUMNS if df[c].isna().any() or (df[c].astype(str) == "").any()]
    if empty:
        raise DataError(f"{what}: provenance column(s) {empty} have empty values")


def save_measurements(df: pd.DataFrame, path: str | Path, *, key: Iterable[str] | None = None) -> Path:
    """Append measured rows to ``path`` (created if missing). Never drops existing rows.

    ``key``: columns that identify one measurement; a new row whose key *and* provenance equal an existing
    row's is a duplicate and raises :class:`DataError` instead of silently replacing it.
    """
    path = Path(path)
    check_provenance(df, str(path))
    # every row as the text CSV holds it: the recorded rows are written back exactly as they were read (a parse
    # to numbers would move a float by one unit in the last place, or turn "124" into "124.0" in a column
    # with gaps), and the new rows as pandas writes them
    new = pd.read_csv(io.StringIO(df.to_csv(index=False)), dtype=str, keep_default_na=False)
    if path.exists():
        old = pd.read_csv(path, dtype=str, keep_default_na=False)
        if key is not None:
            cols = list(key) + ["gpu", "commit", "date"]
            shared = [c for c in cols if c in old and c in new]
            merged = old[shared].merge(new[shared], how="inner")
            if len(merged):
                raise DataError(f"{path}: {len(merged)} row(s) already recorded with the same key and "
                                f"provenance; refusing to overwrite measured data")
        out = pd.concat([old, new], ignore_index=True, sort=False).fillna("")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        out = new
    tmp = path.with_suffix(path.suffix + ".tmp")
    out.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def load_measurements(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"no recorded data at {path}")
    # commits stay text (a hash such as 0988e09 would otherwise read as the number 9.88e11), floats exact
    df = pd.read_csv(path, dtype={"commit": str}, float_precision="round_trip")
    check_provenance(df, str(path))
    return df


def load_cited(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"no cited data at {path}")
    df = pd.read_csv(path, comment="#")
    if "source" not in df.columns or df["source"].isna().any():
        raise DataError(f"{path}: every cited row needs a 'source'")
    return df


def recorded_gpus(prefix: str) -> list[str]:
    """GPU short names that have a recorded ``data/<prefix>_<gpu>.csv`` file, e.g. prefix='block_bench'."""
    return sorted(p.stem[len(prefix) + 1:] for p in DATA_DIR.glob(f"{prefix}_*.csv"))


def recorded_file(prefix: str, gpu: str) -> Path:
    """``data/<prefix>_<gpu>.csv``; a clear error listing the GPUs that do have data when it is missing."""
    path = DATA_DIR / f"{prefix}_{gpu.lower()}.csv"
    if not path.exists():
        have = recorded_gpus(prefix)
        raise DataError(f"gpu={gpu!r}: no recorded {prefix} data (no {path.name}); GPUs with recorded data: "
                        f"{have or 'none'}")
    return path
