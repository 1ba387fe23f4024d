"""The web pages in a real browser: headless Chromium uploads generated files and we read what it shows
at 1280x900 and 390x844 (tags, bars, the heat map's pixels, the player it seeks, errors, a wrong key);
the API docs (/docs, /redoc) render and work with the network cut off, with and without API_KEY.
Screenshots of the page are saved under the pytest temp dir (<basetemp>/screenshots).

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
        # a failure, never a skip: the page is part of the product (.ci/run installs both)
        pytest.fail(f"headless browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)")


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
    training = {"epochs": 1, "populated_classes": [0, 1, 74]}  # as pipelines.train records them
    save_release(root / "web-convnext", model, "convnext_atto_dcls_audio", dict(args, num_classes=527), LogMelConfig(), list(zip(vocab.mids, vocab.display_names)), "audioset-527", training)
    return root


@pytest.fixture(scope="module")
def server(releases):
    with BackgroundServer(Settings(models_dir=releases, torch_threads=1)) as s:
        yield s


@pytest.fixture(scope="module")
def keyed_server(releases):
    with BackgroundServer(Settings(models_dir=releases, torch_threads=1, api_key=API_KEY, max_upload_bytes=1024 * 1024)) as s:
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


def _song_file(path, seconds=420.0, sr=8000):
    """Seven minutes whose sound changes every 10 s (tones, noise, silence): the windows score differently."""
    rng = np.random.default_rng(1)
    parts = []
    for k in range(int(seconds // 10)):
        t = np.arange(10 * sr) / sr
        kind = k % 3
        if kind == 0:
            parts.append(0.4 * np.sin(2 * np.pi * (200 + 40 * k) * t))
        elif kind == 1:
            parts.append(0.3 * rng.standard_normal(t.shape))
        else:
            parts.append(0.002 * rng.standard_normal(t.shape))
    sf.write(path, np.concatenate(parts).astype(np.float32), sr, format="FLAC")
    return path


SIZES = [(1280, 900), (390, 844)]


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    folder = tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(exist_ok=True)
    return folder


def _viewport(driver, width, height):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})


def _screenshot(driver, path):
    """The whole page, below the fold too."""
    import base64

    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(shot["data"]))


def _open_page(driver, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server.url + "/")
    wait = WebDriverWait(driver, 120)
    wait.until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "ready")
    wait.until(lambda d: d.find_element(By.ID, "limits").text)  # GET /v1/limits has answered
    return wait


def _no_horizontal_overflow(driver):
    widths = driver.execute_script("const e = document.documentElement; return [e.scrollWidth, e.clientWidth, document.body.scrollWidth]")
    assert widths[0] <= widths[1] and widths[2] <= widths[1], widths


_PIXEL = """
const [canvas, x, y] = arguments;
const dpr = canvas.width / canvas.getBoundingClientRect().width;
const p = canvas.getContext('2d').getImageData(Math.floor(x * dpr), Math.floor(y * dpr), 1, 1).data;
return p[0] + p[1] + p[2];
"""


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_page_at_desktop_and_phone_sizes(server, browser, tmp_path, screenshots, size):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    song = _song_file(tmp_path / "song.flac")
    expected = httpx.post(server.url + "/v1/tag", files={"file": ("song.flac", song.read_bytes())}, data={"top_k": "6"}, timeout=120).json()
    assert expected["num_windows"] == 83  # 420 s, 10 s windows every 5 s
    _viewport(browser, *size)
    wait = _open_page(browser, server)
    assert browser.find_element(By.ID, "hop-s").get_attribute("value") == ""  # the server's default applies
    top_k = browser.find_element(By.ID, "top-k")
    top_k.clear()
    top_k.send_keys("6")
    browser.find_element(By.ID, "file-input").send_keys(str(song))
    browser.find_element(By.ID, "submit").click()
    article = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#results .result"))
    rows = article.find_elements(By.CSS_SELECTOR, ".tags li.tag")
    assert [r.find_element(By.CLASS_NAME, "tag-name").get_attribute("textContent") for r in rows] == [t["name"] for t in expected["tags"]]
    for r, t in zip(rows, expected["tags"]):
        assert float(r.find_element(By.CLASS_NAME, "tag-score").text) == pytest.approx(t["score"], abs=6e-4)
        bar, track = r.find_element(By.CLASS_NAME, "bar").rect["width"], r.find_element(By.CLASS_NAME, "bar-track").rect["width"]
        assert bar > 0 and bar == pytest.approx(t["score"] * track, abs=1.5)  # visible, and as long as the score
    _no_horizontal_overflow(browser)

    # The heat map: one column per window, one row per top tag, darker where the window scores higher.
    canvas = article.find_element(By.CLASS_NAME, "heatmap-canvas")
    assert canvas.get_attribute("data-columns") == "83" and canvas.get_attribute("data-rows") == "6"
    box = canvas.rect
    assert box["width"] > 150 and box["height"] == 6 * 20
    centres = [(w["start_s"] + min(w["start_s"] + 5, expected["duration_s"])) / 2 / expected["duration_s"] * box["width"] for w in expected["windows"]]
    for row in (0, 3):
        scores = [w["tag_scores"][row] for w in expected["windows"]]
        bright = [browser.execute_script(_PIXEL, canvas, x, row * 20 + 10) for x in centres]
        for i in range(83):
            for j in range(83):
                if scores[i] > scores[j] + 0.01:
                    assert bright[i] < bright[j], (row, i, j, scores[i], scores[j])
    ticks = [e.get_attribute("textContent") for e in article.find_elements(By.CSS_SELECTOR, ".heatmap-axis .tick")]
    assert ticks[0] == "0:00" and len(ticks) >= 3 and all(t.count(":") == 1 for t in ticks), ticks

    # Point at a cell: its exact score; click the map: the player seeks there and the playhead follows.
    player = article.find_element(By.CLASS_NAME, "player")
    wait.until(lambda d: d.execute_script("return arguments[0].readyState", player) >= 1)
    target = 212.5  # the middle of the window that starts at 3:30
    dx = (target / expected["duration_s"] - 0.5) * box["width"]
    ActionChains(browser).move_to_element_with_offset(canvas, dx, -box["height"] / 2 + 10).click().perform()  # top row
    tip = article.find_element(By.CLASS_NAME, "heatmap-tip")
    shown = next(w for w in expected["windows"] if w["start_s"] == 210.0)
    assert tip.is_displayed() and tip.text == f"{expected['tags'][0]['name']}: {shown['tag_scores'][0]:.3f} at 3:30.0–3:40.0"
    seconds_per_pixel = expected["duration_s"] / box["width"]
    assert browser.execute_script("return arguments[0].currentTime", player) == pytest.approx(target, abs=2 * seconds_per_pixel)
    playhead = article.find_element(By.CLASS_NAME, "playhead")
    assert playhead.rect["x"] + 1 == pytest.approx(box["x"] + target / expected["duration_s"] * box["width"], abs=2)
    _no_horizontal_overflow(browser)
    _screenshot(browser, screenshots / f"page-{size[0]}x{size[1]}.png")


def _batch_requests(server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith('audio_dcls_http_requests_total{method="POST",route="/v1/tag/batch"'))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_several_files_then_an_error_then_a_drop(server, browser, tmp_path, screenshots, size):
    from selenium.webdriver.common.by import By

    a, b = _clip_file(tmp_path / "street.flac"), _clip_file(tmp_path / "short.flac", seconds=4.0)
    bogus = tmp_path / "notes.wav"
    bogus.write_text("not audio\n" * 50)
    _viewport(browser, *size)
    wait = _open_page(browser, server)
    # What the model knows: its label count, and the classes its training data populated.
    info = browser.find_element(By.ID, "model-info")
    info.find_element(By.TAG_NAME, "summary").click()
    assert "527 labels (audioset-527)" in browser.find_element(By.ID, "model-summary").text
    assert browser.find_element(By.ID, "model-classes-title").text == "Its training data had positive clips for 3 of them:"
    assert [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#model-classes li")] == ["Speech", "Male speech, man speaking", "Dog"]
    assert browser.find_element(By.ID, "labels-link").get_attribute("href").endswith("/v1/labels?model=web-convnext")
    # The hidden input is no Tab stop of its own; the drop zone is, and the status and results are announced.
    assert browser.execute_script("return [document.getElementById('file-input').tabIndex, document.getElementById('drop-zone').tabIndex]") == [-1, 0]
    assert browser.find_element(By.ID, "status").get_attribute("aria-live") == "polite"
    assert browser.find_element(By.ID, "results").get_attribute("aria-live") == "polite"

    window = browser.find_element(By.ID, "window-s")
    window.clear()
    window.send_keys("8")
    batches = _batch_requests(server)
    browser.find_element(By.ID, "file-input").send_keys("\n".join(str(p) for p in (a, bogus, b)))
    assert browser.find_element(By.ID, "file-name").text.startswith("3 files: street.flac")
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == 3)
    assert _batch_requests(server) == batches + 1  # one request for the three files
    articles = browser.find_elements(By.CSS_SELECTOR, "#results .result")
    assert [x.find_element(By.CLASS_NAME, "result-title").text for x in articles] == ["street.flac", "notes.wav", "short.flac"]
    assert "failed" in articles[1].get_attribute("class") and "(415 unsupported_media_type)" in articles[1].text
    for article, seconds in ((articles[0], 13.0), (articles[2], 4.0)):
        assert len(article.find_elements(By.CSS_SELECTOR, ".tags li.tag")) == 10
        assert "every 4 s" in article.find_element(By.CLASS_NAME, "summary").text  # hop left empty: window / 2
        windows = 1 + max(0, -(-(seconds - 8) // 4))
        assert article.find_element(By.CLASS_NAME, "heatmap-canvas").get_attribute("data-columns") == str(int(windows))
    for article in articles:
        assert all(bar.rect["width"] > 0 for bar in article.find_elements(By.CSS_SELECTOR, ".tags .bar"))
    _no_horizontal_overflow(browser)
    _screenshot(browser, screenshots / f"several-files-{size[0]}x{size[1]}.png")

    # A new request dims the old results; an error clears them and says what went wrong.
    chooser = browser.find_element(By.ID, "file-input")
    browser.execute_script("arguments[0].value = ''", chooser)  # chromedriver adds to a multiple input's files otherwise
    chooser.send_keys(str(bogus))
    assert browser.find_element(By.ID, "file-name").text == "notes.wav (500 bytes)"
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "(415 unsupported_media_type)" in browser.find_element(By.ID, "error").text
    assert browser.find_elements(By.CSS_SELECTOR, "#results .result") == []
    _no_horizontal_overflow(browser)
    _screenshot(browser, screenshots / f"error-{size[0]}x{size[1]}.png")

    # A file dropped anywhere on the page is taken, and the page stays where it is.
    url = browser.current_url
    prevented = browser.execute_script(
        "const dt = new DataTransfer(); dt.items.add(new File([new Uint8Array(2048)], 'dropped.wav'));"
        "const e = new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true});"
        "document.querySelector('footer').dispatchEvent(e); return e.defaultPrevented;"
    )
    assert prevented and browser.current_url == url
    assert browser.find_element(By.ID, "file-name").text == "dropped.wav (2 KiB)"


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_wrong_key_and_a_file_over_the_limit(keyed_server, browser, tmp_path, screenshots, size):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    auth = {"Authorization": f"Bearer {API_KEY}"}
    _viewport(browser, *size)
    browser.get(keyed_server.url + "/")
    wait = WebDriverWait(browser, 60)
    status = browser.find_element(By.ID, "status")
    wait.until(lambda d: status.get_attribute("data-state") == "error")
    assert status.text == "This server needs an API key: enter it in the API key field."
    key = browser.find_element(By.ID, "api-key")
    key.send_keys("not-the-key", Keys.TAB)
    wait.until(lambda d: "wrong" in status.text)
    assert status.text.startswith("The API key is wrong")
    _no_horizontal_overflow(browser)
    _screenshot(browser, screenshots / f"wrong-key-{size[0]}x{size[1]}.png")
    key.clear()
    key.send_keys(API_KEY, Keys.TAB)
    wait.until(lambda d: status.get_attribute("data-state") == "ready" and d.find_element(By.ID, "limits").text)
    assert "files up to 1 MiB" in browser.find_element(By.ID, "limits").text  # from GET /v1/limits, not the page

    def tag_requests():
        text = httpx.get(keyed_server.url + "/metrics", headers=auth, timeout=30).text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith('audio_dcls_http_requests_total{method="POST",route="/v1/tag"'))

    before = tag_requests()
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * (3 * 1024 * 1024 // 2))
    browser.find_element(By.ID, "file-input").send_keys(str(big))
    browser.find_element(By.ID, "submit").click()
    error = browser.find_element(By.ID, "error")
    assert error.text == "big.wav is 1.5 MiB; the server takes files up to 1 MiB. Nothing was uploaded."
    assert tag_requests() == before  # refused in the page, before any upload
    _no_horizontal_overflow(browser)


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
