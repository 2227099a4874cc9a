"""A real headless Chromium for the browser tests and the documentation's screenshots.

Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``;
.ci/run installs them), driven by Selenium. Nothing is downloaded: the browser and the driver are
the installed executables (``RNNLAB_CHROMIUM`` / ``RNNLAB_CHROMEDRIVER`` point elsewhere), and
Selenium is told both paths, so its driver manager never runs. Each browser gets a fresh profile
directory and the flags that keep a headless Chromium quiet and off the network.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

INSTALL = "apt-get install -y chromium chromium-driver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars")


def find_browser() -> tuple[str, str] | str:
    """``(chromium, chromedriver)`` paths, or a one-line reason why the browser tests cannot run."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is not installed: pip install ".[test]"'
    browser = os.environ.get("RNNLAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("RNNLAB_CHROMEDRIVER") or shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver))
               if not path or not os.access(path, os.X_OK)]
    if missing:
        return f"{' and '.join(missing)} not found: install Debian's packages ({INSTALL})"
    return browser, driver


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900):
    """A Selenium WebDriver for a fresh headless Chromium; quits it and removes its profile after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_browser()
    if isinstance(found, str):
        raise RuntimeError(found)
    browser, driver_path = found
    profile = tempfile.mkdtemp(prefix="rnnlab-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, condition, timeout: float = 30.0, what: str = "the page"):
    """Wait until ``condition(driver)`` is truthy; returns its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, message=f"waiting for {what}")
