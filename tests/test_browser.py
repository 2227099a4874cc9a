"""The report and the web app in a real browser: headless Chromium driven by Selenium.

Few and fast: one report opened from disk (coloured characters, the unit picker, a hover
tooltip with the model's top-5 next characters), and one ``rnnlab serve`` process (type a prime,
see the sample stream in, stop the server with Ctrl-C).

Chromium and chromium-driver are Debian packages, not Python ones. Where they are missing these
tests are skipped, with the reason, so a developer without them runs the rest; where
``RNNLAB_REQUIRE_BROWSER=1`` (.ci/run sets it) or ``CI=true`` they fail instead, so CI can never
pass without having run them.
"""
from __future__ import annotations

import json
import os
import re
import socket

import pytest

from browser_support import chromium, find_browser, wait_for
from test_viz_cli import CODE, ENTRY_POINT, TINY, start_server, stop_server

from rnnlab.cli import main

pytestmark = pytest.mark.browser

REQUIRED = os.environ.get("RNNLAB_REQUIRE_BROWSER", "") == "1" or os.environ.get("CI", "").lower() in ("1", "true")


@pytest.fixture(scope="module")
def browser():
    found = find_browser()
    if isinstance(found, str):
        if REQUIRED:
            pytest.fail(f"the browser tests must run here (RNNLAB_REQUIRE_BROWSER=1 or CI=true), but {found}")
        pytest.skip(found)
    with chromium(1200, 900) as driver:
        yield driver


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser")
    text = d / "code.txt"
    text.write_text(CODE * 30, encoding="utf-8")
    assert main(["train", str(text), "--out", str(d / "run"), "--model", "lstm", *TINY]) == 0
    return d / "run", text


def severe_console_messages(driver):
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def colours(driver):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#text .ch'), s => getComputedStyle(s).backgroundColor)")


def test_report_file_in_chromium(browser, run_dir, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    run, text = run_dir
    out = tmp_path / "report.html"
    assert main(["visualize", str(run), "--text", str(text), "--out", str(out), "--chars", "400", "--quiet"]) == 0
    payload = json.loads(re.search(r'type="application/json">(.*?)</script>', out.read_text("utf-8"), re.S).group(1))
    browser.get(out.as_uri())
    wait_for(browser, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), what="the report")
    assert severe_console_messages(browser) == []
    # every character is there, coloured by the unit the report opened with
    spans = browser.find_elements(By.CSS_SELECTOR, "#text .ch")
    assert len(spans) == 400
    assert "".join(browser.execute_script("return Array.from(document.querySelectorAll('#text .ch'), s => s.textContent)")) \
        == payload["text"]
    before = colours(browser)
    assert len(set(before)) >= 5 and "rgba(0, 0, 0, 0)" not in before[1:]
    # the unit picker: another unit, other colours
    picker = Select(browser.find_element(By.ID, "unit-select"))
    assert len(picker.options) >= 16
    current = picker.first_selected_option.get_attribute("value")
    picker.select_by_value(next(o.get_attribute("value") for o in picker.options if o.get_attribute("value") != current))
    after = colours(browser)
    assert after != before and len(set(after)) >= 5
    Select(browser.find_element(By.ID, "unit-q")).select_by_value("f")  # a gate of the LSTM
    assert colours(browser) != after
    # hovering a character: its loss and the model's top-5 next characters
    k = 57
    ActionChains(browser).move_to_element(spans[k]).perform()
    tip = wait_for(browser, lambda d: d.find_element(By.ID, "tip") if d.find_element(By.ID, "tip").is_displayed()
                   else False, what="the tooltip")
    rows = tip.find_elements(By.CSS_SELECTOR, "tr")
    assert len(rows) == 5 and "loss: RNN" in tip.text and "nats" in tip.text
    import base64

    import numpy as np

    top_p = np.frombuffer(base64.b64decode(payload["top"]["p"]), np.uint8).reshape(-1, 5)[k] / 255
    shown = [float(r.find_elements(By.TAG_NAME, "td")[2].text.rstrip("%")) / 100 for r in rows]
    np.testing.assert_allclose(shown, top_p, atol=0.0011)
    # a ranked unit is one click away
    button = browser.find_element(By.XPATH, "//tr[.//span[@class='pname' and text()='in_brackets']]//button")
    browser.execute_script("arguments[0].click()", button)
    legend = browser.find_element(By.ID, "legend").text
    assert "underlined" in legend and "unit" in legend
    assert browser.find_elements(By.CSS_SELECTOR, "#text .ch.u")  # the property is underlined


def test_serve_in_chromium(browser, run_dir):
    from selenium.webdriver.common.by import By

    if not ENTRY_POINT.exists():
        pytest.skip("the rnnlab entry point is not installed")
    run, _ = run_dir
    proc, url = start_server(run)
    try:
        browser.get(url)
        wait_for(browser, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), what="the app")
        prime = browser.find_element(By.ID, "prime")
        prime.clear()
        prime.send_keys("def f(")
        length = browser.find_element(By.ID, "length")
        length.clear()
        length.send_keys("60")
        browser.find_element(By.ID, "generate").click()
        wait_for(browser, lambda d: "characters in" in d.find_element(By.ID, "status").text, what="the sample")
        sample = browser.find_element(By.ID, "sample")
        chars = sample.find_elements(By.CSS_SELECTOR, ".ch")
        assert len(chars) == 6 + 60
        text = browser.execute_script("return arguments[0].textContent", sample)
        assert text.startswith("def f(") and len(text) == 66
        assert len(sample.find_elements(By.CSS_SELECTOR, ".ch.pr")) == 6  # the prime, marked
        assert browser.execute_script("return document.getElementById('strip').width") >= 66 * 3
        assert severe_console_messages(browser) == []
    finally:
        rc, out, err = stop_server(proc)
    assert rc == 0 and "rnnlab serve: stopped" in out and "Traceback" not in err
    with socket.socket() as s:  # nothing answers any more
        assert s.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/")))) != 0
