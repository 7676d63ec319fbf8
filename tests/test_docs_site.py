"""The documentation site builds strictly and its start page works offline in a real browser.

``mkdocs build --strict`` fails on any warning: a broken link or anchor, a page left out of the
navigation, an API name mkdocstrings cannot find, a docstring it cannot read. The built site is
served on 127.0.0.1 (as Read the Docs or ``mkdocs serve`` serve it) and its start page opened in
headless Chromium: no console error, a working search, and nothing fetched from outside the site
(the machines that read it may have no network).
"""

from __future__ import annotations

import ast
import functools
import os
import re
import subprocess
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from external_tools import headless_chromium

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "reference" / "api"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    folder = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,  # the log says why, below
    )
    log = done.stdout + done.stderr
    warnings = [line for line in log.splitlines() if re.match(r"^(WARNING|ERROR)\b", line)]
    assert done.returncode == 0 and not warnings, f"mkdocs build --strict failed:\n{log[-4000:]}"
    return folder


def test_the_site_builds_strictly_with_every_page_and_the_generated_references(site):
    for page in (
        "index.html",
        "getting-started/first-run.html",
        "methods/index.html",
        "guides/reproduce.html",
        "reference/cli.html",
        "reference/api/runs.html",
        "changelog.html",
        "contributing.html",
    ):
        assert (site / page).is_file(), page
    cli = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    assert "usage: negspace bench" in cli and "--no-count-check" in cli  # the parser's own help
    runs = (site / "reference" / "api" / "runs.html").read_text(encoding="utf-8")
    assert 'id="negspace.runs.evaluate"' in runs and "save_detector_to" in runs  # from the docstring
    changelog = (site / "changelog.html").read_text(encoding="utf-8")
    first_heading = re.search(r"^## (.+)$", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)[1]
    assert first_heading.split(" ")[0] in changelog  # CHANGELOG.md included, not copied


def _documented_names() -> set[str]:
    """The last part of every ``::: module.Name`` directive of the API pages, and every name in
    the ``members: [...]`` list of a module directive."""
    names = set()
    for page in API.glob("*.md"):
        text = page.read_text(encoding="utf-8")
        names |= {path.rsplit(".", 1)[-1] for path in re.findall(r"^::: ([\w.]+)", text, re.M)}
        for members in re.findall(r"members: \[([^\]]*)\]", text):
            names |= {name.strip() for name in members.split(",")}
    return names


def test_every_public_name_of_negspace_is_in_the_api_reference():
    tree = ast.parse((ROOT / "src" / "negspace" / "__init__.py").read_text(encoding="utf-8"))
    exported = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets)
    )
    missing = sorted(set(exported) - _documented_names())
    assert not missing, f"negspace exports names the API reference (docs/reference/api/) does not document: {missing}"
    index = (API / "index.md").read_text(encoding="utf-8")
    unlisted = sorted(name for name in exported if f"`{name}`" not in index)
    assert not unlisted, f"docs/reference/api/index.md does not list {unlisted}"


# Every resource the page loaded (scripts, styles, images, fonts), by its URL.
_RESOURCES = "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]);"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def served(site):
    """The built site on a local port: ``http://127.0.0.1:PORT/``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_the_start_page_opens_offline_with_no_console_error(served):
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chromium()
    try:
        driver.set_window_size(1280, 900)
        driver.get(served + "index.html")
        title = driver.title
        pictures = driver.execute_script(
            "return Array.from(document.images, i => [i.getAttribute('src'), i.complete, i.naturalWidth]);"
        )
        navigation = driver.execute_script("return document.querySelectorAll('nav a').length")
        # the search runs in a worker over the site's own index: type a word, wait for results
        box = driver.find_element("css selector", "input.md-search__input")
        driver.execute_script("arguments[0].focus()", box)
        box.send_keys("NegLabel")
        WebDriverWait(driver, 20).until(
            lambda d: d.execute_script("return document.querySelectorAll('.md-search-result__item').length") > 0
        )
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        resources = driver.execute_script(_RESOURCES)
    finally:
        driver.quit()
    assert errors == [], errors
    assert "negspace" in title
    outside = [url for url in resources if not url.startswith(served)]
    assert not outside, f"the start page fetched from outside the site: {outside}"
    assert pictures and all(complete and width > 0 for _, complete, width in pictures), pictures  # the report
    assert navigation > 20  # the navigation is there


def test_the_readme_is_short_and_its_picture_small():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert pictures, "the README shows no picture of the report"
    for picture in pictures:
        assert (ROOT / picture).stat().st_size < 200_000, picture


def test_the_readmes_links_into_the_docs_land_on_pages_and_anchors_of_the_site(site):
    """The README is read on GitHub, outside the site: its links into docs/ must still name built
    pages, and its #anchors headings those pages have (mkdocs checks the site's own links)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    wrong = []
    for target in re.findall(r"\]\((docs/[^)\s]+)\)", readme):
        path, _, anchor = target.partition("#")
        page = Path(path).relative_to("docs")
        if page.suffix != ".md":
            continue
        built = site / (page.parent / "index.html" if page.name == "README.md" else page.with_suffix(".html"))
        if not built.is_file():
            wrong.append(f"{target}: no page {built.relative_to(site)}")
        elif anchor and f'id="{anchor}"' not in built.read_text(encoding="utf-8"):
            wrong.append(f"{target}: no heading #{anchor}")
    assert not wrong, "\n".join(wrong)
