"""Sphinx extension: keep the built book free of anything a browser would fetch from the internet.

Jupyter Book always loads sphinx-thebe, which writes the address of its JavaScript bundle on a public CDN
into every page (fetched only when a "live code" button is pressed, and this book has none). The book is
read offline and its code runs through papermill, so the thebe scripts and style are dropped from every page.
"""
from __future__ import annotations

THEBE_FILES = ("sphinx-thebe.js", "sphinx-thebe.css")


def _is_thebe(asset) -> bool:
    filename = getattr(asset, "filename", None) or str(asset)
    body = getattr(asset, "attributes", {}).get("body", "") or ""
    return any(filename.endswith(name) for name in THEBE_FILES) or "THEBE_JS_URL" in body


def drop_thebe_assets(app, pagename, templatename, context, doctree) -> None:
    for key in ("script_files", "css_files"):
        if key in context:
            context[key] = [asset for asset in context[key] if not _is_thebe(asset)]


def setup(app):
    app.connect("html-page-context", drop_thebe_assets, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
