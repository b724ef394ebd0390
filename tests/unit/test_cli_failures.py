"""The CLI on a bad day, run as a user runs it (a subprocess): a model that cannot start ends `serve` with status 2
and one line naming the model and the reason; user errors are one line with status 2 and no traceback, except with
--debug; a supervised child that crashes after start-up is restarted and the server stays up."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from spcs_llm.server.health import wait_healthy

ROOT = Path(__file__).resolve().parents[2]
STANDIN = str(ROOT / "tests" / "standin_vllm.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SPCS_LLM_API_KEY", "SPCS_LLM_DEBUG")}
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def cli(*argv: str, timeout: float = 120, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``spcs-llm argv`` and return the finished process and the seconds it took to exit."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "spcs_llm", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(**env),
        cwd=ROOT,
    )
    return proc, time.monotonic() - start


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("spcs-llm"), proc.stderr
    for needle in needles:
        assert needle in last, last
    return last


def test_serve_a_model_file_that_is_not_gguf_exits_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(os.urandom(4096))
    proc, _ = cli("serve", "--model", str(broken), "--port", str(_free_port()))
    assert_one_line_error(proc, "cannot start the llamacpp engine", str(broken), "not a GGUF file")


def test_serve_a_truncated_gguf_exits_2(tmp_path: Path) -> None:
    """GGUF magic but nothing after it: llama.cpp itself refuses it, and the process still ends."""
    broken = tmp_path / "truncated.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    proc, _ = cli("serve", "--model", str(broken), "--port", str(_free_port()))
    assert_one_line_error(proc, str(broken), "llama.cpp could not load")


def test_serve_a_missing_model_exits_2() -> None:
    proc, _ = cli("serve", "--model", "/no/such.gguf", "--port", str(_free_port()))
    assert_one_line_error(proc, "/no/such.gguf", "no such GGUF file")


def test_serve_an_unreachable_upstream_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "up.toml"
    config.write_text(
        f'[server]\nport = {_free_port()}\n[engine]\nkind = "openai"\n'
        f'upstream = "http://127.0.0.1:{_free_port()}/v1"\nstartup_timeout_s = 1\n'
    )
    proc, _ = cli("serve", "--config", str(config))
    assert_one_line_error(proc, "openai engine", "not ready after 1s")


def test_a_vllm_child_that_fails_at_start_ends_serve(tmp_path: Path) -> None:
    model = tmp_path / "Qwen2.5-7B-Instruct"
    model.mkdir()
    (model / "config.json").write_text("{}")
    proc, _ = cli(
        "serve",
        "--engine",
        "vllm",
        "--model",
        str(model),
        "--port",
        str(_free_port()),
        "--vllm-command",
        f"{sys.executable} {STANDIN}",
        "--gpus",
        "1",
        STANDIN_FAIL="1",
    )
    assert_one_line_error(proc, "vllm engine", str(model))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["serve", "--config", "/no/such.toml"], "cannot read config /no/such.toml"),
        (["serve", "--engine", "fake", "--port", "70000"], "server.port"),
        (["serve", "--engine", "fake", "--host", "0.0.0.0"], "without an API key"),
        (["deploy", "--config", "/no/such.toml"], "/no/such.toml"),
        (["status", "--config", "/no/such.toml"], "/no/such.toml"),
        (["models", "info", "no-such-model"], 'unknown model "no-such-model"'),
    ],
)
def test_user_errors_are_one_line_with_status_2(argv: list[str], needle: str) -> None:
    proc, _ = cli(*argv)
    assert_one_line_error(proc, needle)


def test_a_bad_config_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nbogus = 1\n")
    proc, _ = cli("serve", "--config", str(config))
    assert_one_line_error(proc, "server.bogus")


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        proc, _ = cli("serve", "--engine", "fake", "--port", str(s.getsockname()[1]))
    assert_one_line_error(proc, "cannot listen on 127.0.0.1")


def test_debug_shows_the_traceback() -> None:
    proc, _ = cli("serve", "--model", "/no/such.gguf", "--port", str(_free_port()), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_a_crashed_vllm_child_is_restarted_and_serve_stays_up(tmp_path: Path) -> None:
    model = tmp_path / "Qwen2.5-7B-Instruct"
    model.mkdir()
    (model / "config.json").write_text("{}")
    record = tmp_path / "launches.jsonl"
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "spcs_llm",
        "serve",
        "--engine",
        "vllm",
        "--model",
        str(model),
        "--port",
        str(port),
        "--vllm-command",
        f"{sys.executable} {STANDIN}",
        "--gpus",
        "1",
    ]
    server = subprocess.Popen(
        cmd, env=_env(STANDIN_RECORD=str(record)), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_healthy(base, 60, lambda: server.poll() is None)
        first = json.loads(record.read_text().splitlines()[0])["pid"]
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(record.read_text().splitlines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert wait_healthy(base, 60, lambda: server.poll() is None)
        assert server.poll() is None  # the crash after start-up did not end the server
        assert len(record.read_text().splitlines()) == 2  # it was restarted once
        r = httpx.post(f"{base}/functions/complete", json={"data": [[0, "qwen2.5-7b-instruct", "hi"]]}, timeout=30)
        assert r.status_code == 200 and r.json()["data"][0][0] == 0
    finally:
        server.terminate()
        server.wait(timeout=60)
