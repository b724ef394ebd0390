"""Downloads against a real HTTP hub on loopback (tests/unit/hubserver.py), in both hub layouts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spcs_llm.cli import main
from spcs_llm.models.catalog import check_config, find_model
from spcs_llm.models.download import (
    COMPLETE_MARKER,
    DownloadError,
    ModelNotAvailable,
    Source,
    default_sources,
    ensure_model,
)

from .hubserver import Hub, HubServer, closed_port_url

REPO = "acme/tiny-model"
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
WANTED = {
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors.index.json",
    SHARD1,
    SHARD2,
    "1_Pooling/config.json",
}


def make_repo() -> dict[str, bytes]:
    rnd = os.urandom
    config = {"num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "hidden_size": 896}
    return {
        "config.json": json.dumps(config).encode(),
        "tokenizer.json": b'{"version": "1.0"}',
        "tokenizer_config.json": b"{}",
        "model.safetensors.index.json": b'{"weight_map": {}}',
        SHARD1: rnd(300_000),
        SHARD2: rnd(120_000),
        "1_Pooling/config.json": b'{"pooling_mode_cls_token": true}',
        # not needed by any engine, so never fetched:
        "README.md": b"# tiny",
        "pytorch_model.bin": rnd(1000),
        "onnx/model.onnx": rnd(1000),
        "tiny-q4_k_m.gguf": rnd(50_000),
    }


@pytest.fixture
def repo() -> dict[str, bytes]:
    return make_repo()


def assert_model(path: Path, repo: dict[str, bytes]) -> None:
    got = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {COMPLETE_MARKER}
    assert got == WANTED
    for name in WANTED:
        assert (path / name).read_bytes() == repo[name], name
    assert (path / COMPLETE_MARKER).is_file()


def test_pull_from_hf_layout_selects_files_and_verifies(tmp_path: Path, repo: dict[str, bytes]) -> None:
    hub = Hub({REPO: repo}, page_size=4)  # several pages: follows Link rel="next"
    with HubServer(hub) as url:
        path = ensure_model(REPO, cache_dir=tmp_path, sources=[Source("hf", url)], progress=False)
    assert path == tmp_path / "hub" / "acme--tiny-model"
    assert_model(path, repo)
    assert hub.count("/tree/main") == 3
    assert hub.count("README.md") == hub.count("onnx") == hub.count("pytorch_model.bin") == 0
    assert not (tmp_path / "hub" / ".partial" / "acme--tiny-model").exists()


def test_pull_from_modelscope_layout(tmp_path: Path, repo: dict[str, bytes]) -> None:
    hub = Hub({REPO: repo})
    with HubServer(hub) as url:
        path = ensure_model(REPO, cache_dir=tmp_path, sources=[Source("modelscope", url)], progress=False)
    assert_model(path, repo)
    assert hub.count("/api/v1/models/acme/tiny-model/repo/files?Revision=master&Recursive=true") == 1
    assert hub.count("FilePath=model-00001-of-00002.safetensors") == 1


def test_second_pull_makes_no_request(tmp_path: Path, repo: dict[str, bytes]) -> None:
    hub = Hub({REPO: repo})
    with HubServer(hub) as url:
        first = ensure_model(REPO, cache_dir=tmp_path, sources=[Source("hf", url)], progress=False)
        seen = len(hub.requests)
        again = ensure_model(REPO, cache_dir=tmp_path, sources=[Source("hf", url)], progress=False)
        assert main(["models", "pull", REPO, "--cache-dir", str(tmp_path), "--sources", f"hf={url}"]) == 0
    assert again == first
    assert len(hub.requests) == seen


@pytest.mark.parametrize("failure", ["5xx", "connection refused"])
def test_falls_back_to_the_next_source(
    tmp_path: Path, repo: dict[str, bytes], failure: str, capsys: pytest.CaptureFixture[str]
) -> None:
    broken, good = Hub({REPO: repo}, fail_status=503), Hub({REPO: repo})
    with HubServer(broken) as bad_url, HubServer(good) as good_url:
        first = Source("hf", bad_url if failure == "5xx" else closed_port_url())
        path = ensure_model(REPO, cache_dir=tmp_path, sources=[first, Source("modelscope", good_url)], progress=False)
    assert_model(path, repo)
    assert json.loads((path / COMPLETE_MARKER).read_text())["source"].startswith("modelscope")
    assert ("HTTP 503" if failure == "5xx" else "ConnectError") in capsys.readouterr().err


@pytest.mark.parametrize("client", ["builtin", "huggingface_hub"])
def test_resumes_a_cut_connection_with_range(
    tmp_path: Path, repo: dict[str, bytes], client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if client == "builtin":
        monkeypatch.setenv("SPCS_LLM_HF_CLIENT", "builtin")
    hub = Hub({REPO: repo}, cut_once={SHARD1: 100_000})
    with HubServer(hub) as url:
        path = ensure_model(REPO, cache_dir=tmp_path, sources=[Source("hf", url)], progress=False)
    if client == "builtin":
        assert hub.ranges_for(SHARD1) == [None, "bytes=100000-"]
    else:  # huggingface_hub resumes from what it wrote, in 10 MiB chunks: here from the start
        assert hub.ranges_for(SHARD1) == [None, None]
    assert (path / SHARD1).read_bytes() == repo[SHARD1]


def test_resumes_a_download_left_by_an_earlier_process(tmp_path: Path, repo: dict[str, bytes]) -> None:
    partial = tmp_path / "hub" / ".partial" / "acme--tiny-model"
    partial.mkdir(parents=True)
    (partial / f"{SHARD1}.part").write_bytes(repo[SHARD1][:123_456])
    (partial / "config.json").write_bytes(repo["config.json"])  # already finished: not fetched again
    hub = Hub({REPO: repo})
    with HubServer(hub) as url:
        with pytest.raises(ModelNotAvailable, match="unfinished download"):
            ensure_model(REPO, cache_dir=tmp_path, offline=True)
        path = ensure_model(REPO, cache_dir=tmp_path, sources=[Source("hf", url)], progress=False)
    assert hub.ranges_for(SHARD1) == ["bytes=123456-"]
    assert hub.count("resolve/main/config.json") == 0
    assert_model(path, repo)


def test_a_corrupt_file_is_refused_and_nothing_is_marked_complete(tmp_path: Path, repo: dict[str, bytes]) -> None:
    hub = Hub({REPO: repo}, corrupt={SHARD2})
    with HubServer(hub) as url, pytest.raises(DownloadError) as err:
        ensure_model(REPO, cache_dir=tmp_path, sources=[Source("hf", url)], progress=False)
    assert f"{SHARD2} from hf" in str(err.value) and "sha256 mismatch" in str(err.value)
    assert not (tmp_path / "hub" / "acme--tiny-model").exists()
    assert not list(tmp_path.rglob(COMPLETE_MARKER))
    assert not list(tmp_path.rglob(f"{SHARD2}*"))  # the bad bytes are gone, not kept to resume from
    with pytest.raises(ModelNotAvailable):
        ensure_model(REPO, cache_dir=tmp_path, offline=True)


def test_corrupt_small_git_file_is_caught_by_its_blob_hash(tmp_path: Path, repo: dict[str, bytes]) -> None:
    hub = Hub({REPO: repo}, corrupt={"tokenizer.json"})
    with HubServer(hub) as url, pytest.raises(DownloadError, match="tokenizer.json .* git blob sha1 mismatch"):
        ensure_model(REPO, cache_dir=tmp_path, sources=[Source("hf", url)], progress=False)
    assert not list(tmp_path.rglob(COMPLETE_MARKER))


def test_offline_uses_the_cache_without_a_server(tmp_path: Path, repo: dict[str, bytes]) -> None:
    with HubServer(Hub({REPO: repo})) as url:
        online = ensure_model(REPO, cache_dir=tmp_path, sources=[Source("hf", url)], progress=False)
    # the server is gone now; offline (and online, since it is complete) both find it
    assert ensure_model(REPO, cache_dir=tmp_path, offline=True) == online
    assert ensure_model(REPO, cache_dir=tmp_path, sources=[Source("hf", closed_port_url())]) == online


def test_offline_not_cached_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ModelNotAvailable, match="not available offline") as err:
        ensure_model("qwen2.5-1.5b-instruct", cache_dir=tmp_path, offline=True)
    assert "Qwen/Qwen2.5-1.5B-Instruct" in str(err.value)
    assert main(["models", "pull", "qwen2.5-1.5b-instruct", "--offline", "--cache-dir", str(tmp_path)]) == 2
    assert "not available offline" in capsys.readouterr().err


def test_prestaged_model_is_used_offline(tmp_path: Path) -> None:
    staged = tmp_path / "models" / "qwen2.5-0.5b-instruct"
    staged.mkdir(parents=True)
    (staged / "config.json").write_text("{}")
    assert ensure_model("qwen2.5-0.5b-instruct", cache_dir=tmp_path, offline=True) == staged
    assert ensure_model(str(staged), offline=True) == staged  # a path is used as it is


def test_gguf_pull_fetches_one_file(tmp_path: Path, repo: dict[str, bytes]) -> None:
    hub = Hub({REPO: repo})
    with HubServer(hub) as url:
        path = ensure_model(
            REPO,
            cache_dir=tmp_path,
            fmt="gguf",
            gguf_file="tiny-q4_k_m.gguf",
            sources=[Source("modelscope", url)],
            progress=False,
        )
    assert path.name == "tiny-q4_k_m.gguf" and path.read_bytes() == repo["tiny-q4_k_m.gguf"]
    assert hub.count("FilePath=") == 1


def test_all_sources_failing_names_each(tmp_path: Path, repo: dict[str, bytes]) -> None:
    with HubServer(Hub({REPO: repo}, fail_status=500)) as url, pytest.raises(DownloadError) as err:
        ensure_model(REPO, cache_dir=tmp_path, sources=[Source("hf", url), Source("modelscope", url)], progress=False)
    assert "any source" in str(err.value) and str(err.value).count("HTTP 500") == 2


def test_sources_from_env_and_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPCS_LLM_SOURCES", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example/")
    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    assert default_sources() == [
        Source("hf", "http://mirror.example"),
        Source("modelscope", "https://www.modelscope.cn"),
    ]
    assert default_sources("modelscope,hf=http://other") == [
        Source("modelscope", "https://www.modelscope.cn"),
        Source("hf", "http://other"),
    ]
    with pytest.raises(ValueError, match="unknown model source 'github'"):
        default_sources("github")


def test_downloaded_config_agrees_with_the_catalogue(tmp_path: Path, repo: dict[str, bytes]) -> None:
    config = json.loads(repo["config.json"])
    assert check_config(find_model("qwen2.5-0.5b-instruct"), config) == []
    assert check_config(find_model("qwen2.5-1.5b-instruct"), config) == [
        "layers: catalogue 28, config.json 24",
        "attention heads: catalogue 12, config.json 14",
        "head dim: catalogue 128, config.json 64",
    ]


def test_cli_pull_of_a_catalogue_name_warns_when_config_differs(
    tmp_path: Path, repo: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    hub = Hub({"Qwen/Qwen2.5-0.5B-Instruct": repo, "Qwen/Qwen2.5-1.5B-Instruct": repo})  # a 0.5B-shaped config
    with HubServer(hub) as url:
        args = ["--cache-dir", str(tmp_path), "--sources", f"hf={url}"]
        assert main(["models", "pull", "qwen2.5-0.5b-instruct", *args]) == 0
        out = capsys.readouterr()
        assert out.out.strip() == str(tmp_path / "hub" / "Qwen--Qwen2.5-0.5B-Instruct") and "differ" not in out.err
        assert main(["models", "pull", "qwen2.5-1.5b-instruct", *args]) == 0
    assert "catalogue and config.json differ: layers: catalogue 28, config.json 24" in capsys.readouterr().err


def test_hf_token_goes_only_to_hugging_face_sources(
    tmp_path: Path, repo: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hf, ms = Hub({REPO: repo}), Hub({REPO: repo})
    with HubServer(hf) as hf_url, HubServer(ms) as ms_url:
        ensure_model(REPO, cache_dir=tmp_path / "a", sources=[Source("hf", hf_url)], progress=False)
        ensure_model(REPO, cache_dir=tmp_path / "b", sources=[Source("modelscope", ms_url)], progress=False)
    assert hf.auth and set(hf.auth) == {"Bearer hf_secret"}
    assert ms.auth and set(ms.auth) == {None}


@pytest.mark.parametrize("kind", ["hf", "modelscope"])
def test_a_rate_limited_file_is_waited_out_and_fetched(tmp_path: Path, repo: dict[str, bytes], kind: str) -> None:
    hub = Hub({REPO: repo}, rate_limit_once={SHARD2: 1})
    with HubServer(hub) as url:
        path = ensure_model(REPO, cache_dir=tmp_path, sources=[Source(kind, url)], progress=False)
    assert_model(path, repo)
    assert len(hub.ranges_for(SHARD2)) == 2  # the 429, then the file


def test_hugging_face_transfers_use_huggingface_hub(
    tmp_path: Path, repo: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With huggingface_hub installed, its http_get moves the bytes (redirect to the CDN, 429, resume); without
    it (SPCS_LLM_HF_CLIENT=builtin stands for that) our own client does, with the same result."""
    import functools

    from huggingface_hub import file_download

    calls: list[str] = []
    real = file_download.http_get

    @functools.wraps(real)
    def recording(url: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        return real(url, *args, **kwargs)

    monkeypatch.setattr(file_download, "http_get", recording)
    with HubServer(Hub({REPO: repo})) as url:
        assert_model(ensure_model(REPO, cache_dir=tmp_path / "a", sources=[Source("hf", url)], progress=False), repo)
        assert len(calls) == len(WANTED) and all("/resolve/main/" in c for c in calls)
        monkeypatch.setenv("SPCS_LLM_HF_CLIENT", "builtin")
        assert_model(ensure_model(REPO, cache_dir=tmp_path / "b", sources=[Source("hf", url)], progress=False), repo)
    assert len(calls) == len(WANTED)


def test_egress_hosts_list_each_endpoint_and_its_redirect_hosts() -> None:
    from spcs_llm.models.download import egress_hosts

    assert egress_hosts([Source("hf", "https://hf-mirror.com"), Source("modelscope", "https://www.modelscope.cn")]) == [
        "hf-mirror.com:443",
        "cdn-lfs.hf-mirror.com:443",
        "cdn-lfs-us-1.hf-mirror.com:443",
        "www.modelscope.cn:443",
        "cdn-lfs-cn-1.modelscope.cn:443",
        "modelscope.oss-cn-beijing.aliyuncs.com:443",
    ]
    assert egress_hosts([Source("hf", "http://mirror.internal:8080")]) == ["mirror.internal:8080"]


@pytest.mark.parametrize("client", ["builtin", "huggingface_hub"])
def test_a_blocked_cdn_host_is_named(
    tmp_path: Path, repo: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, client: str
) -> None:
    """The listing works, the redirect target is unreachable (as when the network rule lacks the CDN host)."""
    if client == "builtin":
        monkeypatch.setenv("SPCS_LLM_HF_CLIENT", "builtin")
    hub = Hub({REPO: repo})
    with HubServer(hub) as url:
        hub.url = closed_port_url().replace("127.0.0.1", "localhost")  # where the 302s now point
        with pytest.raises(DownloadError, match="ConnectError for localhost"):
            ensure_model(REPO, cache_dir=tmp_path, sources=[Source("hf", url)], progress=False, retries=0)
