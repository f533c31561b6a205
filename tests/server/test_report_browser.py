"""report.html in a real headless Chromium (Debian's chromium and chromium-driver, installed when
missing), driven over the W3C WebDriver protocol: plain HTTP and JSON, so no client library."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_runs import summary_rows
from servers import wait_for

from virnucpro_triton.processes import free_port
from virnucpro_triton.results.report import COLORS, REPORT

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C key of an element reference
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,3000",
]
COLUMN = {"rank": 0, "id": 1, "length": 2, "weighted_score": 6, "verdict": 7}


def _installed() -> tuple[str, str]:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"],
            check=True,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    return shutil.which("chromium"), shutil.which("chromedriver")


class Browser:
    """One Chromium session through chromedriver."""

    def __init__(self, profile: Path):
        chromium, driver = _installed()
        port = free_port()
        self._driver = subprocess.Popen(
            [driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._base = f"http://127.0.0.1:{port}"
        wait_for(self._ready, timeout=60)
        options = {"binary": chromium, "args": [*FLAGS, f"--user-data-dir={profile}"]}
        capabilities = {"browserName": "chrome", "goog:chromeOptions": options}
        capabilities["goog:loggingPrefs"] = {"browser": "ALL"}
        answer = self._call("POST", "/session", {"capabilities": {"alwaysMatch": capabilities}})
        self._session = f"/session/{answer['sessionId']}"

    def _ready(self) -> bool:
        try:
            return self._call("GET", "/status")["ready"]
        except (urllib.error.URLError, ConnectionError):
            return False

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self._base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)["value"]

    def do(self, method: str, path: str, body: dict | None = None):
        return self._call(method, self._session + path, body)

    def run(self, script: str, *args):
        return self.do("POST", "/execute/sync", {"script": script, "args": list(args)})

    def element(self, css: str) -> str:
        return self.do("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def console(self) -> list[dict]:
        return self.do("POST", "/se/log", {"type": "browser"})

    def close(self) -> None:
        try:
            self.do("DELETE", "")
        finally:
            self._driver.terminate()
            self._driver.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    session = Browser(tmp_path_factory.mktemp("chromium_profile"))
    yield session
    session.close()


@pytest.fixture(scope="module")
def page(browser, run):  # noqa: F811
    browser.do("POST", "/url", {"url": (run / REPORT).as_uri()})
    wait_for(lambda: browser.run("return document.readyState") == "complete")
    return browser


def column(browser: Browser, name: str) -> list[str]:
    return browser.run(
        "return Array.from(document.querySelectorAll('#sequences tbody tr'))"
        ".filter(r => !r.hidden).map(r => r.cells[arguments[0]].textContent)",
        COLUMN[name],
    )


def test_page_loads_with_no_console_error_and_every_image_decoded(page):
    assert [e for e in page.console() if e["level"] == "SEVERE"] == []
    sizes = page.run("return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    assert len(sizes) > 4 and all(done and width >= 400 for done, width in sizes)


def test_table_sorts_on_a_click(page, run):  # noqa: F811
    rows = summary_rows(run)
    header = page.element(f"#sequences th:nth-child({COLUMN['length'] + 1})")
    page.do("POST", f"/element/{header}/click", {})
    lengths = [int(n) for n in column(page, "length")]
    assert lengths == sorted((int(r["length"]) for r in rows), reverse=True)
    page.do("POST", f"/element/{header}/click", {})
    assert [int(n) for n in column(page, "length")] == sorted(lengths)
    header = page.element(f"#sequences th:nth-child({COLUMN['id'] + 1})")
    page.do("POST", f"/element/{header}/click", {})
    assert column(page, "id") == sorted((r["id"] for r in rows), reverse=True)
    assert [e for e in page.console() if e["level"] == "SEVERE"] == []


def test_table_filters_by_verdict_and_searches_ids(page, run):  # noqa: F811
    rows = summary_rows(run)
    page.run(
        "var s = document.getElementById('verdict'); s.value = 'no_frames';"
        "s.dispatchEvent(new Event('change'))"
    )
    assert sorted(column(page, "id")) == sorted(
        r["id"] for r in rows if r["verdict"] == "no_frames"
    )
    page.run(
        "var s = document.getElementById('verdict'); s.value = '';"
        "s.dispatchEvent(new Event('change'))"
    )
    box = page.element("#search")
    page.do("POST", f"/element/{box}/value", {"text": "contig_1"})
    expected = [r["id"] for r in rows if "contig_1" in r["id"]]
    assert sorted(column(page, "id")) == sorted(expected) and len(expected) == 3
    assert page.run("return document.getElementById('shown').textContent") == "3"


def test_screenshot_shows_the_plots(page, tmp_path):
    page.run("document.querySelector('h2').scrollIntoView()")
    png = base64.b64decode(page.do("GET", "/screenshot"))
    (tmp_path / "report.png").write_bytes(png)  # kept by pytest for a look
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(int)
    for verdict in ("uncertain", "nonviral", "no_frames"):  # bars and stacked histograms
        rgb = np.array([int(COLORS[verdict][i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(pixels - rgb).sum(axis=1) < 12).sum() > 200, verdict
