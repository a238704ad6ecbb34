"""A real headless Chromium for the report test, from whatever this platform offers.

1. Debian: the ``chromium`` and ``chromium-driver`` packages, driven through Selenium
   (selenium-manager never asked: no download).
2. Ubuntu ships Chromium only as a snap (its ``chromium-browser`` deb installs the snap,
   which does not run in containers and fights WebDriver): there ``./lab.sh test``
   installs Playwright (PyPI) and its own Chromium build; Playwright also drives a
   system Chromium that has no driver.

``CASLAB_BROWSER=selenium|playwright`` forces one. Both are wrapped in the small
Selenium-shaped interface the test uses. Where neither exists the test is skipped with a
reason that names the platform; under CI it fails only where the distribution ships a
Chromium package (Debian), since there the set-up must have installed it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                  "--hide-scrollbars", "--force-device-scale-factor=1")


class Unavailable(RuntimeError):
    """No browser on this platform; the message says what is missing and why."""


def platform_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "this platform"


def distribution_ships_chromium() -> bool:
    """Debian and its derivatives other than Ubuntu ship Chromium as a real package."""
    text = Path("/etc/os-release").read_text() if Path("/etc/os-release").exists() else ""
    return "ID=debian" in text


def system_chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p and not p.startswith("/snap/")), None)


def chromedriver() -> str | None:
    return shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver")
                                            else None)


@contextmanager
def selenium_chromium(tmp_path: Path, monkeypatch):
    binary, driver_path = system_chromium(), chromedriver()
    missing = [what for what, ok in (("chromium (Debian package chromium)", binary),
                                     ("chromedriver (Debian package chromium-driver)", driver_path),
                                     ("selenium", importlib.util.find_spec("selenium"))) if not ok]
    if missing:
        raise Unavailable("needs " + ", ".join(missing))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager may never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-', dir=tmp_path)}",
                                  "--window-size=1280,900"):
        options.add_argument(flag)
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class _Element:
    def __init__(self, text: str):
        self.text = text


class PlaywrightPage:
    """The part of Selenium's WebDriver the test uses, on a Playwright page."""

    def __init__(self, page):
        self.page = page

    def get(self, url: str) -> None:
        self.page.goto(url, wait_until="load", timeout=60_000)

    @property
    def title(self) -> str:
        return self.page.title()

    def execute_script(self, script: str):
        return self.page.evaluate(f"() => {{ {script} }}")

    def find_element(self, _by: str, selector: str) -> _Element:
        return _Element(self.page.inner_text(selector))

    def find_elements(self, _by: str, selector: str) -> list:
        return self.page.query_selector_all(selector)

    def set_window_size(self, width: int, height: int) -> None:
        self.page.set_viewport_size({"width": int(width), "height": int(height)})

    def save_screenshot(self, path: str) -> bool:
        self.page.screenshot(path=path)
        return True


@contextmanager
def playwright_chromium(tmp_path: Path):
    if importlib.util.find_spec("playwright") is None:
        raise Unavailable("needs Playwright (pip install playwright; python -m playwright install chromium)")
    from playwright.sync_api import Error, sync_playwright

    bundled = Path(sys.prefix) / "playwright"  # where lab.sh installs Playwright's Chromium
    if "PLAYWRIGHT_BROWSERS_PATH" not in os.environ and bundled.is_dir():
        os.environ["PLAYWRIGHT_BROWSERS_PATH"] = str(bundled)

    with sync_playwright() as pw:
        try:  # Playwright's own Chromium first, else a system one it can drive without a driver
            browser = pw.chromium.launch(headless=True, args=list(CHROMIUM_FLAGS[1:]))
        except Error as own:
            binary = system_chromium()
            if binary is None:
                raise Unavailable(f"Playwright's Chromium is not installed ({str(own).splitlines()[0]})") from None
            browser = pw.chromium.launch(headless=True, executable_path=binary, args=list(CHROMIUM_FLAGS[1:]))
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            yield PlaywrightPage(page)
        finally:
            browser.close()


@contextmanager
def headless_chromium(tmp_path: Path, monkeypatch):
    """Yields a Selenium-shaped browser; raises Unavailable with the reason."""
    forced = os.environ.get("CASLAB_BROWSER")
    reasons = []
    with ExitStack() as stack:
        for name, opener in (("selenium", lambda: selenium_chromium(tmp_path, monkeypatch)),
                             ("playwright", lambda: playwright_chromium(tmp_path))):
            if forced and forced != name:
                continue
            try:
                browser = stack.enter_context(opener())
            except Unavailable as exc:
                reasons.append(f"{name}: {exc}")
                continue
            yield browser
            return
    raise Unavailable(f"{platform_name()}: no headless Chromium ({'; '.join(reasons)})")
