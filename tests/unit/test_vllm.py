"""The vLLM engine: launcher arguments, tensor-parallel sizes, GPU discovery, model resolution, and supervision of
real child processes (the strict stand-in `vllm serve` in tests/standin_vllm.py, as vLLM 0.11.0 and as 0.33.0):
readiness, start order, version check, crash -> 503 -> restart, stop, the output clamp (audit M1), long embedding
inputs (M2), tensor parallelism (M3), death mid-stream (M4)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from spcs_llm.config import DownloadSettings, EngineSettings, Settings
from spcs_llm.engines import build_engine
from spcs_llm.engines.base import ChatRequest, Message
from spcs_llm.engines.vllm import (
    VllmEngine,
    attention_heads,
    embedding_args,
    resolve_model,
    serve_args,
    tensor_parallel_size,
    visible_gpus,
)
from spcs_llm.errors import EngineUnavailable, MaxTokensExceeded

STANDIN = str(Path(__file__).resolve().parents[1] / "standin_vllm.py")
# vLLM 0.11.0 (the pinned image: refuses output that does not fit) and 0.33.0 (clamps it, classifies stream errors)
VERSIONS = ["0.11.0", "0.33.0"]


def req(text: str) -> ChatRequest:
    return ChatRequest(messages=(Message("user", text),), max_tokens=8)


def vllm_settings(model: Path, **kw: Any) -> EngineSettings:
    return Settings.load(
        overrides={"engine": {"kind": "vllm", "model": str(model), "vllm_command": [sys.executable, STANDIN], **kw}}
    ).engine


def launches(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z" if Path(f"/proc/{pid}").exists() else True


def hf_dir(parent: Path, name: str, **config: Any) -> Path:
    """A model directory whose config.json says what vLLM reads: heads and length."""
    path = parent / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:  # Qwen2.5-7B-Instruct's config.json numbers
    return hf_dir(
        tmp_path, "Qwen2.5-7B-Instruct", num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768
    )


@pytest.fixture
def embed_dir(tmp_path: Path) -> Path:  # snowflake-arctic-embed-m-v1.5: BERT-base, 12 heads, 512 positions
    return hf_dir(tmp_path, "snowflake-arctic-embed-m-v1.5", num_attention_heads=12, max_position_embeddings=512)


def standin_env(tmp_path: Path, version: str = "0.11.0", gpus: int = 2, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "STANDIN_RECORD": str(tmp_path / "launches.jsonl"),
        "STANDIN_VLLM_VERSION": version,
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(gpus)),
        **extra,
    }


def test_serve_args_from_config_and_gpus(model_dir: Path) -> None:
    s = vllm_settings(
        model_dir,
        context_window=8192,
        gpu_memory_utilization=0.85,
        upstream_concurrency=128,
        vllm_extra_args=["--dtype", "bfloat16"],
    )
    assert serve_args(str(model_dir), "qwen2.5-7b-instruct", 9100, s, gpus=4) == [
        "serve",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        "9100",
        "--served-model-name",
        "qwen2.5-7b-instruct",
        "--tensor-parallel-size",
        "4",
        "--gpu-memory-utilization",
        "0.85",
        "--max-num-seqs",
        "128",
        "--enable-prefix-caching",
        "--enable-prompt-tokens-details",
        "--max-model-len",
        "8192",
        "--dtype",
        "bfloat16",
    ]
    # without a configured context the catalogue's is used; with no GPU seen, tensor parallel is 1
    args = serve_args("/m", "qwen2.5-7b-instruct", 9100, vllm_settings(model_dir), gpus=0)
    assert args[args.index("--max-model-len") + 1] == "32768" and args[args.index("--tensor-parallel-size") + 1] == "1"
    assert "--max-model-len" not in serve_args("/m", "my-own-model", 1, vllm_settings(model_dir), gpus=1)


def test_embedding_child_args(model_dir: Path) -> None:
    s = vllm_settings(model_dir, embedding_model="/e", embedding_port=8123, embedding_gpu_memory_utilization=0.05)
    args = embedding_args("/e", "arctic", s)
    assert args[:2] == ["serve", "/e"] and args[args.index("--runner") + 1] == "pooling"
    assert args[args.index("--tensor-parallel-size") + 1] == "1"  # whatever the GPUs (M3)
    assert args[args.index("--port") + 1] == "8123" and args[args.index("--served-model-name") + 1] == "arctic"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.05"


# (attention heads, KV heads, GPUs, size): the largest power of two <= GPUs that splits both evenly (M3)
TP_CASES = [
    (28, 4, 8, 4),
    (28, 4, 2, 2),
    (12, 12, 8, 4),
    (14, 2, 8, 2),
    (32, 8, 8, 8),
    (40, 8, 8, 8),
    (9, 3, 8, 1),
    (16, 8, 4, 4),
    (64, 8, 6, 4),
    (32, 2, 8, 8),
    (0, 0, 8, 8),
    (28, 4, 0, 1),
    (24, 8, 8, 8),
]


@pytest.mark.parametrize(("heads", "kv", "gpus", "size"), TP_CASES)
def test_tensor_parallel_size_splits_the_heads(heads: int, kv: int, gpus: int, size: int) -> None:
    tp = tensor_parallel_size(heads, kv, gpus)
    assert tp == size
    if heads:  # what vLLM checks (config/model.py:1045-1052, model_executor/layers/linear.py:902-907)
        assert heads % tp == 0 and (kv % tp == 0 if tp < kv else tp % kv == 0)


def test_attention_heads_from_the_catalogue_or_config_json(tmp_path: Path) -> None:
    assert attention_heads("/nowhere", "qwen2.5-7b-instruct") == (28, 4)
    assert attention_heads("/nowhere", "Yi-1.5-6B-Chat") == (32, 4)  # the directory's name, as resolve_model does
    mine = hf_dir(tmp_path, "my-model", num_attention_heads=20, num_key_value_heads=5)
    assert attention_heads(str(mine), "my-model") == (20, 5)
    vl = hf_dir(tmp_path, "my-vl", text_config={"num_attention_heads": 16})
    assert attention_heads(str(vl), "my-vl") == (16, 16)
    assert attention_heads(str(tmp_path / "none"), "none") == (0, 0)
    # an 8-GPU pool: qwen2.5-7b's 28 heads give 4, not 8 (vLLM would refuse 8) and not 7 (4 KV heads)
    args = serve_args("/m", "qwen2.5-7b-instruct", 1, vllm_settings(tmp_path / "m"), gpus=8)
    assert args[args.index("--tensor-parallel-size") + 1] == "4"


def test_config_refuses_gpu_memory_over_one(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="over 1"):
        vllm_settings(
            model_dir, embedding_model="/e", gpu_memory_utilization=0.95, embedding_gpu_memory_utilization=0.1
        )


@pytest.mark.parametrize(("visible", "count"), [("0,1,2", 3), ("3", 1), ("", 0), ("-1", 0), ("GPU-8a1b,GPU-22cd", 2)])
def test_visible_gpus_from_cuda_visible_devices(visible: str, count: int) -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": visible}) == count


def test_visible_gpus_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA A10G (UUID: GPU-1)'\necho 'GPU 1: NVIDIA A10G (UUID: GPU-2)'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert visible_gpus({}) == 2
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert visible_gpus({}) == 0


def test_resolve_model_local_dir_catalogue_name_and_unknown(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_model(str(model_dir), None) == (str(model_dir), "qwen2.5-7b-instruct")
    calls: list[tuple[str, Any]] = []

    def ensure_model(
        name: str, *, cache_dir: Path | None = None, offline: bool = False, sources: list[Any] | None = None
    ) -> Path:
        calls.append((name, cache_dir, offline, [s.endpoint for s in sources or []]))
        return tmp_path / "cache" / name

    monkeypatch.setattr("spcs_llm.models.download.ensure_model", ensure_model)
    downloads = DownloadSettings(sources="modelscope,hf=http://mirror.test", offline=True)
    assert resolve_model("qwen2.5-1.5b-instruct", tmp_path, downloads) == (
        str(tmp_path / "cache" / "qwen2.5-1.5b-instruct"),
        "qwen2.5-1.5b-instruct",
    )
    (name, cache, offline, urls) = calls[0]
    assert (name, cache, offline) == ("qwen2.5-1.5b-instruct", tmp_path, True)
    assert urls[1] == "http://mirror.test"  # the [downloads] sources, in their order
    with pytest.raises(EngineUnavailable, match="neither a local model directory nor a catalogue name"):
        resolve_model("no-such-model", None)


async def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


@pytest.mark.parametrize("version", VERSIONS)
async def test_launch_ready_crash_restart_and_stop(model_dir: Path, tmp_path: Path, version: str) -> None:
    record = tmp_path / "launches.jsonl"
    env = standin_env(tmp_path, version)
    engine = VllmEngine(vllm_settings(model_dir, context_window=1024), env=env)
    assert engine.gpus == 2
    assert not await engine.health()
    await engine.start()
    try:
        assert await engine.health() and engine.model_name == "qwen2.5-7b-instruct"
        assert engine.vllm_version == version and engine.unready() == []
        assert engine.context_window == 1024  # as the child reports it on /v1/models
        argv = launches(record)[0]["argv"]
        assert argv[argv.index("--tensor-parallel-size") + 1] == "2" and "--enable-prefix-caching" in argv
        assert (await engine.chat(req("hi"))).text == "echo:hi"
        assert await engine.count_tokens("a b c") == 3

        first = engine.chat_child
        assert first is not None and first.proc is not None
        pid = first.proc.pid
        in_flight = asyncio.create_task(engine.chat(req("slow one")))
        await asyncio.sleep(0.3)
        os.kill(pid, signal.SIGKILL)  # the child crashes with a request in flight
        with pytest.raises(EngineUnavailable):
            await in_flight
        assert not await engine.health()
        with pytest.raises(EngineUnavailable):  # while restarting: 503 at once
            await engine.chat(req("during restart"))
        await wait_for(engine.health)
        assert first.restarts == 1 and len(launches(record)) == 2
        assert (await engine.chat(req("after"))).text == "echo:after"
        new_pid = launches(record)[1]["pid"]
    finally:
        await engine.aclose()
    assert not alive(new_pid) and not await engine.health()


async def test_child_that_fails_to_start_is_reported_with_its_output(model_dir: Path, tmp_path: Path) -> None:
    engine = VllmEngine(vllm_settings(model_dir), env=standin_env(tmp_path, STANDIN_FAIL="1"))
    with pytest.raises(EngineUnavailable, match=r"exited with code 3 before it was ready(.|\n)*does not fit"):
        await engine.start()
    await engine.aclose()


async def test_no_gpu_is_a_clear_start_up_error(model_dir: Path, tmp_path: Path) -> None:
    engine = VllmEngine(vllm_settings(model_dir), env=standin_env(tmp_path, gpus=0))
    with pytest.raises(EngineUnavailable, match="needs a GPU and this process sees none"):
        await engine.start()
    assert launches(tmp_path / "launches.jsonl") == []


async def test_a_flag_vllm_does_not_know_fails_start_up_as_vllm_does(model_dir: Path, tmp_path: Path) -> None:
    engine = VllmEngine(vllm_settings(model_dir, vllm_extra_args=["--bogus-flag", "1"]), env=standin_env(tmp_path))
    with pytest.raises(
        EngineUnavailable,
        match=r"exited with code 2 (.|\n)*vllm: error: unrecognized arguments: "
        r"--bogus-flag 1",
    ):
        await engine.start()
    await engine.aclose()


def test_standin_refuses_what_vllm_0_11_0_refuses(embed_dir: Path) -> None:
    """The stand-in's own strictness, so that the tests above mean something: argparse and the heads check."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, STANDIN, *args], capture_output=True, text=True, timeout=60)

    bad_choice = run("serve", str(embed_dir), "--runner", "embed")
    assert (
        bad_choice.returncode == 2
        and "vllm serve: error: argument --runner: invalid choice: 'embed'" in bad_choice.stderr
    )
    typo = run("serve", str(embed_dir), "--enable-prefix-cache", "--port", "8000")  # ambiguous with no match
    assert typo.returncode == 2 and "unrecognized arguments: --enable-prefix-cache" in typo.stderr
    indivisible = run("serve", str(embed_dir), "--port", "1", "--tensor-parallel-size", "8")
    assert (
        indivisible.returncode == 1
        and ("ValueError: Total number of attention heads (12) must be divisible by tensor parallel size (8).")
        in indivisible.stderr
    )


@pytest.mark.parametrize("version", VERSIONS)
async def test_eight_gpus_start_chat_at_a_valid_size_then_embeddings_at_one(
    model_dir: Path, embed_dir: Path, tmp_path: Path, version: str
) -> None:
    from spcs_llm.engines.openai_http import OpenAIEmbedder
    from spcs_llm.engines.vllm import free_port

    record = tmp_path / "launches.jsonl"
    port = free_port()
    settings = vllm_settings(model_dir, embedding_model=str(embed_dir), embedding_port=port)
    engine = VllmEngine(settings, env=standin_env(tmp_path, version, gpus=8))
    embedder = OpenAIEmbedder(
        f"http://127.0.0.1:{port}/v1", "snowflake-arctic-embed-m-v1.5", dimension=4, startup_timeout_s=60
    )
    try:
        starting = asyncio.ensure_future(engine.start())
        await wait_for(lambda: asyncio.sleep(0, len(engine.children) == 2))
        assert engine.unready() == ["vllm", "vllm-embed"]  # what /health names while they start
        await asyncio.gather(starting, embedder.start())
        chat, embed = launches(record)
        assert chat["argv"][chat["argv"].index("--tensor-parallel-size") + 1] == "4"  # 28 heads, 4 KV heads
        assert embed["argv"][embed["argv"].index("--tensor-parallel-size") + 1] == "1"
        assert "--runner" in embed["argv"] and "--runner" not in chat["argv"]
        chat_child = engine.chat_child
        assert chat_child is not None and chat_child.ready_at is not None
        assert embed["t"] >= chat_child.ready_at  # one after the other (M7)
        assert engine.tensor_parallel == 4 and await engine.health() and engine.unready() == []
        assert len(await embedder.embed(["abc", "de"])) == 2
        os.kill(embed["pid"], signal.SIGKILL)  # the embedding child dies: /health names it
        await wait_for(lambda: asyncio.sleep(0, engine.unready() == ["vllm-embed"]))
        assert not await engine.health()
        await wait_for(engine.health)
    finally:
        await embedder.aclose()
        await engine.aclose()
    assert not any(alive(r["pid"]) for r in launches(record))


async def test_vllm_older_than_0_11_0_is_refused_at_start(model_dir: Path, tmp_path: Path) -> None:
    engine = VllmEngine(vllm_settings(model_dir), env=standin_env(tmp_path, "0.10.2"))
    with pytest.raises(EngineUnavailable, match=r"runs vLLM 0\.10\.2; spcs-llm needs vLLM 0\.11\.0 or later"):
        await engine.start()
    assert not alive(launches(tmp_path / "launches.jsonl")[0]["pid"])  # the refused child is stopped
    await engine.aclose()


@pytest.mark.parametrize("version", VERSIONS)
async def test_complete_on_a_4096_context_model_is_clamped_not_refused(tmp_path: Path, version: str) -> None:
    """M1: yi-1.5-6b-chat has 4096 tokens of context and COMPLETE's cap is 4096 output tokens. vLLM 0.11.0
    refuses prompt + max_tokens over 4096; the engine asks again for what fits and the answer says "length"."""
    yi = hf_dir(tmp_path, "Yi-1.5-6B-Chat", num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096)
    engine = VllmEngine(vllm_settings(yi), env=standin_env(tmp_path, version))
    await engine.start()
    try:
        assert engine.context_window == 4096
        story = ChatRequest(messages=(Message("user", "write a long story about the sea"),), max_tokens=4096)
        prompt = 7 + 4  # seven words and the chat template's markers, as the stand-in counts them
        result = await engine.chat(story)
        assert result.finish_reason == "length"
        assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (prompt, 4096 - prompt)
        deltas = [d async for d in engine.chat_stream(story)]
        assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]
        assert [d.usage.completion_tokens for d in deltas if d.usage] == [4096 - prompt]
        fits = await engine.chat(ChatRequest(messages=(Message("user", "hi"),), max_tokens=4096 - 5))
        assert (fits.text, fits.finish_reason) == ("echo:hi", "stop")
        too_long = ChatRequest(messages=(Message("user", "w " * 5000),), max_tokens=4096)
        with pytest.raises(MaxTokensExceeded, match="^max tokens of 4096 exceeded$"):
            await engine.chat(too_long)
        with pytest.raises(MaxTokensExceeded, match="^max tokens of 4096 exceeded$"):
            async for _ in engine.chat_stream(too_long):
                pass
    finally:
        await engine.aclose()


@pytest.mark.parametrize("version", VERSIONS)
async def test_engine_death_mid_stream_is_a_retryable_503(model_dir: Path, tmp_path: Path, version: str) -> None:
    """M4: vLLM 0.11.0 reports its engine core's death inside the stream as a 400 event, then exits."""
    engine = VllmEngine(vllm_settings(model_dir), env=standin_env(tmp_path, version))
    await engine.start()
    try:
        got: list[str] = []
        with pytest.raises(EngineUnavailable) as caught:
            async for d in engine.chat_stream(req("please die now, mid-answer")):
                got.append(d.text)
        assert caught.value.status == 503 and "".join(got) == "echo:please die"
        await wait_for(engine.health)  # restarted
        with pytest.raises(EngineUnavailable) as caught:  # not streamed: HTTP 500 with an empty body
            await engine.chat(req("die"))
        assert caught.value.status == 503
    finally:
        await engine.aclose()


@pytest.mark.parametrize("version", VERSIONS)
async def test_long_text_embeds_truncated_beside_63_short_ones(
    embed_dir: Path, model_dir: Path, tmp_path: Path, version: str
) -> None:
    """M2: vLLM refuses a text over 512 tokens, failing the whole call; spcs-llm asks it to truncate, and a text
    an upstream still refuses fails only its own row."""
    from spcs_llm.engines.openai_http import OpenAIEmbedder
    from spcs_llm.engines.vllm import free_port
    from spcs_llm.metrics import Metrics
    from spcs_llm.scheduler import Scheduler

    port = free_port()
    settings = vllm_settings(model_dir, embedding_model=str(embed_dir), embedding_port=port)
    engine = VllmEngine(settings, env=standin_env(tmp_path, version))
    url, name = f"http://127.0.0.1:{port}/v1", "snowflake-arctic-embed-m-v1.5"
    vllm_side = OpenAIEmbedder(url, name, dimension=4, startup_timeout_s=60)
    strict = OpenAIEmbedder(url, name, dimension=4, startup_timeout_s=60, truncate=False, base64=False)  # others
    short = [f"short text {i}" for i in range(63)]
    texts = [*short[:32], "word " * 3000, *short[32:]]  # not first: the scheduler's first pass holds one text
    try:
        await asyncio.gather(engine.start(), vllm_side.start(), strict.start())
        assert vllm_side.truncate is vllm_side.base64 is True  # the upstream lists its model owned_by "vllm"
        vectors = await vllm_side.embed(texts)
        refused = httpx.post(f"{url}/embeddings", json={"model": name, "input": ["a"], "encoding_format": "bytes"})
        assert refused.status_code == 400 and "encoding_format" in refused.text
        assert len(vectors) == 64
        assert vectors[32][0] / vectors[32][1] == pytest.approx(512)  # truncated to the model's 512 tokens
        assert vectors[0][0] / vectors[0][1] == pytest.approx(5)  # 3 words, [CLS] and [SEP]
        scheduler = Scheduler(engine, Metrics(), max_concurrency=8)
        rows = await asyncio.gather(*(scheduler.embed(strict, t) for t in texts), return_exceptions=True)
        long_row = rows.pop(32)
        assert isinstance(long_row, MaxTokensExceeded) and long_row.message == "max tokens of 512 exceeded"
        # its 63 neighbours are answered (the scheduler's vectors are read-only numpy rows, issue 18)
        assert all(isinstance(r, np.ndarray) and r.shape == (4,) for r in rows)
        # float JSON (strict) and base64 (vllm_side) carry the same float32 values: the same doubles
        assert [r.tolist() for r in rows] == vectors[:32] + vectors[33:]
    finally:
        await asyncio.gather(vllm_side.aclose(), strict.aclose())
        await engine.aclose()


def test_build_engine_picks_vllm_and_openai(model_dir: Path) -> None:
    assert isinstance(build_engine(vllm_settings(model_dir)), VllmEngine)
    openai = build_engine(
        Settings.load(overrides={"engine": {"kind": "openai", "upstream": "http://h:1/v1", "model": "m"}}).engine
    )
    assert openai.kind == "openai" and openai.structured_output == "response_format"  # type: ignore[attr-defined]


def test_cli_flags_reach_the_engine_settings() -> None:
    from spcs_llm.cli import _overrides, _parser

    args = _parser().parse_args(
        [
            "serve",
            "--engine",
            "vllm",
            "--model",
            "qwen2.5-7b-instruct",
            "--gpus",
            "2",
            "--context-window",
            "8192",
            "--gpu-memory-utilization",
            "0.8",
            "--upstream-concurrency",
            "32",
            "--structured-output",
            "response_format",
            "--vllm-command",
            "python3 -m vllm.entrypoints.cli.main",
            "--embedding-model",
            "/e",
        ]
    )
    e = Settings.load(overrides=_overrides(args)).engine
    assert (e.kind, e.model, e.gpus, e.context_window, e.gpu_memory_utilization) == (
        "vllm",
        "qwen2.5-7b-instruct",
        2,
        8192,
        0.8,
    )
    assert (e.upstream_concurrency, e.structured_output, e.embedding_model) == (32, "response_format", "/e")
    assert e.vllm_command == ["python3", "-m", "vllm.entrypoints.cli.main"]
    args = _parser().parse_args(["serve", "--engine", "openai", "--upstream", "http://h:8000/v1", "--model", "m"])
    e = Settings.load(overrides=_overrides(args)).engine
    assert (e.kind, e.upstream, e.model) == ("openai", "http://h:8000/v1", "m")


async def test_health_names_the_child_that_is_not_ready() -> None:
    """/health (the SPCS readiness probe) says which of vLLM's children is down, while loading and after."""
    from asgi_lifespan import LifespanManager

    from spcs_llm.engines.fake import FakeEngine
    from spcs_llm.server import create_app

    from ..conftest import fake_settings, wait_ready

    class TwoChildren(FakeEngine):
        down: list[str] = []

        async def health(self) -> bool:
            return not self.down

        def unready(self) -> list[str]:
            return list(self.down)

    engine = TwoChildren("m", context_window=512)
    app = create_app(fake_settings(), engine=engine, embedders=[])
    async with LifespanManager(app):
        await wait_ready(app)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t")
        assert (await client.get("/health")).json() == {"status": "ok", "model": "m", "engine": "fake"}
        engine.down = ["vllm-embed"]
        r = await client.get("/health")
        assert r.status_code == 503 and r.json()["not_ready"] == ["vllm-embed"]
        await client.aclose()


async def test_a_model_whose_weights_cannot_fit_the_gpus_is_a_clear_start_up_error(tmp_path: Path) -> None:
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(
        "#!/bin/sh\ncase \"$1\" in -L) echo 'GPU 0: NVIDIA A10G (UUID: GPU-1)';;\n*) echo 23028;; esac\n"
    )  # an A10G: 22.5 GiB
    smi.chmod(0o755)
    qwen3 = hf_dir(tmp_path, "Qwen3-32B", num_attention_heads=64, num_key_value_heads=8)
    env = {**standin_env(tmp_path, gpus=1), "PATH": f"{smi.parent}:{os.environ['PATH']}"}
    engine = VllmEngine(vllm_settings(qwen3), env=env)
    with pytest.raises(
        EngineUnavailable,
        match=r"qwen3-32b's weights take about 61\.1 GiB per GPU at tensor-parallel "
        r"size 1, more than the 20\.2 GiB .* of a 22 GiB GPU",
    ):
        await engine.start()
    assert launches(tmp_path / "launches.jsonl") == []  # refused before vLLM is launched
    from spcs_llm.engines.vllm import weights_do_not_fit

    assert weights_do_not_fit("qwen3-32b", 8, 22.5, 0.9) is None  # 7.6 GiB a GPU over eight
    assert weights_do_not_fit("my-own-model", 1, 22.5, 0.9) is None  # not in the catalogue: vLLM will say
    engine = VllmEngine(vllm_settings(qwen3, gpus=4), env=env)
    with pytest.raises(EngineUnavailable, match=r"engine.gpus = 4, but this process sees only 1 GPU"):
        await engine.start()
