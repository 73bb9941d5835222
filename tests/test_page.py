"""The try-it page at ``/`` in a real browser: Debian's Chromium driven by Playwright, against a
real ``s4seg serve`` (tritonserver + gateway) that wants an API key, with a real photo.

Screenshots land in test-artifacts/browser/ (listed at the end of the run). Without Chromium the
tests skip and say so; CI sets S4SEG_REQUIRE_BROWSER=1 so that it can never be that machine.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_helpers import Served, serving

from s4seg.export.repository import publish
from s4seg.export.requests import PublishRequest

CHROMIUM = Path(os.environ.get("S4SEG_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
KEY = "page-test-key"
# What the probe of our machines found Chromium needs here: no sandbox as root, and no
# background connections to a network that refuses them.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def real_photo() -> Path:
    """A photograph nobody here made: matplotlib's sample of Grace Hopper (512x600 JPEG)."""
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="module")
def browser() -> Iterator:
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (it is in the dev extras)"
    if reason is None and not CHROMIUM.is_file():
        reason = f"no Chromium at {CHROMIUM}: `apt-get install chromium` (.ci/run does)"
    if reason:
        if os.environ.get("S4SEG_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests required here: {reason}")
        pytest.skip(reason)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # this run's screenshots only
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def served(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("page")
    repo = root / "repo"
    publish(PublishRequest(tiny_export, repo), log=lambda *_: None)
    with serving(repo, root, S4SEG_API_KEY=KEY) as server:
        yield server


@pytest.fixture
def page(browser, served: Served):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.goto(served.url + "/")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Tab")  # the key is taken on change
    page.wait_for_selector("#model:text('model version 1')")
    yield page
    context.close()


def shoot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def api_json(served: Served, photo: Path, **params) -> dict:
    response = httpx.post(
        f"{served.url}/v1/segment",
        files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
        params={"format": "json", **params},
        headers={"X-API-Key": KEY},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def upload_and_wait(page, photo: Path) -> None:
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#results[data-state='done']", timeout=60_000)


def test_page_asks_for_the_key_the_server_needs(browser, served: Served) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(served.url + "/")
    page.wait_for_selector("#error:not([hidden])")
    assert "401" in page.inner_text("#error") and "X-API-Key" in page.inner_text("#error")
    assert "needed" in page.get_attribute("#key-box", "class")
    context.close()


def test_photo_overlay_and_legend_match_the_json_api(page, served: Served) -> None:
    photo = real_photo()
    upload_and_wait(page, photo)
    shoot(page, "laptop-photo")
    api = api_json(served, photo, tau=page.input_value("#tau"))
    width, height = api["width"], api["height"]
    assert (width, height) == (512, 600)

    # The legend lists exactly the classes the API reports, with their pixel shares.
    legend = page.locator("#legend li")
    names = legend.evaluate_all("items => items.map(li => li.dataset.class)")
    assert sorted(names) == sorted(c["name"] for c in api["classes"]) and names
    shares = dict(zip(names, legend.locator(".share").all_inner_texts(), strict=True))
    for cls in api["classes"]:
        assert shares[cls["name"]] == f"{100 * cls['pixels'] / (width * height):.1f}%"

    # The label map painted from the RLE masks has the API's pixel counts per class colour.
    painted = page.evaluate(
        """() => {
            const c = document.getElementById('labels-canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const counts = {};
            for (let i = 0; i < d.length; i += 4) {
                const k = d[i] + ',' + d[i + 1] + ',' + d[i + 2];
                counts[k] = (counts[k] || 0) + 1;
            }
            return {width: c.width, height: c.height, counts};
        }"""
    )
    palette = served_manifest(served)["palette"]
    expected = {",".join(map(str, palette[c["index"]])): c["pixels"] for c in api["classes"]}
    assert (painted["width"], painted["height"]) == (width, height)
    assert painted["counts"] == expected

    # The classifier's list marks exactly the suppressed classes.
    marked = page.locator("#probabilities li.suppressed").evaluate_all(
        "items => items.map(li => li.dataset.class)"
    )
    assert sorted(marked) == sorted(api["suppressed"])
    # The uncertainty map (calibrated at export) is drawn beside them, at the image's size.
    page.wait_for_function(
        "document.getElementById('uncertainty-canvas').dataset.painted === 'yes'"
    )
    drawn = page.evaluate(
        """() => {
            const c = document.getElementById('uncertainty-canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const seen = new Set();
            for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] + ',' + d[i + 1]);
            return {width: c.width, height: c.height, colours: seen.size};
        }"""
    )
    assert (drawn["width"], drawn["height"]) == (width, height) and drawn["colours"] > 1
    assert "model version 1" in page.inner_text("#model")
    assert " ms" in page.inner_text("#status")


def served_manifest(served: Served) -> dict:
    response = httpx.get(f"{served.url}/v1/models", headers={"X-API-Key": KEY}, timeout=30)
    return response.json()["manifest"]


def test_tau_slider_and_gate_switch_send_new_requests(page, served: Served) -> None:
    upload_and_wait(page, real_photo())
    with page.expect_request(lambda r: "/v1/segment" in r.url and "tau=0.5" in r.url) as sent:
        page.fill("#tau", "0.5")
    assert sent.value.method == "POST"
    page.wait_for_selector("#status:text('gated at tau 0.5')")
    shoot(page, "laptop-tau-0.5")
    with page.expect_request(lambda r: "/v1/segment" in r.url and "gate=false" in r.url):
        page.uncheck("#gate")
    page.wait_for_selector("#status:text('ungated')")
    assert page.locator("#probabilities li.suppressed").count() == 0


def test_a_bad_file_shows_the_servers_error(page, served: Served) -> None:
    html = b"<!doctype html><html><body>not a picture</body></html>"
    expected = httpx.post(
        f"{served.url}/v1/segment",
        files={"file": ("page.png", html, "image/png")},
        headers={"X-API-Key": KEY},
        timeout=60,
    )
    assert expected.status_code in (415, 422)
    page.set_input_files("#file", {"name": "page.png", "mimeType": "image/png", "buffer": html})
    page.wait_for_selector("#error:not([hidden])")
    shown = page.inner_text("#error")
    assert shown.startswith(str(expected.status_code))
    assert expected.json()["detail"] in shown
    assert page.get_attribute("#results", "data-state") == "error"
    shoot(page, "laptop-bad-file")


def test_phone_width_stacks_the_panels(browser, served: Served) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    page.goto(served.url + "/")
    page.fill("#api-key", KEY)
    page.press("#api-key", "Tab")
    upload_and_wait(page, real_photo())
    shoot(page, "phone-photo")
    boxes = [f.bounding_box() for f in page.locator("#results figure").all()]
    assert boxes[0]["y"] + boxes[0]["height"] <= boxes[1]["y"]  # one column
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scroll
    context.close()
