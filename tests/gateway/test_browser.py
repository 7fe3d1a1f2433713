"""The web page in a real headless Chromium (Debian's ``chromium``, driven by Playwright; no browser download):
the page loads, a TTS request streams and plays to its end, a push-to-talk chat turn recorded from a fake
microphone (a wav file) returns a transcript, reply text and reply audio. A screenshot is kept in
``build/test-artifacts/``."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import soundfile

from stepaudio.decoder.token2wav import mel_frames_for_tokens
from stepaudio.testing.voices import synthetic_voice
from stepaudio_server.launcher import PROJECT_ROOT
from tests.gateway.helpers import API_KEY, TOKENS

pytestmark = pytest.mark.server
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = PROJECT_ROOT / "build" / "test-artifacts"


def chromium() -> str:
    """The system browser; installed from Debian's packages when missing and this user may (CI as root)."""
    if not os.path.exists(CHROMIUM) and os.geteuid() == 0 and shutil.which("apt-get"):
        for command in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "chromium"]):  # a fresh image may need its lists first
            subprocess.run(command, capture_output=True, timeout=900)
            if os.path.exists(CHROMIUM):
                break
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium package (apt-get install chromium) to run the browser test")
    return CHROMIUM


@pytest.fixture
def page(gateway, tmp_path):
    from playwright.sync_api import sync_playwright

    microphone = tmp_path / "microphone.wav"
    soundfile.write(microphone, synthetic_voice(2.5, seed=9, sample_rate=48000), 48000)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone}", "--autoplay-policy=no-user-gesture-required"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True, args=args)
        try:
            context = browser.new_context()
            context.grant_permissions(["microphone"], origin=gateway.url)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(gateway.url + "/")
            yield page
            assert not errors, f"JavaScript errors: {errors}"
        finally:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            if "page" in locals():
                page.screenshot(path=str(ARTIFACTS / "gateway_page.png"), full_page=True)
            browser.close()


def test_page_streams_speech_and_holds_a_spoken_chat_turn(page):
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.querySelectorAll('#tts-voice option').length > 0")
    assert "Tingting" in page.inner_text("#tts-voice")

    page.click("#tts-play")
    page.wait_for_selector("#tts-status[data-state=ended]", timeout=120_000)
    status = page.locator("#tts-status")
    # s16 audio of n generated ids; the page sends no seed, so the tiny model may sample the stop id before TOKENS.
    received = int(status.get_attribute("data-bytes"))
    assert received in {2 * 256 * mel_frames_for_tokens(n) for n in range(1, TOKENS + 1)} and received > 0, received
    assert int(status.get_attribute("data-first-ms")) > 0
    assert "ended" in status.inner_text()

    talk = page.locator("#talk")
    talk.hover()
    page.mouse.down()
    page.wait_for_selector("#chat-status[data-state=recording]")
    page.wait_for_timeout(2000)  # speak into the fake microphone
    page.mouse.up()
    page.wait_for_selector("#chat-status[data-state=ended]", timeout=180_000)
    chat = page.locator("#chat-status")
    assert chat.get_attribute("data-reply") and chat.get_attribute("data-transcript")
    assert int(chat.get_attribute("data-bytes")) > 0
    assert page.inner_text("#chat-log").count("Assistant:") == 1
