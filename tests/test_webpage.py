"""The web page in a real browser: headless Chromium uploads a generated file and we read the tags it shows.

Needs Debian's ``chromium`` and ``chromium-driver`` (.ci/run installs them). On a
developer machine without them the test is skipped; under CI (CI=true) their
absence is a failure, so the check cannot silently disappear.
"""
from __future__ import annotations

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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("releases")
    torch.manual_seed(1)
    args = dict(dims=[16, 32, 64, 128], depths=[1, 1, 1, 1])
    model = timm.create_model("convnext_atto_dcls_audio", **args)
    vocab = audioset_vocabulary()
    save_release(root / "web-convnext", model, "convnext_atto_dcls_audio", dict(args, num_classes=527), LogMelConfig(), list(zip(vocab.mids, vocab.display_names)), "audioset-527", {})
    with BackgroundServer(Settings(models_dir=root, torch_threads=1)) as s:
        yield s


@pytest.fixture()
def browser():
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
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


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
    assert windows[1].find_element(By.CLASS_NAME, "window-time").text == "0:05.0–0:13.0"
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
