"""The vLLM engine: launcher arguments, GPU discovery, model resolution, and supervision of a real child process
(the stand-in `vllm serve` in tests/standin_vllm.py): readiness, crash -> 503 -> restart, stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from spcs_llm.config import DownloadSettings, EngineSettings, Settings
from spcs_llm.engines import build_engine
from spcs_llm.engines.base import ChatRequest, Message
from spcs_llm.engines.vllm import VllmEngine, embedding_args, resolve_model, serve_args, visible_gpus
from spcs_llm.errors import EngineUnavailable

STANDIN = str(Path(__file__).resolve().parents[1] / "standin_vllm.py")


def req(text: str) -> ChatRequest:
    return ChatRequest(messages=(Message("user", text),), max_tokens=8)


def vllm_settings(model: Path, **kw: Any) -> EngineSettings:
    return Settings.load(overrides={"engine": {"kind": "vllm", "model": str(model),
                                               "vllm_command": [sys.executable, STANDIN], **kw}}).engine


def launches(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z" if Path(f"/proc/{pid}").exists() else True


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "Qwen2.5-7B-Instruct"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def test_serve_args_from_config_and_gpus(model_dir: Path) -> None:
    s = vllm_settings(model_dir, context_window=8192, gpu_memory_utilization=0.85, upstream_concurrency=128,
                      vllm_extra_args=["--dtype", "bfloat16"])
    assert serve_args(str(model_dir), "qwen2.5-7b-instruct", 9100, s, gpus=4) == [
        "serve", str(model_dir), "--host", "127.0.0.1", "--port", "9100", "--served-model-name", "qwen2.5-7b-instruct",
        "--tensor-parallel-size", "4", "--gpu-memory-utilization", "0.85", "--max-num-seqs", "128",
        "--enable-prefix-caching", "--enable-prompt-tokens-details", "--max-model-len", "8192", "--dtype", "bfloat16"]
    # without a configured context the catalogue's is used; with no GPU seen, tensor parallel is 1
    args = serve_args("/m", "qwen2.5-7b-instruct", 9100, vllm_settings(model_dir), gpus=0)
    assert args[args.index("--max-model-len") + 1] == "32768" and args[args.index("--tensor-parallel-size") + 1] == "1"
    assert "--max-model-len" not in serve_args("/m", "my-own-model", 1, vllm_settings(model_dir), gpus=1)


def test_embedding_child_args(model_dir: Path) -> None:
    s = vllm_settings(model_dir, embedding_model="/e", embedding_port=8123, embedding_gpu_memory_utilization=0.05)
    args = embedding_args("/e", "arctic", s, gpus=2)
    assert args[:2] == ["serve", "/e"] and args[args.index("--runner") + 1] == "pooling"
    assert args[args.index("--port") + 1] == "8123" and args[args.index("--served-model-name") + 1] == "arctic"
    assert args[args.index("--gpu-memory-utilization") + 1] == "0.05"


def test_config_refuses_gpu_memory_over_one(model_dir: Path) -> None:
    with pytest.raises(ValueError, match="over 1"):
        vllm_settings(model_dir, embedding_model="/e", gpu_memory_utilization=0.95,
                      embedding_gpu_memory_utilization=0.1)


@pytest.mark.parametrize(("visible", "count"), [("0,1,2", 3), ("3", 1), ("", 0), ("-1", 0),
                                                ("GPU-8a1b,GPU-22cd", 2)])
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


def test_resolve_model_local_dir_catalogue_name_and_unknown(model_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_model(str(model_dir), None) == (str(model_dir), "qwen2.5-7b-instruct")
    calls: list[tuple[str, Any]] = []

    def ensure_model(name: str, *, cache_dir: Path | None = None, offline: bool = False,
                     sources: list[Any] | None = None) -> Path:
        calls.append((name, cache_dir, offline, [s.endpoint for s in sources or []]))
        return tmp_path / "cache" / name

    monkeypatch.setattr("spcs_llm.models.download.ensure_model", ensure_model)
    downloads = DownloadSettings(sources="modelscope,hf=http://mirror.test", offline=True)
    assert resolve_model("qwen2.5-1.5b-instruct", tmp_path, downloads) == (
        str(tmp_path / "cache" / "qwen2.5-1.5b-instruct"), "qwen2.5-1.5b-instruct")
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


async def test_launch_ready_crash_restart_and_stop(model_dir: Path, tmp_path: Path) -> None:
    record = tmp_path / "launches.jsonl"
    env = {**os.environ, "STANDIN_RECORD": str(record), "CUDA_VISIBLE_DEVICES": "0,1"}
    engine = VllmEngine(vllm_settings(model_dir, context_window=1024), env=env)
    assert engine.gpus == 2
    assert not await engine.health()
    await engine.start()
    try:
        assert await engine.health() and engine.model_name == "qwen2.5-7b-instruct"
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


async def test_child_that_fails_to_start_is_reported_with_its_output(model_dir: Path) -> None:
    engine = VllmEngine(vllm_settings(model_dir), env={**os.environ, "STANDIN_FAIL": "1"})
    with pytest.raises(EngineUnavailable, match=r"exited with code 3 before it was ready(.|\n)*does not fit"):
        await engine.start()
    await engine.aclose()


async def test_embedding_model_runs_as_a_second_child(model_dir: Path, tmp_path: Path) -> None:
    from spcs_llm.engines.openai_http import OpenAIEmbedder
    from spcs_llm.engines.vllm import free_port

    record = tmp_path / "launches.jsonl"
    port = free_port()
    settings = vllm_settings(model_dir, embedding_model=str(model_dir), embedding_model_name="arctic",
                             embedding_port=port)
    engine = VllmEngine(settings, env={**os.environ, "STANDIN_RECORD": str(record)})
    embedder = OpenAIEmbedder(f"http://127.0.0.1:{port}/v1", "arctic", dimension=4, startup_timeout_s=30)
    try:
        await asyncio.gather(engine.start(), embedder.start())
        argvs = [r["argv"] for r in launches(record)]
        assert sorted("--runner" in a for a in argvs) == [False, True]
        assert len(await embedder.embed(["abc", "de"])) == 2 and await engine.health()
    finally:
        await embedder.aclose()
        await engine.aclose()
    assert not any(alive(r["pid"]) for r in launches(record))


def test_build_engine_picks_vllm_and_openai(model_dir: Path) -> None:
    assert isinstance(build_engine(vllm_settings(model_dir)), VllmEngine)
    openai = build_engine(Settings.load(overrides={"engine": {"kind": "openai", "upstream": "http://h:1/v1",
                                                              "model": "m"}}).engine)
    assert openai.kind == "openai" and openai.structured_output == "response_format"  # type: ignore[attr-defined]


def test_cli_flags_reach_the_engine_settings() -> None:
    from spcs_llm.cli import _overrides, _parser

    args = _parser().parse_args([
        "serve", "--engine", "vllm", "--model", "qwen2.5-7b-instruct", "--gpus", "2", "--context-window", "8192",
        "--gpu-memory-utilization", "0.8", "--upstream-concurrency", "32", "--structured-output", "response_format",
        "--vllm-command", "python3 -m vllm.entrypoints.cli.main", "--embedding-model", "/e"])
    e = Settings.load(overrides=_overrides(args)).engine
    assert (e.kind, e.model, e.gpus, e.context_window, e.gpu_memory_utilization) == (
        "vllm", "qwen2.5-7b-instruct", 2, 8192, 0.8)
    assert (e.upstream_concurrency, e.structured_output, e.embedding_model) == (32, "response_format", "/e")
    assert e.vllm_command == ["python3", "-m", "vllm.entrypoints.cli.main"]
    args = _parser().parse_args(["serve", "--engine", "openai", "--upstream", "http://h:8000/v1", "--model", "m"])
    e = Settings.load(overrides=_overrides(args)).engine
    assert (e.kind, e.upstream, e.model) == ("openai", "http://h:8000/v1", "m")
