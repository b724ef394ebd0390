"""Catalogue names resolve to local files on every engine: the cache first, then the mirrors (hubserver.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spcs_llm.cli import main
from spcs_llm.config import DownloadSettings, EngineSettings, Settings
from spcs_llm.engines import resolve_model_file
from spcs_llm.models.download import COMPLETE_MARKER, ModelNotAvailable
from spcs_llm.models.resolve import resolve_model, resolve_settings

from .hubserver import Hub, HubServer, closed_port_url

GGUF_REPO, GGUF = "Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf"
GGUF_15_REPO, GGUF_15 = "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct-q4_k_m.gguf"
GGUF_BYTES = b"GGUF" + bytes(range(256)) * 40


def gguf_hub() -> Hub:
    return Hub(
        {
            GGUF_REPO: {GGUF: GGUF_BYTES, "README.md": b"# q"},
            GGUF_15_REPO: {GGUF_15: GGUF_BYTES[::-1], "README.md": b"# q"},
        }
    )


def test_llamacpp_catalogue_name_resolves_to_its_gguf_then_comes_from_the_cache(tmp_path: Path) -> None:
    hub = gguf_hub()
    with HubServer(hub) as url:
        path, name = resolve_model_file(
            EngineSettings(model="qwen2.5-0.5b-instruct", cache_dir=tmp_path), DownloadSettings(sources=f"hf={url}")
        )
    assert name == "qwen2.5-0.5b-instruct"
    assert path == tmp_path / "hub" / f"Qwen--Qwen2.5-0.5B-Instruct-GGUF--{GGUF}" / GGUF
    assert path.read_bytes() == GGUF_BYTES
    assert hub.count("/resolve/") == 1  # one file only, not the whole repository
    # the hub is gone: the cache answers without any request
    again = resolve_model_file(
        EngineSettings(model="qwen2.5-0.5b-instruct", cache_dir=tmp_path),
        DownloadSettings(sources=f"hf={closed_port_url()}"),
    )
    assert again == (path, "qwen2.5-0.5b-instruct")


def test_mirrors_are_tried_in_order(tmp_path: Path) -> None:
    empty, full = Hub({}), gguf_hub()
    with HubServer(empty) as first, HubServer(full) as second:
        path, _ = resolve_model(
            "qwen2.5-0.5b-instruct",
            fmt="gguf",
            cache_dir=tmp_path,
            downloads=DownloadSettings(sources=f"hf={first},modelscope={second}"),
            progress=False,
        )
    assert empty.count("/api/models/Qwen/Qwen2.5-0.5B-Instruct-GGUF/tree") == 1  # asked first, 404
    assert full.count("FilePath=") == 1 and path.read_bytes() == GGUF_BYTES


def test_service_toml_with_a_catalogue_name_on_llamacpp(tmp_path: Path) -> None:
    """The CPU container's case: engine = "llamacpp", model = "qwen2.5-1.5b-instruct", cache on the volume."""
    with HubServer(gguf_hub()) as url:
        toml = tmp_path / "service.toml"
        toml.write_text(
            f'[engine]\nkind = "llamacpp"\nmodel = "qwen2.5-1.5b-instruct"\ncache_dir = "{tmp_path}"\n'
            f'[downloads]\nsources = "hf={url}"\n'
        )
        settings = resolve_settings(Settings.load(toml), progress=False)
    assert Path(settings.engine.model).read_bytes() == GGUF_BYTES[::-1]
    assert settings.engine.model_name == "qwen2.5-1.5b-instruct"


def test_packaged_name_on_llamacpp_is_the_packaged_gguf(tmp_path: Path) -> None:
    staged = tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    staged.parent.mkdir()
    staged.write_bytes(b"GGUF")
    assert resolve_model_file(EngineSettings(model="smollm2-135m-instruct", cache_dir=tmp_path)) == (
        staged,
        "smollm2-135m-instruct",
    )


def test_vllm_and_local_embeddings_get_the_safetensors_repository(tmp_path: Path) -> None:
    config = json.dumps({"num_hidden_layers": 12}).encode()
    repos = {
        "Qwen/Qwen2.5-7B-Instruct": {"config.json": config, "model.safetensors": b"w" * 100},
        "Snowflake/snowflake-arctic-embed-m-v1.5": {
            "config.json": config,
            "model.safetensors": b"e" * 50,
            "tokenizer.json": b"{}",
        },
    }
    with HubServer(Hub(repos)) as url:
        settings = Settings.load(
            overrides={
                "engine": {"kind": "vllm", "model": "qwen2.5-7b-instruct", "cache_dir": tmp_path},
                "downloads": {"sources": f"hf={url}"},
            }
        )
        settings = settings.model_copy(
            update={
                "embeddings": [
                    settings.embeddings[0].model_copy(
                        update={"model": "snowflake-arctic-embed-m-v1.5", "cache_dir": tmp_path}
                    )
                ]
            }
        )
        got = resolve_settings(settings, progress=False)
    assert got.engine.model_name == "qwen2.5-7b-instruct"
    assert (Path(got.engine.model) / COMPLETE_MARKER).is_file()
    emb = got.embeddings[0]
    assert emb.model_name == "snowflake-arctic-embed-m-v1.5" and (Path(emb.model) / "model.safetensors").is_file()


def test_unresolvable_catalogue_name_is_one_line_naming_what_was_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPCS_LLM_CACHE", str(tmp_path))
    dead = closed_port_url()
    with HubServer(Hub({}, fail_status=503)) as down:
        monkeypatch.setenv("SPCS_LLM_SOURCES", f"hf={dead},modelscope={down}")
        assert main(["serve", "--model", "qwen2.5-0.5b-instruct"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "".join(lines)
    assert len(lines) == 3  # each source's failure as it happens, then one line that says it all
    err = lines[-1]
    assert err.startswith("spcs-llm serve: engine.model: cannot get 'qwen2.5-0.5b-instruct'")
    assert f"hf ({dead}): ConnectError" in err and f"modelscope ({down}): HTTP 503" in err


def test_offline_name_not_cached_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text(f'[engine]\nmodel = "qwen2.5-3b-instruct"\ncache_dir = "{tmp_path}"\n[downloads]\noffline = true\n')
    assert main(["serve", "--config", str(toml)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "qwen2.5-3b-instruct" in err and "not available offline" in err


def test_neither_a_file_nor_a_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", "no-such-model"]) == 2
    assert main(["serve", "--model", str(tmp_path / "gone.gguf")]) == 2
    first, second = capsys.readouterr().err.strip().splitlines()
    assert first == (
        "spcs-llm serve: engine.model: no such GGUF file: no-such-model, and 'no-such-model' is not a "
        "catalogue name (`spcs-llm models list`) or an org/repo id"
    )
    assert "no such GGUF file" in second and "gone.gguf" in second


def test_a_catalogue_name_without_gguf_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="qwen3-8b.*names no GGUF file"):
        resolve_model("qwen3-8b", fmt="gguf", cache_dir=tmp_path, downloads=None)


def test_docs_models_page_has_the_current_catalogue_and_hosts() -> None:
    from spcs_llm.models.cli import catalogue_table
    from spcs_llm.models.download import egress_hosts

    page = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text(encoding="utf-8")
    assert catalogue_table(markdown=True) in page, "docs/models.md: paste spcs_llm.models.cli.catalogue_table()"
    defaults = egress_hosts(default_sources_for_docs())
    assert all(f"`{h}`" in page for h in defaults), defaults


def default_sources_for_docs() -> list:
    from spcs_llm.models.download import Source

    return [Source("hf", "https://hf-mirror.com"), Source("modelscope", "https://www.modelscope.cn")]
