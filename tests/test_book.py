"""The book: the notebook runner's parts, then a real build (replay mode) checked in headless Chromium.

The build runs the same pipeline as ``make book`` (``python -m convfirst.book``) on a copy of ``book/``
in a temporary folder, so it never disturbs a build a reader has in ``book/_build``.
"""
from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from convfirst import book
from convfirst.provenance import REPO_ROOT

BOOK_SRC = REPO_ROOT / "book"
NOTEBOOKS = REPO_ROOT / "notebooks"


# --------------------------------------------------------------------------------------------------
# The runner's parts (fast, no kernel)
# --------------------------------------------------------------------------------------------------

def _notebook(path: Path, *code_cells: str, parameters: str = 'mode = "auto"\ngpu = "h100"') -> Path:
    cells = [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": None,
              "outputs": [], "source": parameters}]
    cells += [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": src}
              for src in code_cells]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_script_executor_passes_parameters(tmp_path):
    out = tmp_path / "seen.json"
    nb = _notebook(tmp_path / "01_x.ipynb", "%matplotlib inline",
                   f"import json\njson.dump({{'mode': mode, 'gpu': gpu}}, open({str(out)!r}, 'w'))")
    error = book.execute_as_script(nb, {"gpu": "h200"}, script_dir=tmp_path / "scripts", cwd=tmp_path)
    assert error is None
    assert json.loads(out.read_text()) == {"mode": "auto", "gpu": "h200"}
    assert "# (notebook-only) %matplotlib inline" in (tmp_path / "scripts" / "01_x.py").read_text()


def test_script_executor_reports_failure(tmp_path):
    nb = _notebook(tmp_path / "02_fails.ipynb", "raise RuntimeError('broken on purpose')")
    error = book.execute_as_script(nb, {}, script_dir=tmp_path / "scripts", cwd=tmp_path)
    assert error is not None and "02_fails.py" in error and "status 1" in error


def test_parameter_cells_are_tagged_remove_cell(tmp_path):
    nb = _notebook(tmp_path / "03_tags.ipynb", "x = 1")
    data = json.loads(nb.read_text())
    data["cells"].insert(1, {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]},
                             "execution_count": 1, "outputs": [], "source": 'gpu = "h200"'})
    nb.write_text(json.dumps(data))
    assert book.hide_parameter_cells(nb) == 2
    tags = [c["metadata"].get("tags", []) for c in json.loads(nb.read_text())["cells"]]
    assert tags == [["parameters", "remove-cell"], ["injected-parameters", "remove-cell"], []]


def test_toc_leaves_out_missing_chapters(tmp_path):
    (tmp_path / "intro.md").write_text("# Intro\n")
    (tmp_path / "chapters").mkdir()
    (tmp_path / "chapters" / "01_a.ipynb").write_text("{}")
    toc = {"format": "jb-book", "root": "intro",
           "parts": [{"caption": "Data", "chapters": [{"file": "chapters/01_a"}, {"file": "chapters/02_b"}]},
                     {"caption": "Later", "chapters": [{"file": "training"}]}]}
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump(toc))
    path, missing = book.toc_for_build(tmp_path)
    assert missing == ["chapters/02_b", "training"]
    reduced = yaml.safe_load(path.read_text())
    assert reduced["parts"] == [{"caption": "Data", "chapters": [{"file": "chapters/01_a"}]}]


def test_toc_lists_the_chapters_in_order():
    toc = yaml.safe_load((BOOK_SRC / "_toc.yml").read_text())
    files = [toc["root"]] + book._toc_files(toc["parts"])
    assert files == ["intro", "chapters/01_operations_and_bytes", "chapters/02_device_ceilings",
                     "chapters/03_block_fusion", "chapters/04_efficiency_gap",
                     "chapters/05_roofline_waterline", "chapters/06_convfirstnet_vs_baselines", "training"]


def test_config_keeps_execution_off_and_mathjax_local():
    config = yaml.safe_load((BOOK_SRC / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["sphinx"]["config"]["mathjax_path"] == "mathjax/tex-mml-chtml.js"
    assert config["sphinx"]["config"]["html_static_path"][0] == "_vendor"
    assert not (BOOK_SRC / "_static").exists(), "Jupyter Book would inject every MathJax .js found via _static"


# --------------------------------------------------------------------------------------------------
# Network references in built HTML and CSS
# --------------------------------------------------------------------------------------------------

#: (tag, attribute) pairs a browser fetches on page load. <a href> is navigation, not a fetch.
FETCHED = {("script", "src"), ("img", "src"), ("img", "srcset"), ("iframe", "src"), ("source", "src"),
           ("source", "srcset"), ("video", "src"), ("video", "poster"), ("audio", "src"), ("embed", "src"),
           ("object", "data"), ("input", "src"), ("track", "src"), ("frame", "src"), ("image", "href")}
LINK_RELS_NOT_FETCHED = {"canonical", "alternate", "author", "license", "next", "prev", "search", "index",
                         "help", "copyright", "bookmark", "me"}
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""")


def is_network(url: str) -> bool:
    return url.strip().lower().startswith(("http:", "https:", "//", "ftp:", "ws:", "wss:"))


class FetchedResources(html.parser.HTMLParser):
    """Collects every URL a page makes the browser fetch, and its <title>."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str]] = []
        self.title = ""
        self._in_title = False
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name, value in attrs.items():
            if value is None:
                continue
            if (tag, name) in FETCHED:
                for part in value.split(","):
                    if part.strip():
                        self.urls.append((f"<{tag} {name}>", part.strip().split()[0]))
            if name == "style":
                self.urls += [(f"<{tag} style>", a or b) for a, b in CSS_URL.findall(value)]
        if tag == "link" and attrs.get("href"):
            rels = set((attrs.get("rel") or "").lower().split())
            if not rels or not rels <= LINK_RELS_NOT_FETCHED:
                self.urls.append((f"<link rel={attrs.get('rel')}>", attrs["href"]))
        self._in_title = tag == "title"
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_title = self._in_style = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._in_style:
            self.urls += [("<style>", a or b) for a, b in CSS_URL.findall(data)]


def fetched_resources(markup: str) -> FetchedResources:
    parser = FetchedResources()
    parser.feed(markup)
    return parser


def test_network_detector_finds_what_a_browser_would_fetch():
    page = fetched_resources(
        '<html><head><title>T</title><script src="https://cdn.example/x.js"></script>'
        '<link rel="stylesheet" href="//fonts.example/css"><link rel="canonical" href="https://a.example/">'
        '<style>body{background:url("http://img.example/bg.png")}</style></head>'
        '<body><a href="https://arxiv.org/abs/2404.03617">paper</a><img src="_images/local.png">'
        '<img src="data:image/png;base64,AAAA"></body></html>')
    network = sorted(url for _, url in page.urls if is_network(url))
    assert network == ["//fonts.example/css", "http://img.example/bg.png", "https://cdn.example/x.js"]
    assert page.title == "T"


# --------------------------------------------------------------------------------------------------
# The real build
# --------------------------------------------------------------------------------------------------

def find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def chromium():
    path = find_chromium()
    if path is None:
        message = "headless Chromium not found (make test installs Debian's chromium with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """Execute every notebook (replay mode) and build the HTML, on a copy of book/."""
    if not (BOOK_SRC / "_vendor" / "mathjax" / "tex-mml-chtml.js").exists():
        pytest.fail("book/_vendor/mathjax is missing: run the set-up (`make test` or `make book` does it)")
    root = tmp_path_factory.mktemp("book") / "book"
    shutil.copytree(BOOK_SRC, root, ignore=shutil.ignore_patterns("_build", "chapters"))
    result = subprocess.run([sys.executable, "-m", "convfirst.book", "--book-dir", str(root),
                             "--notebooks-dir", str(NOTEBOOKS), "--mode", "replay"],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"the book build failed:\n{log[-8000:]}"
    return {"root": root, "html": root / "_build" / "html", "log": log}


def html_pages(html_dir: Path) -> list[Path]:
    return sorted(p for p in html_dir.rglob("*.html") if "_static" not in p.relative_to(html_dir).parts)


@pytest.mark.book
def test_every_notebook_becomes_a_page_with_hidden_parameter_cells(built_book):
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    for nb in notebooks:
        executed = built_book["root"] / "chapters" / nb.name
        page = built_book["html"] / "chapters" / f"{nb.stem}.html"
        assert executed.exists(), f"{nb.name} was not executed into book/chapters"
        assert page.exists(), f"{nb.name} has no page in the built book (is it listed in _toc.yml?)"
        cells = [c for c in json.loads(executed.read_text())["cells"] if c["cell_type"] == "code"]
        hidden = [c for c in cells if "remove-cell" in c["metadata"].get("tags", [])]
        assert any("parameters" in c["metadata"]["tags"] for c in hidden), f"{nb.name}: parameters shown"
        errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{nb.name}: cell errors {[e['ename'] for e in errors]}"
        markup = page.read_text()
        shown_cells = markup.count('<div class="cell docutils container') + markup.count(
            '<div class="cell tag_')
        assert shown_cells == len(cells) - len(hidden), (
            f"{page.name}: {shown_cells} code cells shown, expected {len(cells) - len(hidden)}")


@pytest.mark.book
def test_every_chapter_listed_in_the_toc_is_built(built_book):
    toc = yaml.safe_load((BOOK_SRC / "_toc.yml").read_text())
    missing = [name for name in book._toc_files(toc["parts"])
               if not (built_book["html"] / f"{name}.html").exists()]
    assert not missing, f"chapters listed in book/_toc.yml but not built (notebook or page missing): {missing}"


@pytest.mark.book
def test_build_has_no_warnings(built_book):
    toc = yaml.safe_load((BOOK_SRC / "_toc.yml").read_text())
    missing = [name for name in book._toc_files(toc["parts"])
               if not (built_book["html"] / f"{name}.html").exists()]
    log = (built_book["root"] / "_build" / "build.log").read_text()
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    # Links to a chapter that does not exist yet are reported by the test above, not here.
    warnings = [w for w in warnings if not any(f"unknown document: '{m}'" in w for m in missing)]
    assert not warnings, "Sphinx warnings:\n" + "\n".join(warnings)


@pytest.mark.book
def test_no_page_or_stylesheet_fetches_from_the_network(built_book):
    html_dir = built_book["html"]
    offending = []
    for page in html_pages(html_dir):
        for where, url in fetched_resources(page.read_text(encoding="utf-8")).urls:
            if is_network(url):
                offending.append(f"{page.relative_to(html_dir)} {where}: {url}")
    for css in (html_dir / "_static").rglob("*.css"):
        for a, b in CSS_URL.findall(css.read_text(encoding="utf-8", errors="replace")):
            if is_network(a or b):
                offending.append(f"{css.relative_to(html_dir)}: {a or b}")
    assert not offending, "network references:\n" + "\n".join(offending)


@pytest.mark.book
def test_every_image_and_local_resource_exists(built_book):
    html_dir = built_book["html"]
    broken = []
    images = 0
    for page in html_pages(html_dir):
        for where, url in fetched_resources(page.read_text(encoding="utf-8")).urls:
            if is_network(url) or url.startswith(("data:", "#", "mailto:", "javascript:")):
                continue
            images += where.startswith("<img")
            target = (page.parent / unquote(urlsplit(url).path)).resolve()
            if not target.is_file():
                broken.append(f"{page.relative_to(html_dir)} {where}: {url}")
    assert not broken, "unresolved resources:\n" + "\n".join(broken)
    if any(NOTEBOOKS.glob("*.ipynb")):
        assert images > 0, "no <img> in the built book although chapters have figures"


def run_chromium(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-background-networking", "--disable-component-update", "--no-first-run",
                           f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.book
def test_every_page_loads_in_headless_chromium(built_book, chromium, tmp_path):
    html_dir = built_book["html"]
    problems = []
    for page in html_pages(html_dir):
        static = fetched_resources(page.read_text(encoding="utf-8"))
        result = run_chromium(chromium, tmp_path / "profile", "--dump-dom", page.as_uri())
        dom = result.stdout
        name = page.relative_to(html_dir)
        if result.returncode != 0 or "<main" not in dom:
            problems.append(f"{name}: did not load (status {result.returncode}): {result.stderr[-500:]}")
            continue
        live = fetched_resources(dom)
        if static.title and "Redirect" not in static.title and static.title.strip() not in live.title:
            problems.append(f"{name}: title {static.title!r} not in the loaded page ({live.title!r})")
        problems += [f"{name} (live DOM) {where}: {url}" for where, url in live.urls if is_network(url)]
        if page.name == "intro.html" and "<mjx-container" not in dom:
            problems.append("intro.html: MathJax did not typeset the equations (no <mjx-container>)")
    assert not problems, "\n".join(problems)


@pytest.mark.book
def test_intro_page_screenshot_renders(built_book, chromium, tmp_path):
    shot = built_book["root"] / "_build" / "intro.png"
    result = run_chromium(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,1600",
                          (built_book["html"] / "intro.html").as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-1000:]
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1600)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is (nearly) blank"
    dark = sum(n for n, rgb in colours if sum(rgb) < 200)
    assert dark > 0.005 * 1280 * 1600, "too little dark text on the screenshot; the page did not render"


# --------------------------------------------------------------------------------------------------
# The Makefile's paths, with a stand-in Python that records how it is called
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def recording_python(tmp_path):
    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexit 0\n')
    fake.chmod(0o755)
    return fake, log


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_measure_with_existing_python_installs_nothing(recording_python):
    fake, log = recording_python
    result = subprocess.run(["make", "--no-print-directory", "measure", f"PYTHON={fake}", "GPU=h100"],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    assert not any("pip" in call or "venv" in call or "ipykernel" in call for call in calls), calls
    assert calls[-1] == "-m convfirst.book --mode measure --gpu h100 --executor auto --no-html"
    assert "npm" not in result.stdout and "apt-get" not in result.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_book_passes_mode_gpu_and_parameters(recording_python):
    fake, log = recording_python
    if not (BOOK_SRC / "_vendor" / "mathjax" / "tex-mml-chtml.js").exists():
        pytest.skip("MathJax not fetched yet (the set-up does it)")
    result = subprocess.run(["make", "--no-print-directory", "book", f"PYTHON={fake}", "MODE=replay", "GPU=h100",
                             "PARAMS=-p batch 64"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    assert not any("-m pip" in call for call in calls), calls
    assert calls[-1] == "-m convfirst.book --kernel convfirst --mode replay --gpu h100 -p batch 64"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_test_fails_when_pytest_collects_nothing(tmp_path):
    if not (BOOK_SRC / "_vendor" / "mathjax" / "tex-mml-chtml.js").exists():
        pytest.skip("MathJax not fetched yet (the set-up does it)")
    fake = tmp_path / "python"  # exits like pytest does when it collected no tests
    fake.write_text('#!/bin/sh\nif [ "$1 $2" = "-m pytest" ]; then exit 5; fi\nexit 0\n')
    fake.chmod(0o755)
    result = subprocess.run(["make", "--no-print-directory", "test", f"PYTHON={fake}"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "collected no tests" in result.stdout + result.stderr


@pytest.mark.book
def test_failing_notebook_fails_the_build_and_is_kept(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "01_broken.ipynb", "x = 1", "raise ValueError('deliberately broken cell')")
    result = subprocess.run([sys.executable, "-m", "convfirst.book", "--notebooks-dir", str(notebooks),
                             "--book-dir", str(tmp_path / "book"), "--no-html"],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 1
    assert "01_broken failed" in result.stderr and "deliberately broken cell" in result.stderr
    kept = json.loads((tmp_path / "book" / "chapters" / "01_broken.ipynb").read_text())
    errors = [o for c in kept["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "ValueError"
