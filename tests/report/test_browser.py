"""``report.html`` in a real browser: Debian's headless Chromium, offline.

One tiny real run (every stage) is reported once; Chromium then
* renders it with networking off (every request goes to a dead proxy) and lists every resource
  the page fetched: only the page itself (``file:``) and inline ``data:`` images;
* checks inside the page, with a script added to a copy of it, that every in-page link
  (``href="#…"``) and every section id resolves and that every image decoded;
* takes a full-page screenshot, which must not be blank;
* prints it to PDF with the print stylesheet: every heading and every table's header cells are in
  the PDF's text (a cut column or section would be missing), as many images as the page has.

A skipped browser test is not a test: ``.ci/run`` installs ``chromium-headless-shell`` when missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from cxrsynth.report.html import SECTION_IDS
from cxrsynth.report.runner import write_report
from tests.tiny_run import copy_run

pytestmark = pytest.mark.slow

CHROMIUM_NAMES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
OFFLINE_FLAGS = ("--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                 "--disable-background-networking", "--no-first-run")
CHECK_MARKER = "browser-check-result"
CHECK_SCRIPT = """
<script>
window.addEventListener("load", () => {
  // After "load" every data: image has decoded or failed: naturalWidth is final.
  const images = Array.from(document.images);
  const links = Array.from(document.querySelectorAll('a[href^="#"]')).map(a => a.getAttribute("href").slice(1));
  const result = {
    images: images.map(image => ({alt: image.alt, width: image.naturalWidth, complete: image.complete})),
    unresolved_links: links.filter(id => id && !document.getElementById(id)),
    n_links: links.length,
    ids: Array.from(document.querySelectorAll("[id]")).map(element => element.id),
    resources: performance.getEntriesByType("resource").map(entry => entry.name),
    page: location.protocol,
  };
  const out = document.createElement("pre");
  out.id = "%s";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>
""" % CHECK_MARKER


def chromium() -> str:
    """The headless Chromium binary; fails (does not skip) when there is none."""
    path = next((found for found in map(shutil.which, CHROMIUM_NAMES) if found), None)
    assert path is not None, (f"no headless Chromium found (looked for {', '.join(CHROMIUM_NAMES)}): "
                              "apt-get install -y chromium-headless-shell")
    return path


def run_chromium(*arguments: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Chromium headless and offline with ``arguments``."""
    return subprocess.run([chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                           *OFFLINE_FLAGS, *arguments], check=True, capture_output=True, timeout=timeout, text=True)


class PageOutline(HTMLParser):
    """Headings, table header cells, image count and external fetch attributes of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.header_cells: list[str] = []
        self.images = 0
        self.external: list[str] = []
        self._capture: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        attributes = dict(attrs)
        if tag == "img":
            self.images += 1
        for name in ("src", "srcset", "poster", "data"):
            value = attributes.get(name) or ""
            if re.match(r"\s*(https?:)?//", value):
                self.external.append(f"<{tag} {name}={value}>")
        if tag in ("link", "script") and re.match(r"\s*(https?:)?//", attributes.get("href") or ""):
            self.external.append(f"<{tag} href={attributes['href']}>")
        if tag in ("h1", "h2", "h3", "th"):
            self._capture, self._text = tag, []

    def handle_data(self, data: str) -> None:
        if self._capture:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == self._capture:
            text = " ".join("".join(self._text).split())
            if text:
                (self.header_cells if tag == "th" else self.headings).append(text)
            self._capture = None


@pytest.fixture(scope="module")
def report_page(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``report.html`` of a copy of the shared tiny run."""
    run = copy_run(tiny_run, tmp_path_factory.mktemp("browser") / "run")
    write_report(run)
    return run / "report.html"


def test_page_fetches_nothing_from_the_network(report_page: Path) -> None:
    html = report_page.read_text()
    outline = PageOutline()
    outline.feed(html)
    assert outline.external == []
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html), "the inline CSS fetches a remote resource"
    result = page_check(report_page)
    assert result["page"] == "file:"
    assert [name for name in result["resources"] if not name.startswith(("file:", "data:"))] == []


def page_check(page: Path) -> dict:
    """What the injected script measured in the rendered page."""
    checked = page.with_name("report-check.html")
    checked.write_text(page.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    found = None
    for _ in range(3):  # on a loaded machine the dump can come before "load": try again
        dom = run_chromium("--virtual-time-budget=30000", "--run-all-compositor-stages-before-draw", "--dump-dom",
                           checked.as_uri(), timeout=180).stdout
        found = re.search(rf'<pre id="{CHECK_MARKER}">(.*?)</pre>', dom, re.S)
        if found:
            break
    assert found, "the check script did not run in the browser"
    import html as html_module

    return json.loads(html_module.unescape(found.group(1)))


def test_every_anchor_resolves_and_every_image_decodes(report_page: Path) -> None:
    result = page_check(report_page)
    assert result["n_links"] >= 5 and result["unresolved_links"] == []
    assert set(SECTION_IDS) <= set(result["ids"])
    outline = PageOutline()
    outline.feed(report_page.read_text())
    assert len(result["images"]) == outline.images >= 3
    broken = [image["alt"] for image in result["images"] if not image["complete"] or image["width"] == 0]
    assert broken == []


def test_full_page_screenshot_is_not_blank(report_page: Path, tmp_path: Path) -> None:
    from PIL import Image

    screenshot = tmp_path / "report.png"
    run_chromium(f"--screenshot={screenshot}", "--window-size=1200,3000", report_page.as_uri())
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape[0] > 1000 and pixels.std() > 10
    # Text and figures are spread down the page, not only at its top.
    rows_with_ink = (pixels < 200).any(axis=1)
    assert rows_with_ink[: len(rows_with_ink) // 3].any() and rows_with_ink[len(rows_with_ink) // 3 :].any()


def test_print_stylesheet_renders_to_pdf_with_nothing_cut(report_page: Path, tmp_path: Path) -> None:
    from pypdf import PdfReader

    pdf = tmp_path / "report.pdf"
    run_chromium(f"--print-to-pdf={pdf}", "--no-pdf-header-footer", report_page.as_uri(), timeout=180)
    reader = PdfReader(str(pdf))
    assert len(reader.pages) >= 2
    text = re.sub(r"\s+", "", "".join(page.extract_text() or "" for page in reader.pages))
    outline = PageOutline()
    outline.feed(report_page.read_text())
    missing = [heading for heading in outline.headings + outline.header_cells if re.sub(r"\s+", "", heading) not in text]
    assert missing == []
    assert sum(len(page.images) for page in reader.pages) >= outline.images
    # The navigation bar is for the screen only.
    assert "nav" in report_page.read_text() and "@media print" in report_page.read_text()
