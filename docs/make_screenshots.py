"""Screenshots for docs/visualize.md, taken with the browser machinery of the tests
(tests/browser_support.py: Debian's headless Chromium driven by Selenium).

    python docs/make_screenshots.py --report shakespeare RUN TEXT column,after_newline,uppercase \\
                                    --report code RUN TEXT in_quotes,in_brackets,indentation \\
                                    --serve RUN "ROMEO:" --out docs/figures

For each ``--report NAME RUN TEXT PROPS``: ``rnnlab visualize RUN --text TEXT`` (its summary is
printed: the units it ranks best), then one picture of the text coloured by the best unit of each
property in ``PROPS`` (that property underlined), one with a hover tooltip, and the gate
saturation and loss sections. ``--serve RUN PRIME`` starts ``rnnlab serve`` and pictures a sample
streamed from ``PRIME``. PNGs are reduced to a 64-colour palette to stay small.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser_support import chromium, wait_for  # noqa: E402


def small_png(png: bytes, path: Path) -> None:
    """Save ``png`` as a 64-colour palette PNG (a fraction of the size, no visible loss here)."""
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"  {path} ({path.stat().st_size / 1024:.0f} KB)")


def shoot(driver, element_id: str, path: Path) -> None:
    el = driver.find_element("id", element_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", el)
    time.sleep(0.3)
    small_png(el.screenshot_as_png, path)


def report(driver, name: str, run: str, text: str, props: list[str], out: Path, chars: int, seed: int) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    html = Path(tempfile.mkdtemp()) / f"{name}.html"
    res = subprocess.run([sys.executable, "-m", "rnnlab", "visualize", run, "--text", text, "--out", str(html),
                          "--chars", str(chars), "--seed", str(seed)], capture_output=True, text=True)
    print(res.stdout + res.stderr)
    res.check_returncode()
    driver.get(html.as_uri())
    wait_for(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), what="the report")
    for prop in props:
        rows = driver.find_elements(By.CSS_SELECTOR, "#ranking-table tbody tr")
        row = next((r for r in rows if r.find_element(By.CSS_SELECTOR, ".pname").text == prop), None)
        if row is None:
            print(f"  {prop}: not in this text")
            continue
        driver.execute_script("arguments[0].click()", row.find_element(By.CSS_SELECTOR, ".unit-btn"))
        driver.execute_script("document.getElementById('text').scrollTop = 0")
        shoot(driver, "viewer", out / f"viz-{name}-{prop}.png")
    spans = driver.find_elements(By.CSS_SELECTOR, "#text .ch")
    driver.execute_script("document.getElementById('text').scrollTop = 0")
    ActionChains(driver).move_to_element(spans[min(len(spans) - 1, 160)]).perform()
    time.sleep(0.3)
    small_png(driver.find_element("id", "viewer").screenshot_as_png, out / f"viz-{name}-tooltip.png")
    driver.execute_script("document.getElementById('tip').hidden = true")
    shoot(driver, "ranking", out / f"viz-{name}-ranking.png")
    shoot(driver, "saturation", out / f"viz-{name}-saturation.png")
    shoot(driver, "losses", out / f"viz-{name}-losses.png")


def serve(driver, run: str, prime: str, out: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    proc = subprocess.Popen([sys.executable, "-m", "rnnlab", "serve", run, "--port", "0"], stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        url = line.split()[2]
        driver.get(url)
        wait_for(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"), what="the app")
        for field, value in (("prime", prime), ("length", "360"), ("seed", "7")):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        Select(driver.find_element(By.ID, "cps")).select_by_value("0")
        driver.find_element(By.ID, "generate").click()
        wait_for(driver, lambda d: "characters in" in d.find_element(By.ID, "status").text, what="the sample")
        shoot(driver, "panel-sample", out / "serve-sample.png")
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", nargs=4, action="append", default=[], metavar=("NAME", "RUN", "TEXT", "PROPS"))
    ap.add_argument("--serve", nargs=2, metavar=("RUN", "PRIME"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures"))
    ap.add_argument("--chars", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with chromium(1100, 860) as driver:
        for name, run, text, props in args.report:
            report(driver, name, run, text, props.split(","), out, args.chars, args.seed)
        if args.serve:
            serve(driver, args.serve[0], args.serve[1], out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
