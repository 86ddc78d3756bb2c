"""The documentation site: built with --strict, then opened in headless Chromium with every
request outside 127.0.0.1 refused, so that what renders here renders offline."""

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUIET = {"DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built as `make docs` builds it (into a folder of the test's own)."""
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                            str(out)], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, **QUIET})
    assert built.returncode == 0, built.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def served(site):
    """The built site over HTTP on 127.0.0.1 (search runs in a web worker, which file://
    pages cannot start)."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def offline_page(browser, served):
    """A page whose requests to anywhere but the local server are refused, and which records
    what was refused and what failed to load."""
    page = browser.new_page()
    page.refused, page.failed = [], []

    def route(request_route):
        if request_route.request.url.startswith(served):
            request_route.continue_()
        else:
            page.refused.append(request_route.request.url)
            request_route.abort()

    page.route("**/*", route)
    # a load still pending when the test moves to the next page is aborted, and MathJax
    # opens an about:blank frame: neither is a missing file
    page.on("requestfailed", lambda request: request.failure == "net::ERR_ABORTED" or
            request.url.startswith("about:") or
            page.failed.append((request.url, request.failure)))
    yield page
    page.close()


def html_pages(site: Path) -> list[str]:
    return sorted(path.relative_to(site).as_posix() for path in site.rglob("index.html")
                  if "assets" not in path.parts)


def test_the_pages_a_user_looks_for_exist(site):
    pages = set(html_pages(site))
    for page in ("getting-started", "own-images", "models/vae", "models/conditional",
                 "likelihoods", "evaluation", "distributed", "explorer", "figures", "failures",
                 "notebook", "benchmarks", "reference", "changelog", "cli"):
        assert f"{page}/index.html" in pages, page
    assert any(page.startswith("reference/") and page != "reference/index.html"
               for page in pages)


def test_every_page_renders_with_its_images_and_nothing_from_the_network(site, served,
                                                                         offline_page):
    for name in html_pages(site):
        offline_page.goto(f"{served}/{name}", wait_until="load")
        assert offline_page.locator("h1").count() >= 1, name
        broken = offline_page.evaluate(
            "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
            ".map(i => i.getAttribute('src'))")
        assert broken == [], (name, broken)
    assert offline_page.refused == []  # nothing asked of a CDN or a font service
    assert offline_page.failed == []


@pytest.mark.parametrize("name", ["models/vae/", "notebook/", "likelihoods/"])
def test_equations_are_typeset_offline(served, offline_page, name):
    """MathJax, served from the site itself, turns every marked equation into its output:
    none left as LaTeX source, none in error."""
    offline_page.goto(f"{served}/{name}")
    offline_page.wait_for_function(
        "window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0 && "
        "MathJax.Hub.queue.running === 0", timeout=60_000)
    counts = offline_page.evaluate("""() => ({
        marked: document.querySelectorAll('.arithmatex').length,
        typeset: document.querySelectorAll('.arithmatex script[type^="math/tex"]').length,
        rendered: Array.from(document.querySelectorAll('.arithmatex'))
            .filter(e => e.querySelector('.MathJax')).length,
        errors: document.querySelectorAll('.MathJax_Error, merror').length,
        source: Array.from(document.querySelectorAll('.arithmatex'))
            .filter(e => /\\\\\\(|\\\\\\[/.test(e.textContent)).length})""")
    assert counts["marked"] > 0, counts
    assert counts["typeset"] == counts["marked"] == counts["rendered"], counts
    assert counts["errors"] == 0 and counts["source"] == 0, counts
    assert offline_page.refused == []


@pytest.mark.parametrize("query, page", [("kl-warmup", "cli/"), ("mixture-components", "cli/"),
                                         ("grayscale floor", "likelihoods/")])
def test_search_finds_an_option_by_name(served, offline_page, query, page):
    offline_page.goto(f"{served}/")
    search = offline_page.locator("input.md-search__input")
    search.click()
    search.press_sequentially(query, delay=20)  # key by key, as the search listens for keys
    # the results follow the keys as they come: wait for those of the whole query (whose
    # words the search highlights, split at spaces and hyphens)
    words = " ".join(query.replace("-", " ").split())
    found = f"""() => Array.from(document.querySelectorAll('.md-search-result__item a'))
        .map(a => new URL(a.href)).some(url => url.pathname.endsWith('/{page}')
        && url.searchParams.get('h') === {words!r})"""
    offline_page.wait_for_function(found, timeout=30_000)
