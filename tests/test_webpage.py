"""The web pages in a real browser: headless Chromium uploads a generated file and we read the tags it
shows; the API docs (/docs, /redoc) render and work with the network cut off, with and without API_KEY.

Needs Debian's ``chromium`` and ``chromium-driver`` (.ci/run installs them). On a
developer machine without them the tests are skipped; under CI (CI=true) their
absence is a failure, so the check cannot silently disappear.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import httpx
import numpy as np
import pytest
import soundfile as sf
import timm
import torch

import audio_dcls.models  # noqa: F401
from audio_dcls.checkpoint import save_release
from audio_dcls.features import LogMelConfig
from audio_dcls.labels import audioset_vocabulary
from service.server import BackgroundServer
from service.settings import Settings

CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")


def _need_browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        message = f"headless browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


API_KEY = "docs-test-key"
# The network cut off for everything but this machine: no host name resolves but 127.0.0.1, and any
# request that is not for the loopback goes to a proxy on a port nothing listens on.
OFFLINE_FLAGS = ("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1", "--proxy-server=http://127.0.0.1:9")


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    torch.manual_seed(1)
    args = dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1])
    model = timm.create_model("convnext_atto_dcls_audio", **args)
    vocab = audioset_vocabulary()
    save_release(root / "web-convnext", model, "convnext_atto_dcls_audio", dict(args, num_classes=527), LogMelConfig(), list(zip(vocab.mids, vocab.display_names)), "audioset-527", {})
    return root


@pytest.fixture(scope="module")
def server(releases):
    with BackgroundServer(Settings(models_dir=releases, torch_threads=1)) as s:
        yield s


@pytest.fixture(scope="module")
def keyed_server(releases):
    with BackgroundServer(Settings(models_dir=releases, torch_threads=1, api_key=API_KEY)) as s:
        yield s


@contextlib.contextmanager
def chromium(*extra_flags):
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        *extra_flags,
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture()
def browser():
    with chromium() as driver:
        yield driver


# Records, from before any page script runs, each request a page's Content-Security-Policy refused.
_RECORD_CSP_BLOCKS = "window.__csp_blocked = []; document.addEventListener('securitypolicyviolation', e => window.__csp_blocked.push(e.blockedURI));"


@pytest.fixture()
def offline_browser():
    with chromium(*OFFLINE_FLAGS) as driver:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _RECORD_CSP_BLOCKS})
        yield driver


def _clip_file(path, seconds=13.0, sr=22050):
    t = np.arange(int(seconds * sr)) / sr
    y = 0.4 * np.sin(2 * np.pi * 330 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t)) + 0.05 * np.random.default_rng(0).standard_normal(t.shape)
    sf.write(path, y.astype(np.float32), sr, format="FLAC")
    return path


def test_upload_in_chromium_shows_the_tags(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    audio = _clip_file(tmp_path / "street.flac")
    expected = httpx.post(
        server.url + "/v1/tag", files={"file": ("street.flac", audio.read_bytes())}, data={"top_k": "5"}, timeout=60
    ).json()

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "ready")
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#model-select option")]
    assert options == ["web-convnext"]

    top_k = browser.find_element(By.ID, "top-k")
    top_k.clear()
    top_k.send_keys("5")
    browser.find_element(By.ID, "file-input").send_keys(str(audio))
    wait.until(EC.element_to_be_clickable((By.ID, "submit"))).click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tags li.tag")) == 5)

    rows = browser.find_elements(By.CSS_SELECTOR, "#tags li.tag")
    shown = [(r.find_element(By.CLASS_NAME, "tag-name").text, r.get_attribute("data-mid"), float(r.find_element(By.CLASS_NAME, "tag-score").text)) for r in rows]
    assert [s[0] for s in shown] == [t["name"] for t in expected["tags"]]
    assert [s[1] for s in shown] == [t["mid"] for t in expected["tags"]]
    for (_, _, score), t in zip(shown, expected["tags"]):
        assert score == pytest.approx(t["score"], abs=6e-4)  # shown with 3 decimals
    # Bars are as long as the scores.
    widths = [browser.execute_script("return arguments[0].style.width", r.find_element(By.CLASS_NAME, "bar")) for r in rows]
    for width, t in zip(widths, expected["tags"]):
        assert width.endswith("%") and float(width[:-1]) == pytest.approx(t["score"] * 100, abs=0.06)

    # The timeline: one row per window with its time range and best tags.
    windows = browser.find_elements(By.CSS_SELECTOR, "#timeline .window")
    assert len(windows) == expected["num_windows"] == 2
    assert windows[1].find_element(By.CLASS_NAME, "window-time").text == "0:03.0–0:13.0"  # the last window ends at the end
    first_window_tags = [e.text for e in windows[0].find_elements(By.CSS_SELECTOR, ".window-tag .tag-name")]
    assert first_window_tags == [t["name"] for t in expected["windows"][0]["tags"][:3]]
    assert "street.flac" in browser.find_element(By.ID, "summary").text

    # A file that is not audio: the page shows the server's message, not a crash.
    bogus = tmp_path / "notes.wav"
    bogus.write_text("not audio\n" * 50)
    browser.find_element(By.ID, "file-input").send_keys(str(bogus))
    wait.until(EC.element_to_be_clickable((By.ID, "submit"))).click()
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "415" in browser.find_element(By.ID, "error").text


# --- the API docs, offline --------------------------------------------------------------------------
def _assert_network_is_off(driver, origin: str):
    """From a page of the service without a content policy: the outside is really out of reach."""
    driver.get(origin + "/")
    probe = "const done = arguments[1]; fetch(arguments[0], {mode: 'no-cors'}).then(() => done('reached'), () => done('blocked'))"
    assert driver.execute_async_script(probe, origin + "/health/live") == "reached"
    for outside in ("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css", "http://93.184.216.34/"):
        assert driver.execute_async_script(probe, outside) == "blocked", outside


def _assert_loaded_only_from(driver, origin: str):
    """Every request the page made went to the service, but those its content policy stopped before
    they left the browser (ReDoc's bundle names a CDN image for its sidebar badge)."""
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    stopped = set(driver.execute_script("return window.__csp_blocked"))
    assert loaded and all(url.startswith(origin + "/") or url in stopped for url in loaded), (loaded, stopped)


@pytest.mark.parametrize("which", ["server", "keyed_server"])
def test_api_docs_render_offline(request, offline_browser, which):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server = request.getfixturevalue(which)
    spec = httpx.get(server.url + "/openapi.json", timeout=30).json()  # no key needed, with or without API_KEY
    operations = {op["operationId"] for ops in spec["paths"].values() for op in ops.values()}
    driver, wait = offline_browser, WebDriverWait(offline_browser, 60)
    _assert_network_is_off(driver, server.url)

    driver.get(server.url + "/docs")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock")) == len(operations))
    shown = {e.get_attribute("id") for e in driver.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock")}
    assert {i.rsplit("-", 1)[1] for i in shown} == operations  # ids are operations-<tag>-<operationId>
    assert driver.find_element(By.CSS_SELECTOR, ".swagger-ui .auth-wrapper .authorize").is_displayed()
    locked = driver.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock .authorization__btn")
    assert len(locked) == len(operations) - 2  # all but /health/live and /health/ready
    _assert_loaded_only_from(driver, server.url)

    driver.get(server.url + "/redoc")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-section-id^='operation/']")) == len(operations))
    assert spec["info"]["title"] in driver.find_element(By.TAG_NAME, "h1").text
    _assert_loaded_only_from(driver, server.url)


def test_api_docs_try_it_out_with_the_key(keyed_server, offline_browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver, wait = offline_browser, WebDriverWait(offline_browser, 60)
    driver.get(keyed_server.url + "/docs")
    op = wait.until(lambda d: d.find_element(By.ID, "operations-models-list_models_v1_models_get"))
    op.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    status = ".live-responses-table tbody .response-col_status"
    body = ".live-responses-table tbody .response-col_description pre.microlight"

    def execute_and_read(expected: str) -> str:
        wait.until(lambda d: op.find_element(By.CSS_SELECTOR, "button.execute")).click()
        wait.until(lambda d: [e.text for e in op.find_elements(By.CSS_SELECTOR, status)] == [expected])
        return op.find_element(By.CSS_SELECTOR, body).text

    assert json.loads(execute_and_read("401"))["error"]["code"] == "unauthorized"  # the key is needed...
    driver.find_element(By.CSS_SELECTOR, ".swagger-ui .auth-wrapper .authorize").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".modal-ux input")).send_keys(API_KEY)
    driver.find_element(By.CSS_SELECTOR, ".modal-ux button.authorize").click()
    driver.find_element(By.CSS_SELECTOR, ".modal-ux button.btn-done").click()
    listing = json.loads(execute_and_read("200"))  # ...and Authorize gives it to every call
    assert listing["default"] == "web-convnext" and [m["name"] for m in listing["models"]] == ["web-convnext"]
    assert f"Authorization: Bearer {API_KEY}" in op.find_element(By.CSS_SELECTOR, ".curl-command").text
