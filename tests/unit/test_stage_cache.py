"""W3: a model cache on an SPCS stage volume is never appended to, locked, renamed or rewritten.

Snowflake's stage-volume page: "Random writes or file appends aren't supported. Attempting these operations results
in an error", "If your application needs to rename or move files, modify existing files, or perform file system based
locking, then stage volume is not a good fit", "File and directory renames are not atomic". The ``stage`` fixture
makes a directory behave that way: every open for append or update, every open for writing of a file that already
exists, every rename / replace / move and every flock / lockf of a file under it raises OSError, and is recorded.
"""

from __future__ import annotations

import builtins
import fcntl
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from spcs_llm.cli import main
from spcs_llm.models import download
from spcs_llm.models.download import COMPLETE_MARKER, ModelNotAvailable, Source, ensure_model

from .hubserver import Hub, HubServer
from .test_download import REPO, WANTED, assert_model, make_repo


class StageRules:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.refused: list[str] = []
        self.writes: list[str] = []

    def under(self, path: object) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(self.root)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    def refuse(self, what: str) -> None:
        self.refused.append(what)
        raise OSError(95, f"stage volume: {what} is not supported")


@pytest.fixture
def stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StageRules]:
    rules = StageRules(tmp_path / "stage")
    rules.root.mkdir()
    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file: object, mode: str = "r", *args: object, **kw: object) -> object:
        if isinstance(file, (str, bytes, os.PathLike)) and rules.under(file):
            if "a" in mode or "+" in mode:
                rules.refuse(f"open({file}, {mode!r})")
            if ("w" in mode or "x" in mode) and os.path.exists(file):
                rules.refuse(f"rewrite of existing {file}")
            if "w" in mode or "x" in mode:
                rules.writes.append(os.fsdecode(file))
        return real_open(file, mode, *args, **kw)  # type: ignore[call-overload]

    def guarded_os_open(path: object, flags: int, *args: object, **kw: object) -> int:
        if rules.under(path) and flags & (os.O_APPEND | os.O_RDWR):
            rules.refuse(f"os.open({path}, append/update)")
        return real_os_open(path, flags, *args, **kw)  # type: ignore[arg-type]

    def no_rename(real: object) -> object:
        def guarded(src: object, dst: object, *args: object, **kw: object) -> object:
            if rules.under(src) or rules.under(dst):
                rules.refuse(f"rename {src} -> {dst}")
            return real(src, dst, *args, **kw)  # type: ignore[operator]

        return guarded

    def no_lock(real: object) -> object:
        def guarded(fd: object, *args: object) -> object:
            num = fd if isinstance(fd, int) else fd.fileno()  # type: ignore[attr-defined]
            if rules.under(os.readlink(f"/proc/self/fd/{num}")):
                rules.refuse("flock")
            return real(fd, *args)  # type: ignore[operator]

        return guarded

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    for name in ("replace", "rename", "renames"):
        monkeypatch.setattr(os, name, no_rename(getattr(os, name)))
    monkeypatch.setattr(shutil, "move", no_rename(shutil.move))
    monkeypatch.setattr(fcntl, "flock", no_lock(fcntl.flock))
    monkeypatch.setattr(fcntl, "lockf", no_lock(fcntl.lockf))
    monkeypatch.setattr(download, "CLAIM_WAIT_S", 0.0)
    monkeypatch.setenv("SPCS_LLM_STAGING_DIR", str(tmp_path / "local-disk"))
    yield rules


def test_the_stage_rules_refuse_what_the_old_cache_did(stage: StageRules) -> None:
    """The fixture really refuses: the posix mode (append, lock, rename in the cache) fails on it."""
    with HubServer(Hub({REPO: make_repo()})) as url, pytest.raises(OSError, match="stage volume"):
        ensure_model(REPO, cache_dir=stage.root, sources=[Source("hf", url)], progress=False, cache_mode="posix")
    assert stage.refused


def test_stage_mode_downloads_on_local_disk_and_copies_finished_files_in(stage: StageRules, tmp_path: Path) -> None:
    repo = make_repo()
    hub = Hub({REPO: repo}, cut_once={"model-00001-of-00002.safetensors": 70_000})  # a resume appends: locally
    with HubServer(hub) as url:
        path = ensure_model(REPO, cache_dir=stage.root, sources=[Source("hf", url)], progress=False, cache_mode="stage")
    assert stage.refused == []
    assert path == stage.root / "hub" / "acme--tiny-model"
    assert_model(path, repo)
    # every file written once, the marker last; the local copy is gone (container disk is small)
    copied = [Path(w).relative_to(path).as_posix() for w in stage.writes if Path(w).is_relative_to(path)]
    assert sorted(copied[:-1]) == sorted(WANTED) and copied[-1] == COMPLETE_MARKER
    assert not (tmp_path / "local-disk" / "hub" / "acme--tiny-model").exists()
    assert not list(stage.root.rglob("*.part")) and not list(stage.root.rglob("*.lock"))
    # a restarted container (empty local disk) finds it on the stage without a request
    before = len(hub.requests)
    assert (
        ensure_model(REPO, cache_dir=stage.root, sources=[Source("hf", "http://127.0.0.1:9")], cache_mode="stage")
        == path
    )
    assert len(hub.requests) == before


def test_an_interrupted_copy_is_finished_without_rewriting_good_files(stage: StageRules) -> None:
    repo = make_repo()
    final = stage.root / "hub" / "acme--tiny-model"
    final.mkdir(parents=True)
    (final / "config.json").write_bytes(repo["config.json"])  # copied before the crash, intact
    (final / "tokenizer.json").write_bytes(b'{"ver')  # cut off mid-copy
    stage.writes.clear()
    with HubServer(Hub({REPO: repo})) as url:
        path = ensure_model(REPO, cache_dir=stage.root, sources=[Source("hf", url)], progress=False, cache_mode="stage")
    assert stage.refused == [] and path == final
    assert_model(path, repo)
    written = {Path(w).relative_to(final).as_posix() for w in stage.writes if Path(w).is_relative_to(final)}
    assert "config.json" not in written and "tokenizer.json" in written  # deleted, then created anew


def test_a_second_instance_serves_its_local_copy_and_leaves_the_stage_alone(
    stage: StageRules, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import time

    claims = stage.root / "hub" / ".writers" / "acme--tiny-model"
    claims.mkdir(parents=True)
    (claims / "aaa-other-instance").write_text(json.dumps({"host": "aaa-other-instance", "time": time.time()}))
    stage.writes.clear()
    repo = make_repo()
    with HubServer(Hub({REPO: repo})) as url:
        path = ensure_model(REPO, cache_dir=stage.root, sources=[Source("hf", url)], progress=False, cache_mode="stage")
    assert path == tmp_path / "local-disk" / "hub" / "acme--tiny-model"
    assert_model(path, repo)
    assert stage.writes == [] and stage.refused == []
    assert "another instance is copying it" in capsys.readouterr().err


def test_a_stale_claim_does_not_block_the_copy(stage: StageRules) -> None:
    import json

    claims = stage.root / "hub" / ".writers" / "acme--tiny-model"
    claims.mkdir(parents=True)
    (claims / "aaa-died").write_text(json.dumps({"host": "aaa-died", "time": 0}))
    with HubServer(Hub({REPO: make_repo()})) as url:
        path = ensure_model(REPO, cache_dir=stage.root, sources=[Source("hf", url)], progress=False, cache_mode="stage")
    assert path.parent == stage.root / "hub" and stage.refused == []


def test_our_own_stale_claim_is_replaced_not_updated(stage: StageRules) -> None:
    import json
    import socket

    claims = stage.root / "hub" / ".writers" / "acme--tiny-model"
    claims.mkdir(parents=True)
    (claims / socket.gethostname()).write_text(json.dumps({"host": "me", "time": 0}))  # a start hours ago
    with HubServer(Hub({REPO: make_repo()})) as url:
        path = ensure_model(REPO, cache_dir=stage.root, sources=[Source("hf", url)], progress=False, cache_mode="stage")
    assert path.parent == stage.root / "hub" and stage.refused == []
    assert json.loads((claims / socket.gethostname()).read_text())["time"] > 0


def test_gguf_in_stage_mode_via_the_environment(stage: StageRules, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPCS_LLM_CACHE_MODE", "stage")
    repo = make_repo()
    with HubServer(Hub({REPO: repo})) as url:
        path = ensure_model(
            REPO,
            cache_dir=stage.root,
            fmt="gguf",
            gguf_file="tiny-q4_k_m.gguf",
            sources=[Source("modelscope", url)],
            progress=False,
        )
    assert path.read_bytes() == repo["tiny-q4_k_m.gguf"] and path.is_relative_to(stage.root)
    assert stage.refused == []


def test_readonly_mode_never_writes_and_says_what_is_missing(
    stage: StageRules, capsys: pytest.CaptureFixture[str]
) -> None:
    staged = stage.root / "models" / "qwen2.5-0.5b-instruct"
    staged.mkdir(parents=True)
    (staged / "config.json").write_text("{}")
    stage.writes.clear()
    assert ensure_model("qwen2.5-0.5b-instruct", cache_dir=stage.root, cache_mode="readonly") == staged
    with pytest.raises(ModelNotAvailable, match="read-only cache"):
        ensure_model(
            "qwen2.5-1.5b-instruct",
            cache_dir=stage.root,
            cache_mode="readonly",
            sources=[Source("hf", "http://127.0.0.1:9")],
        )
    assert (
        main(["models", "pull", "qwen2.5-1.5b-instruct", "--cache-dir", str(stage.root), "--cache-mode", "readonly"])
        == 2
    )
    assert "read-only cache" in capsys.readouterr().err
    assert stage.writes == [] and stage.refused == []


def test_an_unknown_cache_mode_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPCS_LLM_CACHE_MODE", "s3")
    with pytest.raises(ValueError, match="cache mode 's3' is not one of posix, stage, readonly"):
        ensure_model("qwen2.5-0.5b-instruct", cache_dir=tmp_path)
