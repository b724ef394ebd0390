"""The Streamlit app in a real browser: ``streamlit run`` + the live server with the real packaged model, driven
by Debian's headless Chromium through playwright (never ``playwright install``: no browser downloads).

.ci/run installs chromium when it is missing; the test skips only where /usr/bin/chromium is absent.
A screenshot is left in tests/artifacts/ (or $SPCS_LLM_TEST_ARTIFACTS).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import LiveServer, _free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("SPCS_LLM_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROMPT = "Name three colours."

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="/usr/bin/chromium is absent: run .ci/run or `apt-get install -y chromium` as root",
    ),
]


@pytest.fixture(scope="module")
def streamlit_url(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(REPO / "apps" / "streamlit_app.py"),
        "--server.headless",
        "true",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
    ]
    env = {**os.environ, "SPCS_LLM_URL": live_server.base_url}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).text == "ok":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        else:
            raise RuntimeError(f"streamlit did not start (exit code {proc.poll()}):\n{log_path.read_text()}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def test_chat_in_headless_chromium(streamlit_url: str, live_server: LiveServer) -> None:
    from playwright.sync_api import sync_playwright

    # What the server answers for this conversation with the app's defaults (first model, greedy, 512 tokens):
    # the app's streamed answer must be the same text. Digits are left out: markdown turns "1." into list items.
    model = httpx.get(f"{live_server.base_url}/v1/models").json()["data"][0]["id"]
    expected = httpx.post(
        f"{live_server.base_url}/v1/chat/completions",
        timeout=120,
        json={"model": model, "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "max_tokens": 512},
    ).json()["choices"][0]["message"]["content"]
    assert _words(expected), "the model gave an empty answer; nothing to look for in the page"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "streamlit_chat.png"
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            page.goto(streamlit_url)
            box = page.get_by_test_id("stChatInputTextArea")
            box.wait_for(timeout=60_000)
            box.fill(PROMPT)
            box.press("Enter")
            messages = page.get_by_test_id("stChatMessage")
            messages.nth(1).wait_for(timeout=60_000)
            page.wait_for_function(
                """expected => {
                const m = document.querySelectorAll('[data-testid="stChatMessage"]');
                return m.length >= 2 && m[1].innerText.toLowerCase().replace(/[^a-z]+/g, ' ').includes(expected);
            }""",
                arg=" ".join(_words(expected)),
                timeout=120_000,
            )
            question, answer = messages.nth(0).inner_text(), messages.nth(1).inner_text()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"screenshot: {shot}")
    assert PROMPT in question  # (the text before it is the avatar's icon name)
    assert " ".join(_words(expected)) in " ".join(_words(answer))
    assert shot.stat().st_size > 10_000


def test_http_backend_streams_the_real_model_in_pieces(live_server: LiveServer) -> None:
    """The app's chat path gets the answer token by token from llama.cpp, not in one piece."""
    sys.path.insert(0, str(REPO / "apps"))
    from spcs_llm_app.http_backend import HttpBackend

    backend = HttpBackend(live_server.base_url)
    pieces = list(
        backend.chat_stream(backend.models()[0], [{"role": "user", "content": PROMPT}], temperature=0, max_tokens=32)
    )
    assert len(pieces) > 1 and "".join(pieces).strip()
