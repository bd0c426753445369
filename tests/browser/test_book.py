"""The built book in a real browser: Debian's Chromium, headless, over a local HTTP server.

Run by ``make test`` after it builds the smoke book; point ``QADTR_BOOK_HTML`` at any built book's
``_build/html`` to check another build. Screenshots go to ``test-artifacts/``.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

HTML = os.environ.get("QADTR_BOOK_HTML")
if not HTML:
    pytest.skip("QADTR_BOOK_HTML is not set (make test sets it after building the smoke book)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(HTML)
SHOTS = Path(os.environ.get("QADTR_TEST_ARTIFACTS", "test-artifacts"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPO_TOC = Path(__file__).resolve().parents[2] / "_toc.yml"
# The table of contents the book was built with (bookconfig writes it beside _build/_config.yml: the repository's,
# less the result chapters the book has no executed notebook for); the repository's where there is none.
BUILT_TOC = ROOT.parent / "_toc.yml"
TOC = BUILT_TOC if BUILT_TOC.exists() else REPO_TOC
CLAIMS = [f"C{i}" for i in range(1, 8)]


def _files(toc: Path) -> list[str]:
    return re.findall(r"(?:root|file):\s*(\S+)", toc.read_text())


def chapters() -> list[str]:
    """Every page of the table of contents, as paths under the HTML root."""
    return [f"{f}.html" for f in _files(TOC)]


def test_the_book_leaves_out_only_result_chapters_it_has_not_executed():
    """Every page of the repository's table of contents is in the book, but for result chapters without an
    executed notebook (a chapter newer than the committed build), each of which the build logged."""
    missing = [f for f in _files(REPO_TOC) if f not in _files(TOC)]
    assert all(f.startswith("book/results/") for f in missing), missing
    assert not [f for f in missing if (ROOT.parent.parent / f"{f}.ipynb").exists()]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    assert (ROOT / "index.html").exists(), f"no built book at {ROOT} (run `make test` or `make html`)"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(ROOT)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    assert CHROMIUM, "Chromium is not installed (Debian: apt-get install chromium)"
    with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, viewport={"width": 1280, "height": 900},
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield ctx
        ctx.close()


def _open(browser, url: str):
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    response = page.goto(url, wait_until="load")
    return page, response, errors


@pytest.mark.parametrize("chapter", chapters())
def test_every_chapter_loads_with_its_figures_and_no_console_errors(server, browser, chapter):
    page, response, errors = _open(browser, urljoin(server, chapter))
    assert response is not None and response.ok, f"{chapter}: HTTP {response and response.status}"
    assert page.locator("main h1").count() >= 1, f"{chapter}: no title"
    page.wait_for_function("[...document.images].every(i => i.complete)")
    broken = page.evaluate("[...document.images].filter(i => !(i.naturalWidth > 0 && i.naturalHeight > 0)).map(i => i.src)")
    assert broken == [], f"{chapter}: images that do not decode: {broken}"
    assert "profile" in page.locator(".announcement, .bd-header-announcement").first.inner_text(), "no profile banner"
    assert errors == [], f"{chapter}: console errors {errors}"
    page.close()


def test_result_chapters_show_figures(server, browser):
    for chapter in ("book/results/01_transferability.html", "book/results/02_defenses.html",
                    "book/results/03_ablations.html"):
        page, _, _ = _open(browser, urljoin(server, chapter))
        sizes = page.evaluate("[...document.images].map(i => i.naturalWidth * i.naturalHeight)")
        assert sizes and min(sizes) > 0, f"{chapter}: no decoded figure"
        page.close()


def test_scorecard_has_one_row_per_claim_and_links_its_chapters(server, browser):
    page, _, errors = _open(browser, urljoin(server, "book/results/07_scorecard.html"))
    # the scorecard is the page's first table (the attack-strength table below it also starts with claim ids)
    first_cells = page.evaluate("[...document.querySelector('main table').querySelectorAll('tbody tr')]"
                                ".map(r => r.cells[0].innerText.trim())")
    rows = [c for c in first_cells if re.fullmatch(r"[CB]\d", c)]  # the paper's claims, then those beyond it (B1)
    assert [r for r in rows if r.startswith("C")] == CLAIMS, f"scorecard rows {rows}"
    links = page.evaluate("[...document.querySelector('main table').querySelectorAll('tbody a')].map(a => a.href)")
    assert len(CLAIMS) <= len(links) <= len(rows)  # a row beyond the paper links its chapter once the book has it
    for href in links:
        assert page.request.get(href).ok, href
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "scorecard.png"), full_page=True)
    assert (SHOTS / "scorecard.png").stat().st_size > 0 and errors == []
    page.close()


def test_navigation_links_resolve(server, browser):
    page, _, _ = _open(browser, server)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "intro.png"), full_page=True)
    seen, bad = set(), []
    for chapter in chapters():
        page.goto(urljoin(server, chapter))
        for href in page.evaluate("[...document.querySelectorAll('a[href]')].map(a => a.href)"):
            url = urldefrag(href).url
            if urlparse(url).netloc != urlparse(server).netloc or url in seen:
                continue
            seen.add(url)
            if not page.request.get(url).ok:
                bad.append(f"{chapter} -> {url}")
    assert len(seen) >= len(chapters()) and bad == [], f"broken links: {bad}"
    page.close()


@pytest.mark.parametrize("chapter", ["book/intro.html", "book/results/07_scorecard.html"])
def test_no_table_of_the_verdicts_overflows_its_column(server, browser, chapter):
    """Every table on the introduction and the scorecard fits the text column: nothing (the verdict column
    first) is clipped or needs a horizontal scroll at a 1280-pixel window."""
    page, _, _ = _open(browser, urljoin(server, chapter))
    tables = page.evaluate("""[...document.querySelectorAll('main table')].map(t => {
        const box = t.closest('.pst-scrollable-table-container') || t.parentElement;
        const main = document.querySelector('main').getBoundingClientRect();
        const r = t.getBoundingClientRect();
        return {over: Math.max(t.scrollWidth - box.clientWidth, r.right - main.right), cols: t.rows[0].cells.length};
    })""")
    assert tables, f"{chapter}: no table"
    wide = [t for t in tables if t["over"] > 1]
    assert wide == [], f"{chapter}: tables wider than their column by {[round(t['over']) for t in wide]} px"
    page.close()
