"""The reference pages are generated from the code; the committed pages must be what the code generates now."""

from __future__ import annotations

from pydantic import BaseModel

from spcs_llm import docgen
from spcs_llm.config import Settings
from spcs_llm.deploy.config import DeployConfig
from spcs_llm.functions import FUNCTIONS


def test_committed_reference_pages_match_the_code() -> None:
    assert docgen.stale() == [], "run `python -m spcs_llm.docgen` and commit docs/reference/"


def test_every_function_says_what_it_does() -> None:
    assert [name for name, fn in FUNCTIONS.items() if not fn.doc] == []


def _undocumented(model: type[BaseModel], path: str) -> list[str]:
    missing = []
    for name, info in model.model_fields.items():
        section = docgen._section_model(info.annotation)
        if section is not None:
            missing += _undocumented(section, f"{path}{name}.")
        elif not info.description:
            missing.append(path + name)
    return missing


def test_every_setting_has_a_description() -> None:
    assert _undocumented(Settings, "") == []
    assert _undocumented(DeployConfig, "") == []


def test_a_changed_page_is_reported(tmp_path) -> None:
    for name, page in docgen.PAGES.items():
        (tmp_path / name).write_text(page(), encoding="utf-8")
    assert docgen.stale(tmp_path) == []
    (tmp_path / "functions.md").write_text("stale", encoding="utf-8")
    assert docgen.stale(tmp_path) == ["functions.md"]
