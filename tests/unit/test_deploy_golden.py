"""Golden files of everything deploy renders, for four configs (tests/golden/<config>/).

Regenerate after an intended change with ``SPCS_LLM_UPDATE_GOLDEN=1 pytest tests/unit/test_deploy_golden.py``
and review the diff.
"""

from __future__ import annotations

import os

import pytest

from spcs_llm.deploy import docker, render

from .deploy_fixtures import CONFIGS, GOLDEN, GOLDEN_FUNCTIONS, load

UPDATE = os.environ.get("SPCS_LLM_UPDATE_GOLDEN") == "1"


def rendered(name: str) -> dict[str, str]:
    cfg = load(name)
    return {
        "deploy.sql": render.script(cfg, GOLDEN_FUNCTIONS),
        "spec.yaml": render.spec_yaml(cfg),
        "service.toml": render.service_toml(cfg),
        "Dockerfile": docker.dockerfile(cfg),
    }


def test_the_four_configs_are_there() -> None:
    assert CONFIGS == ["cpu", "scaleout", "single_gpu", "tp4"]


@pytest.mark.parametrize("name", CONFIGS)
def test_golden(name: str) -> None:
    for file, text in rendered(name).items():
        path = GOLDEN / name / file
        if UPDATE:
            path.write_text(text, encoding="utf-8")
        assert path.read_text(encoding="utf-8") == text, f"{name}/{file} differs (SPCS_LLM_UPDATE_GOLDEN=1)"


def test_repo_dockerfile_is_the_default_render() -> None:
    """docker/Dockerfile in the repo is what `image build` renders for the default image settings."""
    path = GOLDEN.parents[1] / "docker" / "Dockerfile"
    text = docker.dockerfile(load("single_gpu"))
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text
