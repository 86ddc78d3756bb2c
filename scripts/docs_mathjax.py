"""MkDocs hook: the site serves MathJax from the installed package jupyter-server-mathjax
(MathJax 2.7 with its fonts, the copy Jupyter serves offline), never from a CDN, so equations
are typeset with no network."""

from __future__ import annotations

import shutil
from pathlib import Path

TARGET = "assets/mathjax"  # where docs/javascripts/mathjax.js and mkdocs.yml expect it


def on_post_build(config, **kwargs) -> None:
    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    shutil.copytree(source, Path(config["site_dir"]) / TARGET, dirs_exist_ok=True)
