"""Notebook parameters: params.py checks, and the notebook runner refusing parameters it cannot pass."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from convfirst import book
from convfirst.params import (MODES, ParameterError, check_choice, check_choices, check_positive_int,
                              check_positive_ints, mode_banner, resolve_mode)


# --------------------------------------------------------------------------------------------------
# params.py
# --------------------------------------------------------------------------------------------------

def test_check_choice_accepts_allowed_value():
    assert check_choice("dtype", "bfloat16", ["bfloat16", "float16"]) == "bfloat16"


def test_check_choice_error_names_parameter_value_and_allowed_values():
    with pytest.raises(ParameterError) as err:
        check_choice("dtype", "float64", ["bfloat16", "float16"])
    message = str(err.value)
    assert "dtype" in message and "float64" in message
    assert "bfloat16" in message and "float16" in message


def test_check_choices():
    assert check_choices("models", ("a", "b"), ["a", "b", "c"]) == ["a", "b"]
    with pytest.raises(ParameterError, match=r"models.*\['d'\].*choose from \['a', 'b', 'c'\]"):
        check_choices("models", ["a", "d"], ["a", "b", "c"])
    with pytest.raises(ParameterError, match="models.*empty"):
        check_choices("models", [], ["a"])
    with pytest.raises(ParameterError, match="models must be a list"):
        check_choices("models", "a", ["a"])  # a string is not a list of names


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True, None])
def test_check_positive_int_rejects(bad):
    with pytest.raises(ParameterError, match="batch"):
        check_positive_int("batch", bad)


def test_check_positive_ints():
    assert check_positive_ints("sizes", [1, 2, 3]) == [1, 2, 3]
    with pytest.raises(ParameterError, match=r"sizes\[1\]"):
        check_positive_ints("sizes", [4, 0])
    with pytest.raises(ParameterError, match="sizes"):
        check_positive_ints("sizes", [])


def test_resolve_mode_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_mode("auto") == "replay"
    assert resolve_mode("replay") == "replay"
    with pytest.raises(ParameterError) as err:
        resolve_mode("measure")
    assert "mode='measure'" in str(err.value) and "replay" in str(err.value)


def test_resolve_mode_with_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_mode("auto") == "measure"
    assert resolve_mode("measure") == "measure"
    assert resolve_mode("replay") == "replay"


def test_resolve_mode_rejects_unknown_mode():
    with pytest.raises(ParameterError) as err:
        resolve_mode("fast")
    assert "mode" in str(err.value) and all(m in str(err.value) for m in MODES)


def test_replay_banner_names_gpu_and_data_files():
    text = mode_banner("replay", "h100", ["data/ceilings_h100.csv"])
    assert "Replayed" in text and "h100" in text and "data/ceilings_h100.csv" in text


# --------------------------------------------------------------------------------------------------
# The notebook runner (convfirst.book) checks parameters before executing anything
# --------------------------------------------------------------------------------------------------

def write_notebook(path: Path, parameters_source: str | None) -> Path:
    """A minimal notebook; ``parameters_source`` becomes its cell tagged 'parameters' (None: no such cell)."""
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# A chapter"}]
    if parameters_source is not None:
        cells.append({"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": None,
                      "outputs": [], "source": parameters_source})
    cells.append({"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                  "source": "print(mode)"})
    nb = {"cells": cells, "metadata": {"language_info": {"name": "python"}}, "nbformat": 4,
          "nbformat_minor": 5}
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


@pytest.fixture
def two_notebooks(tmp_path):
    first = write_notebook(tmp_path / "01_counts.ipynb", 'mode = "auto"\ngpu = "h100"\nbatch = 256')
    second = write_notebook(tmp_path / "02_other.ipynb", 'mode = "auto"\nsizes = [56, 28]  # pixels')
    return [first, second]


def test_notebook_parameters_reads_names_and_defaults(two_notebooks):
    assert book.notebook_parameters(two_notebooks[0]) == {"mode": "auto", "gpu": "h100", "batch": 256}
    assert book.notebook_parameters(two_notebooks[1]) == {"mode": "auto", "sizes": [56, 28]}


def test_notebook_without_parameters_cell_is_an_error(tmp_path):
    nb = write_notebook(tmp_path / "03_bare.ipynb", None)
    with pytest.raises(book.BookError, match="03_bare.ipynb.*tagged 'parameters'"):
        book.notebook_parameters(nb)


def test_parameters_go_only_to_notebooks_that_define_them(two_notebooks, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runs = book.plan_runs(two_notebooks, mode="replay", gpu="h100", extra={"batch": 64}, data_dir=tmp_path)
    given = {nb.stem: params for nb, params in runs}
    assert given == {"01_counts": {"mode": "replay", "gpu": "h100", "batch": 64},
                     "02_other": {"mode": "replay"}}


def test_unknown_parameter_is_rejected_with_the_known_names(two_notebooks):
    with pytest.raises(ParameterError) as err:
        book.plan_runs(two_notebooks, extra={"btach": 64})
    message = str(err.value)
    assert "'btach'" in message
    assert "['batch', 'gpu', 'mode', 'sizes']" in message


@pytest.mark.parametrize("bad_mode", ["fast", "Replay", ""])
def test_bad_mode_is_rejected_before_running(two_notebooks, bad_mode):
    with pytest.raises(ParameterError, match="mode.*auto.*replay.*measure"):
        book.plan_runs(two_notebooks, mode=bad_mode)


def test_measure_without_gpu_is_rejected_before_running(two_notebooks, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParameterError, match="needs a CUDA GPU"):
        book.plan_runs(two_notebooks, mode="measure")


def test_gpu_must_be_a_short_name(two_notebooks):
    with pytest.raises(ParameterError, match="gpu='NVIDIA H100'.*short lower-case"):
        book.plan_runs(two_notebooks, gpu="NVIDIA H100")


def test_replayed_gpu_must_have_recorded_data(two_notebooks, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "ceilings_h100.csv").write_text("tflops,gpu,date\n731.9,NVIDIA H100 80GB HBM3,2026-11-23\n")
    (tmp_path / "top1_cited.csv").write_text("# cited\nmodel,top1,gpu,source\nresnet50,80.4,,timm\n")
    with pytest.raises(ParameterError) as err:
        book.plan_runs(two_notebooks, mode="replay", gpu="a100", data_dir=tmp_path)
    assert "gpu='a100'" in str(err.value) and "['h100']" in str(err.value)
    runs = book.plan_runs(two_notebooks, mode="replay", gpu="h100", data_dir=tmp_path)
    assert runs[0][1]["gpu"] == "h100"


def test_mode_and_gpu_cannot_be_passed_as_plain_parameters(two_notebooks):
    with pytest.raises(ParameterError, match="--gpu"):
        book.plan_runs(two_notebooks, extra={"gpu": "h100"})


@pytest.mark.parametrize("text, value", [("128", 128), ("[64, 96]", [64, 96]), ("h100", "h100"),
                                         ("True", True), ("'x y'", "x y"), ("2.5", 2.5)])
def test_command_line_values(text, value):
    assert book.parse_value(text) == value


def test_command_line_rejects_unknown_parameter(two_notebooks, capsys):
    status = book.main(["--notebooks-dir", str(two_notebooks[0].parent), "-p", "btach", "64", "--no-html"])
    assert status == 2
    assert "btach" in capsys.readouterr().err


def test_command_line_rejects_unknown_notebook(two_notebooks, capsys):
    status = book.main(["--notebooks-dir", str(two_notebooks[0].parent), "--only", "09_nothing", "--no-html"])
    assert status == 2
    err = capsys.readouterr().err
    assert "09_nothing" in err and "01_counts" in err
