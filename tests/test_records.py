"""``convfirst.records.save_measurements``: appending never alters or replaces a recorded row."""
from __future__ import annotations

import pandas as pd
import pytest

from convfirst.provenance import PROVENANCE_COLUMNS
from convfirst.records import DataError, save_measurements


def _rows(ms: list[float], date: str) -> pd.DataFrame:
    df = pd.DataFrame({"impl": [f"k{i}" for i in range(len(ms))], "ms": ms})
    for col in PROVENANCE_COLUMNS:
        df[col] = {"date": date, "commit": "abc1234"}.get(col, "x")
    return df


def test_appending_keeps_the_recorded_rows_digit_for_digit(tmp_path):
    path = tmp_path / "bench.csv"
    # values whose shortest text form the default fast CSV parser does not read back exactly
    save_measurements(_rows([245.11354137102572, 0.1 + 0.2, 1 / 3], "2026-01-01T00:00:00Z"), path, key=["impl"])
    before = path.read_text().splitlines()
    save_measurements(_rows([2.5], "2026-01-02T00:00:00Z"), path, key=["impl"])
    after = path.read_text().splitlines()
    assert after[:len(before)] == before
    assert len(after) == len(before) + 1


def test_a_row_with_the_same_key_and_provenance_is_refused(tmp_path):
    path = tmp_path / "bench.csv"
    save_measurements(_rows([1.0], "2026-01-01T00:00:00Z"), path, key=["impl"])
    with pytest.raises(DataError, match="refusing to overwrite"):
        save_measurements(_rows([2.0], "2026-01-01T00:00:00Z"), path, key=["impl"])
    assert len(pd.read_csv(path)) == 1


def test_whole_numbers_in_a_column_with_gaps_keep_their_text(tmp_path):
    """A column holding whole numbers and gaps reads as floats; a rewrite through numbers would turn 124 into
    124.0. The recorded text must survive an append, whatever the column's type."""
    path = tmp_path / "bench.csv"
    first = _rows([0.5, 0.25], "2026-01-01T00:00:00Z")
    first["regs"] = pd.array([124, None], dtype="Int64")
    save_measurements(first, path, key=["impl"])
    assert pd.read_csv(path, dtype=str, keep_default_na=False)["regs"].tolist() == ["124", ""]
    second = _rows([2.5], "2026-01-02T00:00:00Z")
    second["spills"] = [0]  # a column the file does not have yet: the old rows get it empty
    save_measurements(second, path, key=["impl"])
    after = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(after.columns[:len(first.columns)]) == list(first.columns)
    assert after["regs"].tolist() == ["124", "", ""]
    assert after["ms"].tolist()[:2] == ["0.5", "0.25"]
    assert after["spills"].tolist() == ["", "", "0"]


def test_a_commit_that_looks_like_a_number_reads_back_as_text(tmp_path):
    from convfirst.records import load_measurements

    path = tmp_path / "bench.csv"
    rows = _rows([1.0], "2026-01-01T00:00:00Z")
    rows["commit"] = "0988e09"  # scientific notation to a number parser
    save_measurements(rows, path, key=["impl"])
    assert load_measurements(path)["commit"].tolist() == ["0988e09"]
