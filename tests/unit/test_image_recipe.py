"""The image recipe without a Docker engine: the rendered Dockerfile (W4, W10, U13), .dockerignore, the entrypoint.

The full replay of the CPU Dockerfile in a Debian root is tests/integration/test_image_rootfs.py.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
from pathlib import Path

import pytest

from spcs_llm.deploy import docker

from .test_deploy_golden import load

ROOT = Path(__file__).resolve().parents[2]


def run_lines(text: str) -> list[str]:
    """Each RUN instruction as one line (continuations joined)."""
    return [
        line.removeprefix("RUN ").strip() for line in text.replace("\\\n", " ").splitlines() if line.startswith("RUN ")
    ]


@pytest.mark.parametrize("name", ["cpu", "single_gpu", "scaleout", "tp4"])
def test_libgomp_then_install_then_smoke(name: str) -> None:
    runs = run_lines(docker.dockerfile(load(name)))
    gomp = next(i for i, r in enumerate(runs) if "apt-get install -y --no-install-recommends libgomp1" in r)
    install = next(i for i, r in enumerate(runs) if "pip install" in r)
    smoke = next(i for i, r in enumerate(runs) if "import xllamacpp" in r)
    fetch = next(i for i, r in enumerate(runs) if "models fetch-default" in r)
    assert gomp < install < smoke < fetch
    assert "apt-get update" in runs[gomp] and "rm -rf /var/lib/apt/lists/*" in runs[gomp]
    assert "spcs-llm --help" in runs[smoke]
    assert ("import vllm" in runs[smoke]) == (load(name).image.base.startswith("vllm/"))


def test_entrypoint_comment_follows_the_base() -> None:
    cpu, gpu = docker.dockerfile(load("cpu")), docker.dockerfile(load("single_gpu"))
    assert "`vllm serve`" not in cpu and "python:3.11-slim declares no ENTRYPOINT" in cpu
    assert "vllm serve later), spcs-llm replaces it" in gpu
    assert docker.entrypoint_comment("registry.example/acme/base:1").startswith("# Replaces whatever ENTRYPOINT")
    assert docker.is_vllm_base("vllm/vllm-openai@sha256:" + "0" * 64)  # a digest-pinned base (U13)


def test_dockerignore_keeps_the_context_small_but_not_what_copy_needs() -> None:
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    ignored = lambda path: any(fnmatch.fnmatch(path, p) or path.startswith(p + "/") for p in patterns)  # noqa: E731
    copies = [line.split()[1:-1] for line in docker.dockerfile(load("cpu")).splitlines() if line.startswith("COPY ")]
    needed = [src for srcs in copies for src in srcs]
    assert needed == ["pyproject.toml", "README.md", "src", "docker/entrypoint"]
    assert not [src for src in needed if ignored(src)]
    assert all(ignored(p) for p in (".venv", ".git", "tests", "bench"))


@pytest.fixture
def fake_cli(tmp_path: Path) -> tuple[Path, Path]:
    """A `spcs-llm` on PATH that records its arguments, so the entrypoint's logic runs for real in bash."""
    bindir, record = tmp_path / "bin", tmp_path / "calls"
    bindir.mkdir()
    (bindir / "spcs-llm").write_text(f'#!/usr/bin/env bash\necho "$*" >> {record}\n')
    (bindir / "spcs-llm").chmod(0o755)
    return bindir, record


def entrypoint(env: dict[str, str], bindir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    full = {"PATH": f"{bindir}:{os.environ['PATH']}", "SPCS_LLM_CONFIG_PATH": str(tmp_path / "service.toml"), **env}
    return subprocess.run(
        ["bash", str(ROOT / "docker" / "entrypoint")], env=full, capture_output=True, text=True, timeout=30
    )


def test_entrypoint_pulls_the_gguf_for_llamacpp_then_serves(fake_cli: tuple[Path, Path], tmp_path: Path) -> None:
    bindir, record = fake_cli
    toml = '[engine]\nkind = "llamacpp"\nmodel = "qwen2.5-1.5b-instruct"\n'
    done = entrypoint(
        {"SPCS_LLM_SERVICE_TOML": toml, "MODEL": "qwen2.5-1.5b-instruct", "SPCS_LLM_ENGINE": "llamacpp"},
        bindir,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    config = tmp_path / "service.toml"
    assert config.read_text() == toml
    assert record.read_text().splitlines() == [
        f"models pull --gguf --config {config} qwen2.5-1.5b-instruct",
        f"serve --engine llamacpp --config {config}",
    ]


def test_entrypoint_pulls_the_repository_for_vllm_and_nothing_for_default(
    fake_cli: tuple[Path, Path], tmp_path: Path
) -> None:
    bindir, record = fake_cli
    assert entrypoint({"SPCS_LLM_SERVICE_TOML": "x", "MODEL": "qwen2.5-7b-instruct"}, bindir, tmp_path).returncode == 0
    assert (
        entrypoint(
            {"SPCS_LLM_SERVICE_TOML": "x", "MODEL": "default", "SPCS_LLM_ENGINE": "llamacpp"}, bindir, tmp_path
        ).returncode
        == 0
    )
    config = tmp_path / "service.toml"
    assert record.read_text().splitlines() == [
        f"models pull --config {config} qwen2.5-7b-instruct",
        f"serve --engine vllm --config {config}",
        f"serve --engine llamacpp --config {config}",
    ]


def test_entrypoint_refuses_without_model_or_config(fake_cli: tuple[Path, Path], tmp_path: Path) -> None:
    bindir, record = fake_cli
    no_model = entrypoint({"SPCS_LLM_SERVICE_TOML": "x"}, bindir, tmp_path)
    assert no_model.returncode == 2 and "MODEL is not set" in no_model.stderr
    (tmp_path / "service.toml").unlink()
    no_config = entrypoint({"MODEL": "default"}, bindir, tmp_path)
    assert no_config.returncode == 2 and "no config at" in no_config.stderr
    assert not record.exists()
