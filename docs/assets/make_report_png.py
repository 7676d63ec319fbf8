"""Redraw docs/assets/report.png: the first table and the ROC chart of the report of a miniature `imagenet` benchmark
(generated images, the tiny random-weight test model, so the numbers are near chance), as headless
Chromium shows it. Run from the repository root: ``python docs/assets/make_report_png.py``
(needs the test extra and chromium with chromium-driver)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    from selenium import webdriver

    from fixtures_models import save_tiny_openclip
    from negspace.bench.miniature import write_miniature
    from negspace.bench.suites import load_suite
    from negspace.cli import main as negspace

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        model = save_tiny_openclip(tmp / "model")
        data = write_miniature(load_suite("imagenet"), tmp / "data", per_set=24)
        code = negspace(
            [
                "bench",
                "--suite",
                "imagenet",
                "--data-root",
                str(data),
                "--method",
                "mcm,neglabel,tanl,adaneg",
                "--no-count-check",
                "--batch-size",
                "16",
                "--model",
                model.spec,
                "--weights",
                str(model.weights),
                "--out",
                str(tmp / "out"),
                "-q",
            ]
        )
        assert code == 0, code
        if len(sys.argv) > 1:  # keep the report to look at
            shutil.copy(tmp / "out" / "report.html", sys.argv[1])
        options = webdriver.ChromeOptions()
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
        try:
            driver.set_window_size(1100, 1000)
            driver.get((tmp / "out" / "report.html").as_uri())
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1100, min(height + 100, 12000))
            # the first results table (from its heading) and the first chart (the ROC curves)
            table = driver.execute_script(
                "const t = document.querySelector('table.cmp');"
                "const top = Array.from(document.querySelectorAll('h2')).find(e => e.innerText.startsWith('ID:'));"
                "const a = (top || t).getBoundingClientRect(), b = t.getBoundingClientRect();"
                "return [a.top + window.scrollY, b.bottom + window.scrollY];"
            )
            chart = driver.execute_script(
                "const f = document.querySelector('img.fig'); const r = f.getBoundingClientRect();"
                "return [r.top + window.scrollY - 6, r.bottom + window.scrollY + 10];"
            )
            shot = tmp / "report.png"
            shot.write_bytes(driver.get_screenshot_as_png())
        finally:
            driver.quit()
        page = Image.open(shot).convert("RGB")
        parts = [page.crop((0, int(top), page.width, int(bottom))) for top, bottom in (table, chart)]
        image = Image.new("RGB", (page.width, sum(p.height for p in parts)), "white")
        image.paste(parts[0], (0, 0))
        image.paste(parts[1], (0, parts[0].height))
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
        image.quantize(colors=128).save(ROOT / "docs" / "assets" / "report.png", optimize=True)


if __name__ == "__main__":
    main()
