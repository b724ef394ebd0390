"""The CPU image's recipe, proven without a Docker engine (issue 11; audit W4, W10).

A Debian root is built from Debian's packages (``rootfs.py``), the rendered CPU Dockerfile (``tests/golden/cpu``'s
config, base ``python:3.11-slim``) is replayed in it instruction by instruction, and then the container is started
the way SPCS starts it: the spec's environment, the image's ENV, its ENTRYPOINT. The entrypoint writes the config,
``serve`` answers ``/health`` 200 and a SENTIMENT batch. A second start takes a catalogue name
(``qwen2.5-0.5b-instruct`` on llama.cpp) from a hub stand-in on the host, into a cache in stage mode.

W4: the same root without ``libgomp1`` fails the build's smoke step with ``libgomp.so.1: cannot open shared object
file`` (checked by hiding the library again after the build and re-running that step).

Cost: debootstrap (~1.5 min, cached as a tarball under ``$SPCS_LLM_ROOTFS_CACHE`` if set), pip install of the
project from PyPI (~1 min), two server starts. The packaged models are bind-mounted read-only from the host's
cache when it holds them (``models fetch-default`` then finds them instead of downloading ~500 MB from PyPI; set
SPCS_LLM_ROOTFS_DOWNLOAD=1 to download them inside the root too).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from spcs_llm.deploy import docker, render
from spcs_llm.models import packaged
from spcs_llm.models.wheels import default_cache_dir
from spcs_llm.server.health import wait_healthy

from ..conftest import post_batch_like_snowflake, sf_headers
from ..unit.deploy_fixtures import load
from ..unit.hubserver import Hub, HubServer
from . import rootfs

pytestmark = [pytest.mark.integration, pytest.mark.image]
ROOT = Path(__file__).resolve().parents[2]
PACKAGED = docker.PACKAGED_DIR
GOMP_SMOKE = 'python3 -c "import xllamacpp"'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[rootfs.Image, tuple[rootfs.Mount, ...]]]:
    why = rootfs.missing_prerequisites()
    if why:
        pytest.skip(f"cannot build a Debian root here: {why}")
    root = tmp_path_factory.mktemp("image") / "root"
    cache = os.environ.get("SPCS_LLM_ROOTFS_CACHE")
    rootfs.build_base(root, Path(cache) if cache else None)
    rootfs.prepare_network(root)
    libs = root / "usr" / "lib" / "x86_64-linux-gnu"
    assert not list(libs.glob("libgomp.so*")), "the base must lack libgomp1, as python:3.11-slim does"
    host_models = default_cache_dir() / "models"
    seeded = (
        packaged.find_packaged_model(default_cache_dir()) is not None
        and (host_models / "all-mpnet-base-v2").is_dir()
        and os.environ.get("SPCS_LLM_ROOTFS_DOWNLOAD") != "1"
    )
    mounts = (rootfs.Mount(host_models, f"{PACKAGED}/models"),) if seeded else ()
    dockerfile = docker.dockerfile(load("cpu"))
    built = rootfs.replay(dockerfile, ROOT, root, mounts=mounts)
    assert built.base == "python:3.11-slim" and built.entrypoint == ["/usr/local/bin/spcs-llm-entrypoint"]
    yield built, mounts


def test_without_libgomp1_the_build_smoke_step_fails(image: tuple[rootfs.Image, tuple[rootfs.Mount, ...]]) -> None:
    built, _ = image
    libs = built.root / "usr" / "lib" / "x86_64-linux-gnu"
    gomp = sorted(libs.glob("libgomp.so.1*"))
    assert gomp, "the Dockerfile's apt-get step installed libgomp1"
    hidden = [p.rename(p.with_name(p.name + ".hidden")) for p in gomp]
    try:
        argv = rootfs.chroot_argv(built.root, ["/bin/sh", "-c", GOMP_SMOKE], built.env, built.workdir)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    finally:
        for p in hidden:
            p.rename(p.with_name(p.name.removesuffix(".hidden")))
    assert done.returncode != 0
    assert "libgomp.so.1: cannot open shared object file" in done.stderr


def start(built: rootfs.Image, mounts: tuple[rootfs.Mount, ...], env: dict[str, str], log: Path) -> subprocess.Popen:
    argv = rootfs.chroot_argv(built.root, built.entrypoint, built.env | env, "/", mounts)
    with open(log, "wb") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)


def sentiment(base: str) -> list:
    body = orjson.dumps({"data": [[0, "I love this phone, it is wonderful!"], [1, None]]})
    r = post_batch_like_snowflake(f"{base}/functions/sentiment", body, sf_headers(), timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def spec_env(cfg_name: str, port: int, **model: str) -> dict[str, str]:
    """The container's environment exactly as the rendered spec gives it, on a free port."""
    cfg = load(cfg_name)
    cfg = cfg.model_copy(
        update={"service": cfg.service.model_copy(update={"port": port}), "model": cfg.model.model_copy(update=model)}
    )
    return dict(render.spec(cfg)["spec"]["containers"][0]["env"])


def test_entrypoint_serves_health_and_a_sentiment_batch(
    image: tuple[rootfs.Image, tuple[rootfs.Mount, ...]], tmp_path: Path
) -> None:
    built, mounts = image
    port = _free_port()
    proc = start(built, mounts, spec_env("cpu", port), tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        ok = wait_healthy(base, timeout_s=300, still_running=lambda: proc.poll() is None)
        assert ok, f"exit code {proc.poll()}:\n{(tmp_path / 'serve.log').read_text(errors='replace')[-4000:]}"
        assert httpx.get(f"{base}/health").json()["engine"] == "llamacpp"
        (score_row, null_row) = sentiment(base)
        assert score_row[0] == 0 and -1.0 <= score_row[1] <= 1.0
        assert null_row == [1, None]
    finally:
        stop(proc)


def test_a_catalogue_name_on_llamacpp_in_the_container(
    image: tuple[rootfs.Image, tuple[rootfs.Mount, ...]], tmp_path: Path
) -> None:
    """engine = "llamacpp", model = "qwen2.5-0.5b-instruct": the entrypoint pulls the GGUF through the mirror
    into the cache (stage mode), and serve resolves the name to it. The stand-in hub serves the packaged SmolLM2
    GGUF under Qwen's file name (a real GGUF llama.cpp can load; the real Qwen file is not reachable here)."""
    built, mounts = image
    gguf = packaged.ensure_packaged_model()
    hub = Hub({"Qwen/Qwen2.5-0.5B-Instruct-GGUF": {"qwen2.5-0.5b-instruct-q4_k_m.gguf": gguf.read_bytes()}})
    port = _free_port()
    env = spec_env("cpu", port, name="qwen2.5-0.5b-instruct")
    with HubServer(hub) as url:
        # the stand-in hub plays the configured mirror: with a mirror the deploy renders the stage mode (the cpu
        # golden has none, so its own spec says readonly: pre-staged weights only)
        assert env["SPCS_LLM_CACHE_MODE"] == "readonly"
        env |= {"SPCS_LLM_SOURCES": f"hf={url}", "SPCS_LLM_CACHE_MODE": "stage"}
        proc = start(built, mounts, env, tmp_path / "serve.log")
        base = f"http://127.0.0.1:{port}"
        try:
            ok = wait_healthy(base, timeout_s=300, still_running=lambda: proc.poll() is None)
            assert ok, f"exit code {proc.poll()}:\n{(tmp_path / 'serve.log').read_text(errors='replace')[-4000:]}"
            models = {m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]}
            assert "qwen2.5-0.5b-instruct" in models
            assert sentiment(base)[0][0] == 0
        finally:
            stop(proc)
    cache = built.root / env["SPCS_LLM_CACHE"].lstrip("/") / "hub"
    assert (
        cache
        / "Qwen--Qwen2.5-0.5B-Instruct-GGUF--qwen2.5-0.5b-instruct-q4_k_m.gguf"
        / "qwen2.5-0.5b-instruct-q4_k_m.gguf"
    ).is_file()
    assert hub.count("/resolve/") == 1  # pulled once by the entrypoint; serve found it in the cache
