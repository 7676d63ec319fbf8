"""The live page of ``negspace serve`` in headless Chromium: it renders its charts from the
server's data, shows the adaptive state, loads nothing from outside and logs no console error."""

from __future__ import annotations

import time

import httpx
import numpy as np

from external_tools import headless_chromium
from negspace import AdaNeg
from negspace.serve import ServeConfig, create_app
from negspace.serve.metrics import ServeMetrics
from negspace.serve.page import PAGE
from negspace.testing import make_world
from serve_support import thread_server

# How much ink each canvas holds (non-transparent pixels), and what the page says.
_INKED = """
return Array.from(document.querySelectorAll('canvas')).map(c => {
  const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let inked = 0;
  for (let i = 3; i < data.length; i += 4) { if (data[i] > 0) inked++; }
  return [c.id, inked, c.getBoundingClientRect().width];
});
"""


def test_the_live_page_renders_the_traffic_and_the_adaptive_state_in_a_realheadless_chromium():
    world = make_world(dim=32, n_classes=6, n_corpus=300, n_per_class=8, n_per_concept=12, seed=3)
    _, negatives = world.negatives(120)
    detector = AdaNeg.from_features(world.id_text_features, negatives, groups=4)
    app = create_app(ServeConfig(threshold=1.0, adapt="sync", max_wait_ms=1), detector)
    features = np.concatenate([world.id_image_features, world.far_ood_features])
    assert "http" not in PAGE.replace("http-equiv", "")  # no external asset: nothing fetched from elsewhere
    with thread_server(app) as url:
        for start in range(0, len(features), 16):
            httpx.post(f"{url}/v1/score/features", json={"features": features[start : start + 16].tolist()}, timeout=60)
        driver = headless_chromium()
        try:
            driver.set_window_size(1200, 1000)
            driver.get(url + "/")
            for _ in range(100):  # the first refresh fills the cards
                if driver.execute_script("return document.getElementById('n').textContent") != "-":
                    break
                time.sleep(0.1)
            count = driver.execute_script("return document.getElementById('n').textContent")
            adaptive_shown = driver.execute_script("return document.getElementById('adaptive').style.display")
            state_rows = driver.execute_script("return document.querySelectorAll('#state tr').length")
            canvases = driver.execute_script(_INKED)
            errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
            images = driver.execute_script("return document.querySelectorAll('img').length")
        finally:
            driver.quit()
    assert errors == []
    assert count == str(len(features))
    assert adaptive_shown == "block" and state_rows >= 1
    assert {c[0] for c in canvases} == {"c_share", "c_lat", "c_state"}
    assert all(inked > 500 and width > 0 for _, inked, width in canvases), canvases  # lines and axes drawn
    assert images == 0  # the page shows no image, let alone a request's


def test_the_pages_history_shows_the_open_second_at_once_and_keeps_it_once_closed():
    metrics = ServeMetrics(max_batch=4, state=dict)
    metrics.scored([True, False, False, False])
    point = metrics.summary()["history"][-1]
    assert (point["images"], point["ood_share"]) == (4, 0.25)  # no second's wait before the page shows it
    second = point["t"]
    while int(time.time()) == second:  # into the next second: the first point closes
        time.sleep(0.02)
    metrics.scored([True])
    history = metrics.summary()["history"]
    assert len(history) == 2 and history[1]["t"] > second
    assert [(p["images"], p["ood_share"]) for p in history] == [(4, 0.25), (1, 1.0)] and history[0]["t"] == second
