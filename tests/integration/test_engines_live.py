"""Real processes on loopback: one `spcs-llm serve --engine openai` in front of another spcs-llm (fake engine, and
the real packaged llama.cpp model), driven with the official openai SDK and Snowflake batches; and
`spcs-llm serve --engine vllm` supervising the stand-in `vllm serve` (crash -> /health 503 -> restart; SIGTERM)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from spcs_llm.server.health import wait_healthy

from ..conftest import post_batch_like_snowflake, sf_headers
from .conftest import LiveServer, _free_port

pytestmark = pytest.mark.integration
STANDIN = str(Path(__file__).resolve().parents[1] / "standin_vllm.py")


class Proc:
    def __init__(self, proc: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
        self.proc, self.base_url, self.log_path = proc, base_url, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def serve(tmp: Path, name: str, *args: str, env: dict[str, str] | None = None) -> Iterator[Proc]:
    """`python -m spcs_llm serve ARGS` on a free loopback port, healthy, stopped (SIGTERM) afterwards."""
    port = _free_port()
    log_path = tmp / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spcs_llm", "serve", "--port", str(port), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env or dict(os.environ),
        )
    running = Proc(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        if not wait_healthy(running.base_url, timeout_s=120, still_running=lambda: proc.poll() is None):
            raise RuntimeError(f"{name} not healthy (exit {proc.poll()}):\n{running.log()}")
        yield running
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def post_batch(base_url: str, fn: str, rows: list[list]) -> httpx.Response:
    body = orjson.dumps({"data": [[i, *r] for i, r in enumerate(rows)]})
    return post_batch_like_snowflake(f"{base_url}/functions/{fn}", body, sf_headers(), timeout=120)


@pytest.fixture(scope="module")
def fake_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc]]:
    tmp = tmp_path_factory.mktemp("chain")
    (tmp / "back.toml").write_text(
        '[engine]\nkind = "fake"\nmodel_name = "fake-model"\nctx_per_slot = 256\n'
        '[[embeddings]]\nkind = "fake"\nmodel_name = "fake-embed"\ndimension = 768\n'
    )
    with serve(tmp, "back", "--config", str(tmp / "back.toml")) as back:
        (tmp / "front.toml").write_text(
            f'[engine]\nkind = "openai"\nupstream = "{back.base_url}/v1"\nmodel = "fake-model"\n'
            f'[[embeddings]]\nkind = "openai"\nupstream = "{back.base_url}/v1"\nmodel = "fake-embed"\n'
            "dimension = 768\n"
        )
        with serve(tmp, "front", "--config", str(tmp / "front.toml")) as front:
            yield back, front


def sdk(proc: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proc.base_url}/v1", api_key="unused", max_retries=0)


def test_openai_sdk_through_the_front(fake_chain: tuple[Proc, Proc]) -> None:
    _, front = fake_chain
    client = sdk(front)
    out = client.chat.completions.create(
        model="llama3.1-8b",
        messages=[{"role": "user", "content": "one two"}],
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    assert out.model == "fake-model" and out.choices[0].message.content == "echo:one two"
    assert out.usage is not None and out.usage.completion_tokens == 2
    tokens = out.choices[0].logprobs.content  # type: ignore[union-attr]
    assert [t.token for t in tokens] == ["echo:one", "two"]
    assert [(a.token, a.logprob) for a in tokens[0].top_logprobs] == [("echo:one", -0.1), ("alt1", -2.0)]
    stream = client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "a b c"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo:a b c"
    emb = client.embeddings.create(model="snowflake-arctic-embed-m-v1.5", input=["hello world", "hello"])
    assert emb.model == "fake-embed" and [len(d.embedding) for d in emb.data] == [768, 768]
    assert {m.id for m in client.models.list()} >= {"fake-model", "llama3.1-8b"}
    assert httpx.post(f"{front.base_url}/tokenize", json={"prompt": "a b c"}).json() == {
        "count": 3,
        "max_model_len": 256,
    }


def test_snowflake_batch_through_the_front(fake_chain: tuple[Proc, Proc]) -> None:
    _, front = fake_chain
    rows = [["llama3.1-8b", "hello"], ["fake-model", None], ["mistral-7b", "w " * 300], ["nope", "x"]]
    # a context-length 400 from the upstream is Cortex's own message, naming the upstream's window
    r = post_batch(front.base_url, "complete", [rows[0], rows[2]])
    assert r.status_code == 400 and r.text == "max tokens of 256 exceeded"
    r = post_batch(front.base_url, "try_complete", rows)
    assert r.status_code == 200
    assert [v for _, v in r.json()["data"]] == ["echo:hello", None, None, None]
    ok = post_batch(front.base_url, "complete", [["llama3.1-8b", [{"role": "user", "content": "hi"}], {}]])
    out = json.loads(ok.json()["data"][0][1])
    assert out["choices"][0]["messages"] == "echo:hi" and out["model"] == "fake-model"


def test_upstream_down_is_503_and_health_says_so(tmp_path: Path) -> None:
    (tmp_path / "back.toml").write_text('[engine]\nkind = "fake"\nmodel_name = "fake-model"\n')
    with (
        serve(tmp_path, "back", "--config", str(tmp_path / "back.toml")) as back,
        serve(
            tmp_path, "front", "--engine", "openai", "--upstream", f"{back.base_url}/v1", "--model", "fake-model"
        ) as front,
    ):
        assert post_batch(front.base_url, "complete", [["fake-model", "hi"]]).status_code == 200
        back.proc.terminate()
        back.proc.wait(timeout=30)
        assert httpx.get(f"{front.base_url}/health").status_code == 503
        # a cached answer still comes back ...
        assert post_batch(front.base_url, "complete", [["fake-model", "hi"]]).status_code == 200
        # ... a new prompt needs the upstream
        r = post_batch(front.base_url, "complete", [["fake-model", "hi again"]])
        assert r.status_code == 503 and "unreachable" in r.text  # Snowflake retries 503


def test_front_of_the_real_llamacpp_model(live_server: LiveServer, tmp_path: Path) -> None:
    """Two hops to the packaged SmolLM2: text, logprobs from llama.cpp, JSON schema, token counts, a batch."""
    with serve(
        tmp_path,
        "front",
        "--engine",
        "openai",
        "--upstream",
        f"{live_server.base_url}/v1",
        "--model",
        "smollm2-135m-instruct",
        "--max-output-tokens",
        "24",
    ) as front:
        client = sdk(front)
        out = client.chat.completions.create(
            model="llama3.1-8b",
            temperature=0,
            max_tokens=8,
            logprobs=True,
            top_logprobs=3,
            messages=[{"role": "user", "content": "Say hello."}],
        )
        text = out.choices[0].message.content or ""
        tokens = out.choices[0].logprobs.content  # type: ignore[union-attr]
        assert text and out.model == "smollm2-135m-instruct"
        assert "".join(t.token for t in tokens) == text and all(len(t.top_logprobs) == 3 for t in tokens)
        assert all(t.logprob <= 0 and t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob for t in tokens)
        schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        js = client.chat.completions.create(
            model="smollm2-135m-instruct",
            temperature=0,
            max_tokens=24,
            messages=[{"role": "user", "content": "Name a city in JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        )
        assert isinstance(json.loads(js.choices[0].message.content or "")["city"], str)
        direct = httpx.post(f"{live_server.base_url}/tokenize", json={"prompt": "The quick brown fox"}).json()
        fronted = httpx.post(f"{front.base_url}/tokenize", json={"prompt": "The quick brown fox"}).json()
        assert fronted["count"] == direct["count"] > 0 and fronted["max_model_len"] == direct["max_model_len"]
        rows = [
            ["llama3.1-8b", [{"role": "user", "content": "What is 2+2?"}], {"max_tokens": 4}],
            ["mistral-7b", None, {}],
        ]
        r = post_batch(front.base_url, "complete", rows)
        assert r.status_code == 200
        data = r.json()["data"]
        answer = json.loads(data[0][1])
        assert answer["choices"][0]["messages"].strip() and answer["model"] == "smollm2-135m-instruct"
        assert 1 <= answer["usage"]["completion_tokens"] <= 4 and data[1][1] is None


def test_vllm_engine_supervises_the_child_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    model = tmp_path / "qwen2.5-0.5b-instruct"
    model.mkdir()
    record = tmp_path / "launches.jsonl"
    env = {**os.environ, "STANDIN_RECORD": str(record), "CUDA_VISIBLE_DEVICES": "0"}
    with serve(
        tmp_path,
        "vllm",
        "--engine",
        "vllm",
        "--model",
        str(model),
        "--vllm-command",
        f"{sys.executable} {STANDIN}",
        "--context-window",
        "2048",
        env=env,
    ) as svc:
        assert httpx.get(f"{svc.base_url}/health").json() == {
            "status": "ok",
            "model": "qwen2.5-0.5b-instruct",
            "engine": "vllm",
        }
        assert post_batch(svc.base_url, "complete", [["llama3.1-8b", "hi"]]).json()["data"] == [[0, "echo:hi"]]
        child = json.loads(record.read_text().splitlines()[0])
        argv = child["argv"]
        assert (
            argv[argv.index("--max-model-len") + 1] == "2048"
            and argv[argv.index("--served-model-name") + 1] == "qwen2.5-0.5b-instruct"
        )
        os.kill(child["pid"], signal.SIGKILL)
        assert _eventually(lambda: httpx.get(f"{svc.base_url}/health").status_code == 503)
        assert _eventually(lambda: httpx.get(f"{svc.base_url}/health").status_code == 200)
        restarted = json.loads(record.read_text().splitlines()[1])["pid"]
        assert post_batch(svc.base_url, "complete", [["llama3.1-8b", "again"]]).status_code == 200
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(timeout=40) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after shutdown
    assert _eventually(lambda: not _alive(restarted), timeout=10)
    assert '"child_stopped"' in svc.log()


def _eventually(check: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if check():  # type: ignore[operator]
                return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"
