"""The public endpoint switch for the Cortex REST routes: off by default, and a valid SPCS spec when on."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import yaml

from spcs_llm.deploy import render

from .deploy_fixtures import load


def _endpoints(cfg: object) -> list[dict[str, object]]:
    parsed = yaml.safe_load(render.spec_yaml(cfg))  # type: ignore[arg-type]
    schema = json.loads(resources.files("spcs_llm.deploy").joinpath("spec.schema.json").read_text())
    jsonschema.validate(parsed, schema)
    return parsed["spec"]["endpoints"]


def test_endpoint_is_private_by_default() -> None:
    assert [e["public"] for e in _endpoints(load("cpu"))] == [False]


def test_public_endpoint_when_asked() -> None:
    cfg = load("cpu")
    cfg = cfg.model_copy(update={"service": cfg.service.model_copy(update={"public": True})})
    assert _endpoints(cfg) == [
        {"name": cfg.service.endpoint, "port": cfg.service.port, "public": True, "protocol": "HTTP"}
    ]
