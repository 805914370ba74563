"""Executing the study's notebooks and building the book from them: ``python -m convfirst.book``.

Each ``notebooks/NN_name.ipynb`` is executed with papermill into ``book/chapters/NN_name.ipynb``; the
parameter cells (the notebook's own, tagged ``parameters``, and the one papermill injects) are tagged
``remove-cell`` so the site hides them; then ``jupyter-book build`` renders HTML with execution off,
so papermill is the only executor. A notebook that fails stops the build, its error is printed and the
failed executed copy stays in ``book/chapters/`` for inspection.

Parameters reach a notebook only if its ``parameters`` cell defines them: ``--mode`` and ``--gpu`` go to
every notebook that has ``mode`` / ``gpu``; ``-p NAME VALUE`` to every notebook that defines ``NAME``.
A name no selected notebook defines, or a bad ``mode`` / ``gpu`` value, is rejected before anything runs.

Without papermill (a bare GPU machine's Python, ``make measure PYTHON=python3``) the ``script`` executor
runs each notebook's code cells as one plain Python script, with the same parameters, so the notebooks
measure and append their rows to ``data/`` even where no Jupyter stack is installed.
"""
from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .params import MODES, ParameterError, check_choice, resolve_mode
from .provenance import DATA_DIR, REPO_ROOT, gpu_short_name

KERNEL_NAME = "convfirst"
BOOK_DIR = REPO_ROOT / "book"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
CHAPTERS = "chapters"  # executed notebooks, relative to the book folder
HIDDEN_CELL_TAGS = ("parameters", "injected-parameters")
EXECUTORS = ("papermill", "script", "auto")
QUIET_WARNING = "ignore:IProgress not found"


class BookError(RuntimeError):
    """The book cannot be built: a notebook failed, a tool is missing, or the table of contents is wrong."""


# --------------------------------------------------------------------------------------------------
# Reading a notebook's parameters
# --------------------------------------------------------------------------------------------------

def write_notebook(cells: list, path: Path) -> Path:
    """Write a chapter's source notebook (cells from ``nbformat.v4``, no outputs) for the ``convfirst`` kernel.

    Used by the ``notebooks/make_NN_*.py`` builders, which hold each chapter's text and code cells."""
    import nbformat
    from nbformat.v4 import new_notebook

    for i, cell in enumerate(cells):  # stable ids: rebuilding an unchanged chapter changes nothing
        cell["id"] = f"cell-{i:02d}"
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "convfirst", "display_name": "Python (convfirst)", "language": "python"},
        "language_info": {"name": "python"},
    })
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print(f"wrote {path}")
    return Path(path)


def _cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def read_notebook(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def notebook_parameters(path: Path) -> dict[str, Any]:
    """Names and default values assigned in the notebook's cell tagged ``parameters``.

    A default that is not a Python literal is reported as its source text.
    """
    nb = read_notebook(path)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse(_cell_source(cell))
            params: dict[str, Any] = {}
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else [])
                for target in targets:
                    if isinstance(target, ast.Name):
                        try:
                            params[target.id] = ast.literal_eval(node.value)
                        except ValueError:
                            params[target.id] = ast.unparse(node.value)
            return params
    raise BookError(f"{path.name}: no code cell is tagged 'parameters'; every notebook needs one holding at "
                    f"least mode and gpu (see README, 'Notebook parameters')")


def parse_value(text: str) -> Any:
    """A command-line parameter value: a Python literal if it parses as one (``128``, ``[64, 96]``,
    ``True``), otherwise the text itself as a string (``h100``)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# --------------------------------------------------------------------------------------------------
# Checking the requested parameters before anything runs
# --------------------------------------------------------------------------------------------------

def gpus_with_measurements(data_dir: Path = DATA_DIR) -> list[str]:
    """Short GPU names ``x`` with a measured ``data/<prefix>_x.csv``: a file whose ``gpu`` column names
    that GPU (cited files and files of other names are not counted)."""
    names = set()
    for path in data_dir.glob("*_*.csv"):
        suffix = path.stem.rsplit("_", 1)[1]
        try:
            with open(path, encoding="utf-8", newline="") as f:
                row = next(csv.DictReader(line for line in f if not line.startswith("#")), None)
        except (OSError, csv.Error, UnicodeDecodeError):
            continue
        if row and row.get("gpu") and gpu_short_name(row["gpu"]) == suffix:
            names.add(suffix)
    return sorted(names)


def check_gpu(gpu: str, mode: str, data_dir: Path = DATA_DIR) -> str:
    """``gpu`` must be a short lower-case name (``h100``); when replaying it must have recorded data."""
    if not isinstance(gpu, str) or not re.fullmatch(r"[a-z0-9]+", gpu):
        raise ParameterError(f"parameter gpu={gpu!r} must be a short lower-case GPU name such as 'h100'")
    if mode == "replay":
        have = gpus_with_measurements(data_dir)
        if have and gpu not in have:
            raise ParameterError(f"parameter gpu={gpu!r} has no recorded measurements in data/ to replay; "
                                 f"choose one of {have}, or measure on that GPU with `make measure`")
    return gpu


def plan_runs(notebooks: Sequence[Path], *, mode: str | None = None, gpu: str | None = None,
              extra: dict[str, Any] | None = None,
              data_dir: Path = DATA_DIR) -> list[tuple[Path, dict[str, Any]]]:
    """Each notebook with the parameters it will receive: the requested ones it defines.
    A bad value, or a parameter that no notebook defines, raises :class:`ParameterError`."""
    extra = dict(extra or {})
    for reserved in ("mode", "gpu"):
        if reserved in extra:
            raise ParameterError(f"pass {reserved} with --{reserved} (make book {reserved.upper()}=...), "
                                 f"not with -p")
    if mode is not None:
        check_choice("mode", mode, MODES)
        if mode == "measure":
            resolve_mode(mode)  # no GPU here: a clear error now, before any notebook runs
    if gpu is not None:
        # The notebooks' own default mode is 'auto'; what it means here decides whether gpu must have data.
        check_gpu(gpu, resolve_mode(mode or "auto"), data_dir)

    declared = {nb: notebook_parameters(nb) for nb in notebooks}
    requested = dict(extra)
    if mode is not None:
        requested["mode"] = mode
    if gpu is not None:
        requested["gpu"] = gpu
    for name in extra:
        if not any(name in params for params in declared.values()):
            known = sorted(set().union(*declared.values())) if declared else []
            raise ParameterError(f"parameter {name!r} is not defined by any selected notebook "
                                 f"({', '.join(nb.stem for nb in notebooks) or 'none'}); "
                                 f"their parameters are {known}")
    return [(nb, {k: v for k, v in requested.items() if k in params}) for nb, params in declared.items()]


def select_notebooks(notebooks_dir: Path, only: Sequence[str] = ()) -> list[Path]:
    """``notebooks/*.ipynb`` in name order; ``only`` keeps those whose name starts with one of its items."""
    found = sorted(p for p in notebooks_dir.glob("*.ipynb") if not p.name.startswith("."))
    if only:
        chosen = [p for p in found if any(p.stem.startswith(o) or p.stem == o for o in only)]
        unknown = [o for o in only if not any(p.stem.startswith(o) for p in found)]
        if unknown:
            raise ParameterError(f"notebook(s) {unknown} not found in {notebooks_dir}; "
                                 f"choose from {[p.stem for p in found]}")
        return chosen
    return found


# --------------------------------------------------------------------------------------------------
# Executing
# --------------------------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def kernel_is_registered(kernel: str) -> bool:
    try:
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError:
        return False
    return kernel in KernelSpecManager().find_kernel_specs()


def execute_with_papermill(notebook: Path, output: Path, parameters: dict[str, Any], *, kernel: str,
                           cwd: Path) -> str | None:
    """Execute ``notebook`` into ``output``; None on success, else the error text (output is kept)."""
    import papermill as pm

    # The kernel inherits this environment. tqdm.auto (imported by timm's hub code) warns on every
    # import that Jupyter widgets are missing; the book deliberately has none (they need a CDN).
    warnings_setting = os.environ.get("PYTHONWARNINGS", "")
    if QUIET_WARNING not in warnings_setting:
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [warnings_setting, QUIET_WARNING]))
    # Figures must reach the notebook: a non-interactive backend set in the caller's environment
    # (MPLBACKEND=Agg, as in tests or CI) would silently drop every plt.show().
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name=kernel,
                            language="python", cwd=str(cwd), progress_bar=False, log_output=False,
                            # the kernel's start-up notices (e.g. "running over TCP") are noise here
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except pm.PapermillExecutionError as err:
        trace = _strip_ansi("\n".join(err.traceback))
        return f"cell {err.exec_count}: {err.ename}: {_strip_ansi(err.evalue)}\n{trace}"
    except Exception as err:  # kernel died, could not start, ...
        return f"{type(err).__name__}: {err}"
    hide_parameter_cells(output)
    return None


def hide_parameter_cells(path: Path) -> int:
    """Tag the parameter cells of an executed notebook ``remove-cell``; returns how many were tagged."""
    nb = read_notebook(path)
    tagged = 0
    for cell in nb.get("cells", []):
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if any(t in tags for t in HIDDEN_CELL_TAGS):
            if "remove-cell" not in tags:
                tags.append("remove-cell")
            tagged += 1
    with open(path, "w", encoding="utf-8") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return tagged


def notebook_as_script(notebook: Path, parameters: dict[str, Any]) -> str:
    """The notebook's code cells as one Python script, the given parameters assigned right after the
    ``parameters`` cell (as papermill would). IPython magics and shell lines are left out."""
    nb = read_notebook(notebook)
    parts = [
        f"# Generated by convfirst.book from {notebook.name}; edit the notebook, not this file.",
        "try:\n    from IPython.display import display\nexcept ImportError:\n"
        "    def display(*objects, **kwargs):\n        for obj in objects:\n            print(obj)",
    ]
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        lines = []
        for line in _cell_source(cell).splitlines():
            stripped = line.lstrip()
            lines.append(f"# (notebook-only) {line}" if stripped.startswith(("%", "!")) else line)
        parts.append(f"# %% cell {index}\n" + "\n".join(lines))
        if "parameters" in cell.get("metadata", {}).get("tags", []) and parameters:
            assigned = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
            parts.append(f"# %% parameters given to this run\n{assigned}")
    return "\n\n".join(parts) + "\n"


def execute_as_script(notebook: Path, parameters: dict[str, Any], *, script_dir: Path,
                      cwd: Path) -> str | None:
    """Run the notebook's code as a plain script with this Python; None on success, else the error text."""
    script_dir.mkdir(parents=True, exist_ok=True)
    script = script_dir / f"{notebook.stem}.py"
    script.write_text(notebook_as_script(notebook, parameters), encoding="utf-8")
    env = dict(os.environ, MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env)
    if result.returncode != 0:
        return f"{script} exited with status {result.returncode} (its traceback is printed above)"
    return None


# --------------------------------------------------------------------------------------------------
# Table of contents and HTML
# --------------------------------------------------------------------------------------------------

def _toc_files(entries: list) -> list[str]:
    files = []
    for entry in entries or []:
        if "file" in entry:
            files.append(entry["file"])
        for key in ("chapters", "sections", "parts"):
            files += _toc_files(entry.get(key, []))
    return files


def _drop_missing(entries: list, present) -> list:
    kept = []
    for entry in entries or []:
        entry = dict(entry)
        for key in ("chapters", "sections", "parts"):
            if key in entry:
                entry[key] = _drop_missing(entry[key], present)
                if not entry[key]:
                    del entry[key]
        if "file" in entry and not present(entry["file"]):
            continue
        if "file" in entry or any(k in entry for k in ("chapters", "sections", "parts")):
            kept.append(entry)
    return kept


def _source_exists(book_dir: Path, name: str) -> bool:
    return any((book_dir / (name + ext)).exists() for ext in ("", ".md", ".ipynb", ".rst"))


def toc_for_build(book_dir: Path) -> tuple[Path, list[str]]:
    """The table of contents to build with, and the listed documents that do not exist yet.

    When everything listed in ``_toc.yml`` exists it is used as is; otherwise a copy without the missing
    entries is written to ``_build/_toc.present.yml`` (the book still builds while chapters are written).
    """
    import yaml

    toc_path = book_dir / "_toc.yml"
    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    listed = [toc["root"]] + _toc_files(toc.get("chapters", []) or toc.get("parts", []))
    missing = [name for name in listed if not _source_exists(book_dir, name)]
    if toc["root"] in missing:
        raise BookError(f"{toc_path}: the root document {toc['root']!r} does not exist")
    if not missing:
        return toc_path, []
    reduced = dict(toc)
    for key in ("chapters", "parts"):
        if key in reduced:
            reduced[key] = _drop_missing(reduced[key], lambda n: _source_exists(book_dir, n))
    out = book_dir / "_build" / "_toc.present.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(reduced, sort_keys=False), encoding="utf-8")
    return out, missing


def unlisted_chapters(book_dir: Path) -> list[str]:
    """Executed notebooks in ``chapters/`` that ``_toc.yml`` does not list (they would not be built)."""
    import yaml

    toc = yaml.safe_load((book_dir / "_toc.yml").read_text(encoding="utf-8"))
    listed = set(_toc_files(toc.get("chapters", []) or toc.get("parts", [])))
    return sorted(f"{CHAPTERS}/{p.stem}" for p in (book_dir / CHAPTERS).glob("*.ipynb")
                  if f"{CHAPTERS}/{p.stem}" not in listed)


def build_html(book_dir: Path, toc: Path) -> list[str]:
    """Run ``jupyter-book build`` (execution off, set in ``_config.yml``); returns the Sphinx warnings.

    Every page is rewritten (``--all``): an incremental build would keep stale navigation on pages whose
    source did not change when chapters were added."""
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    book_dir, toc = Path(book_dir).resolve(), Path(toc).resolve()
    command = [str(jupyter_book) if jupyter_book.exists() else "jupyter-book", "build", str(book_dir),
               "--builder", "html", "--toc", str(toc), "--keep-going", "--all"]
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        raise BookError("jupyter-book is not installed in this Python environment; `make book` installs it")
    result = subprocess.run(command, capture_output=True, text=True)
    log = _strip_ansi(result.stdout + result.stderr)
    log_path = book_dir / "_build" / "build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(log, encoding="utf-8")
    if result.returncode != 0:
        sys.stdout.write(log)
        raise BookError(f"jupyter-book build failed (status {result.returncode}); its log is above and in "
                        f"{log_path}")
    return [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convfirst.book", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", help=f"the notebooks' mode parameter, one of {list(MODES)}")
    p.add_argument("--gpu", help="the notebooks' gpu parameter (short name such as h100)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="another notebook parameter; VALUE is read as a Python literal when it is one")
    p.add_argument("--only", action="append", default=[], metavar="NOTEBOOK",
                   help="execute only notebooks whose name starts with this (repeatable)")
    p.add_argument("--book-dir", type=Path, default=BOOK_DIR, help="book source folder (default: book/)")
    p.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR, help="default: notebooks/")
    p.add_argument("--kernel", default=KERNEL_NAME, help="Jupyter kernel papermill uses (default: convfirst)")
    p.add_argument("--executor", choices=EXECUTORS, default="papermill",
                   help="papermill (default), script (plain Python, no Jupyter needed) or auto "
                        "(papermill when it and the kernel are installed, else script)")
    p.add_argument("--no-html", action="store_true", help="execute the notebooks only")
    p.add_argument("--strict", action="store_true",
                   help="fail when Sphinx warns or when a chapter listed in _toc.yml is missing")
    return p


def run(args: argparse.Namespace) -> None:
    book_dir = args.book_dir.resolve()
    notebooks_dir = args.notebooks_dir.resolve()
    notebooks = select_notebooks(notebooks_dir, args.only)
    extra = {}
    for name, value in args.parameter:
        if not name.isidentifier():
            raise ParameterError(f"-p {name!r}: a notebook parameter name must be a Python identifier")
        extra[name] = parse_value(value)
    runs = plan_runs(notebooks, mode=args.mode, gpu=args.gpu, extra=extra)

    executor = args.executor
    if executor == "auto":
        try:
            import papermill  # noqa: F401
            executor = "papermill" if kernel_is_registered(args.kernel) else "script"
        except ImportError:
            executor = "script"
    if executor == "papermill":
        try:
            import papermill  # noqa: F401
        except ImportError:
            raise BookError("papermill is not installed in this Python; `make book` installs it into .venv, "
                            "or use --executor script") from None
        if not kernel_is_registered(args.kernel):
            raise BookError(f"Jupyter kernel {args.kernel!r} is not registered for this Python; register it "
                            f"with `{sys.executable} -m ipykernel install --sys-prefix --name {args.kernel}` "
                            f"(`make book` does this)")
    if executor == "script" and not args.no_html:
        raise BookError("the script executor writes no executed notebooks, so no HTML can be built from it; "
                        "add --no-html")

    chapters_dir = book_dir / CHAPTERS
    for stale in sorted(chapters_dir.glob("*.ipynb")):
        if not (notebooks_dir / stale.name).exists():  # its notebook was removed or renamed
            print(f"note: removing {stale}, whose notebook no longer exists")
            stale.unlink()
    print(f"Executing {len(runs)} notebook(s) from {notebooks_dir} with {executor}", flush=True)
    for notebook, params in runs:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "defaults"
        print(f"  {notebook.stem} ({shown}) ...", flush=True)
        start = time.perf_counter()
        if executor == "papermill":
            error = execute_with_papermill(notebook, chapters_dir / notebook.name, params,
                                           kernel=args.kernel, cwd=notebooks_dir)
        else:
            error = execute_as_script(notebook, params, script_dir=book_dir / "_build" / "scripts",
                                      cwd=notebooks_dir)
        seconds = time.perf_counter() - start
        if error:
            executed = chapters_dir / notebook.name
            kept = (f"; the executed notebook with the error is kept at {executed}"
                    if executor == "papermill" and executed.exists() else "")
            raise BookError(f"notebook {notebook.stem} failed after {seconds:.1f} s{kept}:\n{error}")
        print(f"  {notebook.stem} ok ({seconds:.1f} s)", flush=True)
    if args.no_html:
        return

    toc, missing = toc_for_build(book_dir)
    for name in missing:
        print(f"note: _toc.yml lists {name!r}, which does not exist yet; it is left out of this build")
    for name in unlisted_chapters(book_dir):
        print(f"note: {name} is not listed in book/_toc.yml, so the book does not show it")
    start = time.perf_counter()
    warnings = build_html(book_dir, toc)
    print(f"HTML built in {time.perf_counter() - start:.1f} s: {book_dir / '_build' / 'html' / 'index.html'}")
    if warnings:
        print(f"{len(warnings)} warning(s) from the HTML build:\n  " + "\n  ".join(warnings))
    if args.strict and (warnings or missing):
        raise BookError(f"--strict: {len(warnings)} build warning(s), missing chapters {missing}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run(args)
    except (ParameterError, BookError) as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 2 if isinstance(err, ParameterError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
