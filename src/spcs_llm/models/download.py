"""Model downloads from Hugging Face mirrors and ModelScope, resumable, verified and atomic.

Where SPCS runs, huggingface.co is often unreachable; HF-Mirror (``HF_ENDPOINT``, default https://hf-mirror.com)
and ModelScope are. Sources are tried in order (default: HF-Mirror, then ModelScope); the first one that lists the
repository and delivers every file intact wins.

The hub HTTP layouts used (the same ones the official clients use):

* Hugging Face (and HF-Mirror, which proxies it): the file list with sizes is
  ``GET {endpoint}/api/models/{repo}/tree/{revision}?recursive=true`` (JSON list of ``{"type": "file", "path",
  "size", "oid", "lfs": {"oid": <sha256>, "size"}}``; pages follow the ``Link: <...>; rel="next"`` header), as in
  ``huggingface_hub.HfApi.list_repo_tree``. Files are ``GET {endpoint}/{repo}/resolve/{revision}/{path}`` (a redirect
  to a CDN for LFS files), as in ``huggingface_hub.hf_hub_url``. LFS files are checked against their sha256
  (``lfs.oid``); small git files against their git blob sha1 (``oid``).
* ModelScope: the list is ``GET {endpoint}/api/v1/models/{id}/repo/files?Revision={rev}&Recursive=true`` (JSON
  ``{"Code": 200, "Data": {"Files": [{"Path", "Type": "blob"|"tree", "Size", "Sha256"}]}}``), and a file is
  ``GET {endpoint}/api/v1/models/{id}/repo?Revision={rev}&FilePath={path}``, as in ``modelscope.hub.api.HubApi
  .get_model_files`` and ``modelscope.hub.file_download`` (``FILE_HASH = 'Sha256'``).

Layout of the cache (meant to be a mounted SPCS stage or block volume, so a restarted container skips the download)::

    {cache}/hub/{repo id with / -> --}[--{gguf file}]/     a complete model; holds COMPLETE_MARKER
    {cache}/hub/.partial/{same name}/                      an unfinished download: finished files + *.part files
    {cache}/models/{catalogue name}                        pre-staged by hand (a directory or a .gguf file)

A directory in ``hub/`` exists only once every file was verified: the download goes into ``.partial``, the marker
is written last, and the directory is renamed into place. A crash at any point leaves either nothing in ``hub/`` or
a complete model. A complete model is used without any network request; the next download resumes from the
``.part`` files with an HTTP ``Range`` request.

Cache modes (``cache_mode=`` or ``$SPCS_LLM_CACHE_MODE``), for the file system the cache lives on:

* ``posix`` (default): local disk or an SPCS block volume. Everything above happens in the cache itself.
* ``stage``: an SPCS stage volume, which refuses appends and random writes and has no locking and no atomic
  rename. The download (with its ``.part`` appends, lock and renames) happens on container-local disk
  (``$SPCS_LLM_STAGING_DIR``, default ``{tmp}/spcs-llm-staging``); each finished, verified file is then copied into
  the stage once, sequentially, by plain create-and-write, and the marker is copied last. Nothing on the stage is
  ever appended to, locked, renamed or rewritten. With several instances, one writer is chosen through
  write-once claim files (``hub/.writers/{name}/{host}``); the others serve their local copy.
* ``readonly``: pre-staged weights (a stage filled with ``PUT`` or ``snow stage copy``). Nothing is ever written or
  downloaded; a model that is not there is an error naming what is missing (like ``offline``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import inspect
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import quote

import httpx
from tqdm import tqdm

from ..errors import UnknownModel
from .catalog import find_model
from .wheels import default_cache_dir

COMPLETE_MARKER = ".spcs-llm-complete.json"
DEFAULT_HF_ENDPOINT = "https://hf-mirror.com"
DEFAULT_MODELSCOPE_ENDPOINT = "https://www.modelscope.cn"
CHUNK = 1 << 20
CACHE_MODES = ("posix", "stage", "readonly")
CacheMode = Literal["posix", "stage", "readonly"]
CLAIM_WAIT_S = 5.0  # stage mode: how long a writer waits for other instances' claims to show before comparing
CLAIM_STALE_S = 2 * 3600.0  # a claim older than this (a writer that died) no longer blocks others

# What an engine needs from a transformers-layout repository (top-level files), plus sentence-transformers'
# pooling config. Weights: safetensors; pytorch *.bin only when a repository has no safetensors.
WANTED = (
    "*.safetensors",
    "*.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "*.tiktoken",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "configuration_*.py",
    "modeling_*.py",
    "tokenization_*.py",
)
WANTED_NESTED = ("1_Pooling/config.json",)
FALLBACK_WEIGHTS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")


# Hosts each endpoint's downloads redirect to (large files go to a CDN). SPCS network rules take exact host names,
# no wildcards, so a rule must list these as well as the endpoint. Sources (docs/models.md, "Mirrors and the hosts
# they redirect to"): HF-Mirror's LFS redirects to cdn-lfs.hf-mirror.com / cdn-lfs-us-1.hf-mirror.com and
# ModelScope's to cdn-lfs-cn-1.modelscope.cn, as recorded in public download URLs and notes; huggingface.co's to
# its LFS CDNs and Xet hosts (Hugging Face's "downloading behind a proxy or firewall" page); ModelScope's object
# store host too. Observed by others, not verified from here: docs/deploy.md says to check them with `curl -sI -L`
# before the first deploy. The deploy's network rule lists them (deploy/config.py egress_hosts).
REDIRECT_HOSTS: dict[str, tuple[str, ...]] = {
    "hf-mirror.com": ("cdn-lfs.hf-mirror.com", "cdn-lfs-us-1.hf-mirror.com"),
    "www.modelscope.cn": ("cdn-lfs-cn-1.modelscope.cn", "modelscope.oss-cn-beijing.aliyuncs.com"),
    "modelscope.cn": ("www.modelscope.cn", "cdn-lfs-cn-1.modelscope.cn", "modelscope.oss-cn-beijing.aliyuncs.com"),
    "huggingface.co": (
        "cdn-lfs.huggingface.co",
        "cdn-lfs-us-1.huggingface.co",
        "cdn-lfs.hf.co",
        "cdn-lfs-us-1.hf.co",
        "us.aws.cdn.hf.co",
        "cas-bridge.xethub.hf.co",
        "cas-server.xethub.hf.co",
        "transfer.xethub.hf.co",
    ),
}


def egress_hosts(sources: list[Source] | None = None) -> list[str]:
    """``host:443`` (or the URL's port) for every source endpoint and the CDN hosts it redirects to, in order: what
    an SPCS network rule's VALUE_LIST must hold for downloads from ``sources`` (default: ``default_sources()``)."""
    hosts: list[str] = []
    for source in default_sources() if sources is None else sources:
        url = httpx.URL(source.endpoint)
        port = url.port or (443 if url.scheme == "https" else 80)
        for host in (url.host, *REDIRECT_HOSTS.get(url.host, ())):
            if f"{host}:{port}" not in hosts:
                hosts.append(f"{host}:{port}")
    return hosts


class DownloadError(RuntimeError):
    """A model could not be downloaded; the message says from where and why."""


class IntegrityError(DownloadError):
    """A downloaded file's size or hash differs from what the hub lists."""


class ModelNotAvailable(DownloadError, FileNotFoundError):
    """Offline mode (or no source) and the model is not in the cache; the message names what is missing."""


@dataclass(frozen=True)
class Source:
    """One place to download from: ``kind`` is the hub layout, ``endpoint`` its base URL."""

    kind: Literal["hf", "modelscope"]
    endpoint: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.endpoint})"


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None = None
    git_sha1: str | None = None


def default_sources(
    spec: str | None = None, *, hf_endpoint: str | None = None, modelscope_endpoint: str | None = None
) -> list[Source]:
    """The sources in order. Each argument falls back to the environment, then to the default:
    ``spec`` to ``SPCS_LLM_SOURCES`` (default ``hf,modelscope``), the endpoints to ``HF_ENDPOINT`` (default
    https://hf-mirror.com) and ``MODELSCOPE_ENDPOINT`` (default https://www.modelscope.cn). An entry of ``spec``
    may carry its own URL: ``modelscope,hf=https://my-mirror.example``."""
    spec = spec if spec is not None else os.environ.get("SPCS_LLM_SOURCES", "hf,modelscope")
    defaults = {
        "hf": hf_endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT,
        "modelscope": modelscope_endpoint or os.environ.get("MODELSCOPE_ENDPOINT") or DEFAULT_MODELSCOPE_ENDPOINT,
    }
    sources = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, url = item.partition("=")
        if kind == "hf":
            sources.append(Source("hf", (url or defaults["hf"]).rstrip("/")))
        elif kind == "modelscope":
            sources.append(Source("modelscope", (url or defaults["modelscope"]).rstrip("/")))
        else:
            raise ValueError(f"unknown model source {kind!r} in {spec!r}: use hf or modelscope")
    return sources


@dataclass(frozen=True)
class Target:
    """What to fetch: repository ids per hub and, for llama.cpp, one GGUF file."""

    label: str
    hf_repo: str
    ms_repo: str
    gguf_file: str = ""

    @property
    def dir_name(self) -> str:
        base = self.hf_repo.replace("/", "--")
        return f"{base}--{self.gguf_file}" if self.gguf_file else base


def resolve_target(name: str, fmt: Literal["safetensors", "gguf"] = "safetensors", gguf_file: str = "") -> Target:
    """A catalogue name or an ``org/repo`` id -> the repositories to fetch from (and the GGUF file, if any)."""
    try:
        info = find_model(name)
    except UnknownModel:
        if name.count("/") != 1:
            raise UnknownModel(name) from None
        if fmt == "gguf" and not gguf_file:
            raise DownloadError(f"{name}: say which GGUF file to fetch (gguf_file=...)") from None
        return Target(name, name, name, gguf_file if fmt == "gguf" else "")
    if fmt == "gguf":
        if gguf_file:
            return Target(info.name, info.gguf_repo or info.hf_repo, info.gguf_repo or info.ms_repo, gguf_file)
        if not (info.gguf_repo and info.gguf_file):
            raise DownloadError(f"{info.name}: the catalogue names no GGUF file for it; use a local .gguf path")
        return Target(info.name, info.gguf_repo, info.gguf_repo, info.gguf_file)
    return Target(info.name, info.hf_repo, info.ms_repo or info.hf_repo)


def resolve_cache_mode(mode: str | None = None) -> CacheMode:
    """``mode``, else ``$SPCS_LLM_CACHE_MODE``, else ``posix``; anything else is a ValueError naming the choices."""
    value = (mode or os.environ.get("SPCS_LLM_CACHE_MODE") or "posix").strip().lower()
    if value not in CACHE_MODES:
        raise ValueError(f"cache mode {value!r} is not one of {', '.join(CACHE_MODES)} (SPCS_LLM_CACHE_MODE)")
    return value  # type: ignore[return-value]


def staging_dir() -> Path:
    """Container-local disk where stage mode downloads before copying into the stage."""
    return Path(os.environ.get("SPCS_LLM_STAGING_DIR") or Path(tempfile.gettempdir()) / "spcs-llm-staging")


def ensure_model(
    name_or_path: str,
    *,
    cache_dir: Path | None = None,
    offline: bool = False,
    sources: list[Source] | None = None,
    fmt: Literal["safetensors", "gguf"] = "safetensors",
    gguf_file: str = "",
    revision: str | None = None,
    progress: bool = True,
    retries: int = 3,
    cache_mode: str | None = None,
) -> Path:
    """A local directory holding the model's files (for ``fmt="gguf"``: the path of the one GGUF file).

    ``name_or_path`` is a local path (used as it is), a catalogue name or an ``org/repo`` id. A model already
    complete in the cache, or pre-staged under ``{cache}/models/{name}``, is returned without any network request.
    Otherwise it is downloaded from ``sources`` (default: ``default_sources()``) in order. ``offline=True`` (and
    ``cache_mode="readonly"``) never touches the network and raises ModelNotAvailable, naming what is missing,
    when the model is not there. ``cache_mode`` (see the module doc) says how the cache may be written.
    """
    local = Path(name_or_path).expanduser()
    if local.exists():
        return local
    mode = resolve_cache_mode(cache_mode)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = resolve_target(name_or_path, fmt, gguf_file)
    final = cache_dir / "hub" / target.dir_name
    found = _cached(final, target) or _prestaged(cache_dir, target)
    if found is not None:
        return found
    if offline or mode == "readonly":
        raise ModelNotAvailable(_missing_message(cache_dir, final, target, mode))
    sources = default_sources() if sources is None else sources
    if not sources:
        raise ModelNotAvailable(f"{target.label}: not cached in {cache_dir} and no download source is configured")
    work = staging_dir() if mode == "stage" else cache_dir  # where appends, the lock and renames happen
    local_final = work / "hub" / target.dir_name
    with _lock(work / "hub" / f".{target.dir_name}.lock"):
        found = _cached(local_final, target)  # another process may have finished it while we waited
        if found is None:
            _download(target, local_final, sources, revision=revision, progress=progress, retries=retries)
    if mode == "stage":
        return _copy_into_stage(local_final, final, target)
    found = _cached(final, target)
    assert found is not None, "a completed download must be in the cache"
    return found


def _copy_into_stage(local_final: Path, final: Path, target: Target) -> Path:
    """Copy a complete, verified download from local disk into the stage: each file created and written once, in
    order, the marker last; no append, lock, rename or rewrite on the stage. Returns the stage copy, or the local
    one when another instance is the writer or the stage refused a write (the service still starts)."""
    local = _cached(local_final, target)
    assert local is not None, "a completed download must be on local disk"
    found = _cached(final, target)
    if found is not None:  # another instance finished the copy meanwhile
        return found
    try:
        writer = _claim_writer(final)
    except OSError as exc:
        print(
            f"spcs-llm: {target.label}: could not claim the copy into the stage {final} ({exc}); serving the "
            f"local copy {local}",
            file=sys.stderr,
        )
        return local
    if not writer:
        print(
            f"spcs-llm: {target.label}: another instance is copying it into {final.parent}; serving the local "
            f"copy {local}",
            file=sys.stderr,
        )
        return local
    try:
        files = sorted(p for p in local_final.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER)
        for src in [*files, local_final / COMPLETE_MARKER]:  # the marker last: it says the copy is complete
            _write_once(src, final / src.relative_to(local_final))
    except OSError as exc:
        print(
            f"spcs-llm: {target.label}: could not copy it into the stage {final} ({exc}); serving the local "
            f"copy {local}; the next start tries again",
            file=sys.stderr,
        )
        return local
    shutil.rmtree(local_final, ignore_errors=True)  # container disk is small; the stage holds it now
    found = _cached(final, target)
    assert found is not None, "the marker was copied last"
    return found


def _write_once(src: Path, dest: Path) -> None:
    """Create ``dest`` and write it sequentially. A same-size file left by an interrupted copy is kept when its
    bytes match; a different one is deleted first (never opened for update)."""
    size = src.stat().st_size
    if dest.is_file():
        if dest.stat().st_size == size and _hash(dest, hashlib.sha256()) == _hash(src, hashlib.sha256()):
            return
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        while chunk := fin.read(CHUNK):
            fout.write(chunk)


def _claim_writer(final: Path) -> bool:
    """Stage mode with several instances: pick one writer without locks or renames. Each instance writes only its
    own claim file (named after its host name), waits for the others' claims to show, and the lowest live name
    writes. An instance that sees a live claim of someone else before claiming stays a reader."""
    claims = final.parent / ".writers" / final.name
    me = socket.gethostname() or "instance"
    claims.mkdir(parents=True, exist_ok=True)
    if [c for c in _live_claims(claims) if c != me]:
        return False
    if me not in _live_claims(claims):
        (claims / me).unlink(missing_ok=True)  # our own claim from an earlier start, gone stale: a new file, no update
        with open(claims / me, "xb") as fh:
            fh.write(json.dumps({"host": me, "time": time.time()}).encode())
    time.sleep(CLAIM_WAIT_S)
    live = _live_claims(claims)
    return not live or live[0] == me


def _live_claims(claims: Path) -> list[str]:
    now, live = time.time(), []
    for path in claims.iterdir():
        try:
            stamp = float(json.loads(path.read_text(encoding="utf-8"))["time"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable or half-written: not a claim
        if now - stamp < CLAIM_STALE_S:
            live.append(path.name)
    return sorted(live)


def _cached(final: Path, target: Target) -> Path | None:
    if not (final / COMPLETE_MARKER).is_file():
        return None
    return final / target.gguf_file if target.gguf_file else final


def _prestaged(cache_dir: Path, target: Target) -> Path | None:
    staged = cache_dir / "models" / target.label
    if target.gguf_file:
        for cand in (staged / target.gguf_file, cache_dir / "models" / target.gguf_file):
            if cand.is_file():
                return cand
        return None
    return staged if (staged / "config.json").is_file() else None


def _missing_message(cache_dir: Path, final: Path, target: Target, mode: str = "posix") -> str:
    partial = cache_dir / "hub" / ".partial" / target.dir_name
    what = f"{target.label} ({target.gguf_file or target.hf_repo})"
    how = "in the read-only cache (cache mode readonly)" if mode == "readonly" else "offline"
    msg = (
        f"{what} is not available {how}: no complete download in {final} and nothing pre-staged in "
        f"{cache_dir / 'models' / target.label}"
    )
    if partial.is_dir():
        have = sorted(p.name for p in partial.iterdir())
        msg += f"; an unfinished download is in {partial} ({len(have)} files, not usable until completed)"
    return msg + ". Run `spcs-llm models pull` where a mirror is reachable, or copy the files there."


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An advisory lock so two replicas sharing one volume do not download the same model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except (ImportError, OSError):  # some network file systems have no flock; go on without it
            pass
        yield


def _download(
    target: Target, final: Path, sources: list[Source], *, revision: str | None, progress: bool, retries: int
) -> None:
    partial = final.parent / ".partial" / target.dir_name
    partial.mkdir(parents=True, exist_ok=True)
    failures = []
    timeout = httpx.Timeout(30.0, read=120.0)
    with httpx.Client(headers={"user-agent": "spcs-llm"}, timeout=timeout, follow_redirects=True) as client:
        for source in sources:
            hub = _Hub(client, source, target, revision)
            try:
                files = select_files(hub.list_files(), target.gguf_file)
                for f in files:
                    _fetch_file(hub, f, partial, progress=progress, retries=retries)
            except (httpx.HTTPError, DownloadError, ValueError) as exc:
                failures.append(f"{source}: {_describe(exc)}")
                print(f"spcs-llm: {target.label} from {source} failed: {_describe(exc)}", file=sys.stderr)
                continue
            _complete(partial, final, source, files)
            return
    raise DownloadError(f"could not download {target.label} from any source: " + "; ".join(failures))


def _describe(exc: Exception, *, named: bool = False) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} for {exc.request.url}"
    response = getattr(exc, "response", None)  # huggingface_hub's HfHubHTTPError
    if response is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code} for {getattr(response, 'url', '')}"
    if not (isinstance(exc, httpx.HTTPError) or named):
        return str(exc)
    name = type(exc).__name__
    host = _request_host(exc)  # a CDN host missing from the network rule shows up here
    where = f" for {host}" if host else ""
    return f"{name}{where}: {exc}" if str(exc) else f"{name}{where}"


def _request_host(exc: Exception) -> str:
    """The host of the request that failed (httpx and huggingface_hub's transport errors carry it), else ''."""
    try:
        request = getattr(exc, "request", None)
    except RuntimeError:  # httpx: no request attached
        return ""
    return str(getattr(getattr(request, "url", None), "host", "") or "")


def _complete(partial: Path, final: Path, source: Source, files: list[RemoteFile]) -> None:
    """Write the marker last, then rename: a directory in hub/ is always a complete model."""
    for leftover in partial.rglob("*.part"):
        leftover.unlink()
    marker = {
        "source": str(source),
        "completed_at": time.time(),
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
    }
    (partial / COMPLETE_MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
    if final.exists():  # a stale copy without marker (a hand-made directory); keep it aside, never mix
        shutil.rmtree(final)
    os.replace(partial, final)


def select_files(files: list[RemoteFile], gguf_file: str = "") -> list[RemoteFile]:
    """Only what an engine needs: one GGUF file, or the safetensors weights plus config and tokenizer files."""
    if gguf_file:
        chosen = [f for f in files if f.path == gguf_file]
        if not chosen:
            raise DownloadError(f"{gguf_file} is not in the repository")
        return chosen
    top = [
        f
        for f in files
        if ("/" not in f.path and any(fnmatch.fnmatch(f.path, p) for p in WANTED)) or f.path in WANTED_NESTED
    ]
    if not any(f.path.endswith(".safetensors") for f in top):
        top += [f for f in files if "/" not in f.path and any(fnmatch.fnmatch(f.path, p) for p in FALLBACK_WEIGHTS)]
    if not any(f.path == "config.json" for f in top):
        raise DownloadError("the repository has no config.json; is it a model repository?")
    return top


def _hf_client() -> Any:
    """``huggingface_hub`` (the official client, kept in step with the Hub and mirrors), or None without it."""
    if os.environ.get("SPCS_LLM_HF_CLIENT") == "builtin":
        return None
    try:
        import huggingface_hub
        from huggingface_hub.file_download import http_get
    except ImportError:
        return None
    wanted = {"resume_size", "headers", "expected_size", "displayed_filename", "tqdm_class"}
    if not wanted <= set(inspect.signature(http_get).parameters):  # a version whose transfer we do not know
        return None
    return huggingface_hub


class _Hub:
    """One source's HTTP layout: list files, build a file's URL, stream a file.

    Hugging Face files are transferred by ``huggingface_hub`` when it is installed (``hf_hub_url`` and
    ``http_get``: the official client's redirect, rate-limit (429), Range and resume handling), into our own
    ``.part`` file, verified and placed by us. Listings, ModelScope, and Hugging Face without the library use our
    own client."""

    def __init__(self, client: httpx.Client, source: Source, target: Target, revision: str | None) -> None:
        self.client, self.source = client, source
        self.repo = target.hf_repo if source.kind == "hf" else target.ms_repo
        self.revision = revision or ("main" if source.kind == "hf" else "master")
        self.token = os.environ.get("HF_TOKEN") if source.kind == "hf" else None
        # only to Hugging Face sources; dropped on the cross-origin redirect to the CDN
        self.headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        self.hf = _hf_client() if source.kind == "hf" else None

    def list_files(self) -> list[RemoteFile]:
        # Our own listing (one request per page) even with huggingface_hub installed: its HfApi retries an
        # unreachable endpoint five times with backoff (~23 s) before the next source may be tried.
        return self._list_hf() if self.source.kind == "hf" else self._list_modelscope()

    def stream_hf_hub(self, f: RemoteFile, out: BinaryIO, have: int, progress: bool) -> None:
        """Append the rest of ``f`` (from byte ``have``) to ``out`` with huggingface_hub's transfer."""
        from huggingface_hub.file_download import http_get

        assert self.hf is not None, "only Hugging Face sources stream through huggingface_hub"
        url = self.hf.hf_hub_url(self.repo, f.path, revision=self.revision, endpoint=self.source.endpoint)
        try:
            http_get(
                url,
                out,
                resume_size=have,
                headers=self.headers | {"user-agent": "spcs-llm"},
                expected_size=f.size,
                displayed_filename=f.path,
                tqdm_class=None if progress else _QuietBar,
            )
        except Exception as exc:  # the library's own errors (HTTP, connection, size): reported per source
            raise DownloadError(f"{f.path}: {_describe(exc, named=True)}") from exc

    def file_url(self, path: str) -> str:
        if self.source.kind == "hf":
            return f"{self.source.endpoint}/{self.repo}/resolve/{quote(self.revision, safe='')}/{quote(path)}"
        return (
            f"{self.source.endpoint}/api/v1/models/{self.repo}/repo?Revision={quote(self.revision, safe='')}"
            f"&FilePath={quote(path, safe='')}"
        )

    def _list_hf(self) -> list[RemoteFile]:
        url: str | None = (
            f"{self.source.endpoint}/api/models/{self.repo}/tree/{quote(self.revision, safe='')}?recursive=true"
        )
        files = []
        while url:
            resp = self.client.get(url, headers=self.headers)
            resp.raise_for_status()
            for item in resp.json():
                if item.get("type") != "file":
                    continue
                lfs = item.get("lfs") or {}
                files.append(
                    RemoteFile(item["path"], item.get("size"), lfs.get("oid"), None if lfs else item.get("oid"))
                )
            url = resp.links.get("next", {}).get("url")
        return files

    def _list_modelscope(self) -> list[RemoteFile]:
        url = (
            f"{self.source.endpoint}/api/v1/models/{self.repo}/repo/files"
            f"?Revision={quote(self.revision, safe='')}&Recursive=true"
        )
        resp = self.client.get(url)
        resp.raise_for_status()
        body = resp.json()
        if body.get("Code", 200) != 200 or not isinstance(body.get("Data"), dict):
            raise DownloadError(f"ModelScope listing failed: {body.get('Message') or body.get('Code')}")
        return [
            RemoteFile(f["Path"], f.get("Size"), f.get("Sha256") or None)
            for f in body["Data"].get("Files", [])
            if f.get("Type") != "tree"
        ]


def _fetch_file(hub: _Hub, f: RemoteFile, partial: Path, *, progress: bool, retries: int) -> None:
    """Download one file into ``partial``, resuming a ``.part`` file; verified before it takes its real name."""
    dest = partial / f.path
    if dest.is_file() and _verify(dest, f) is None:
        return  # finished in an earlier, interrupted run
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resumed = part.is_file() and part.stat().st_size > 0
    _stream_with_retries(hub, f, part, progress=progress, retries=retries)
    problem = _verify(part, f)
    if problem is not None and resumed:  # the old .part may come from another source or revision: once more
        part.unlink()
        _stream_with_retries(hub, f, part, progress=progress, retries=retries)
        problem = _verify(part, f)
    if problem is not None:
        part.unlink(missing_ok=True)  # corrupt bytes must not be resumed from
        raise IntegrityError(f"{f.path} from {hub.source}: {problem}")
    os.replace(part, dest)


MAX_RETRY_AFTER_S = 60.0  # the longest Retry-After of a rate-limited (429) answer we wait out


def _stream_with_retries(hub: _Hub, f: RemoteFile, part: Path, *, progress: bool, retries: int) -> None:
    for attempt in range(retries + 1):
        try:
            return _stream(hub, f, part, progress=progress)
        except (httpx.TransportError, _ShortRead, _RateLimited) as exc:  # a cut connection: resume with Range
            if attempt == retries:
                raise DownloadError(f"{f.path}: gave up after {retries + 1} attempts ({_describe(exc)})") from exc
            wait = exc.seconds if isinstance(exc, _RateLimited) else min(2.0**attempt * 0.1, 5.0)
            time.sleep(wait)


class _RateLimited(Exception):
    """HTTP 429: wait ``seconds`` (the server's Retry-After, capped) and try again."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"HTTP 429, retry after {seconds:g} s")
        self.seconds = seconds


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 1), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:  # an HTTP date: not worth parsing, wait a little
        return 1.0


class _ShortRead(Exception):
    """The server closed the body before Content-Length bytes arrived."""


class _QuietBar(tqdm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _stream(hub: _Hub, f: RemoteFile, part: Path, *, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    if f.size is not None and have > f.size:
        part.unlink()
        have = 0
    if f.size is not None and have == f.size:
        return
    if hub.hf is not None:
        with open(part, "ab") as out:  # local disk only (posix cache, or the staging dir in stage mode)
            hub.stream_hf_hub(f, out, have, progress)
        return
    # identity: byte offsets for Range must be offsets in the file, not in a compressed stream
    headers = hub.headers | {"accept-encoding": "identity"} | ({"range": f"bytes={have}-"} if have else {})
    with hub.client.stream("GET", hub.file_url(f.path), headers=headers) as resp:
        if resp.status_code == 416:  # our part already holds the whole file (size unknown to us)
            return
        if resp.status_code == 429:
            raise _RateLimited(_retry_after(resp.headers.get("retry-after")))
        resp.raise_for_status()
        if have and resp.status_code != 206:  # the server ignored Range: start over
            have = 0
        expected = resp.headers.get("content-length")
        with (
            open(part, "ab" if have else "wb") as out,
            tqdm(
                total=f.size,
                initial=have,
                unit="B",
                unit_scale=True,
                desc=f.path,
                file=sys.stderr,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            got = 0
            for chunk in resp.iter_raw():  # as it arrives: a cut connection loses nothing already received
                out.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if expected is not None and got < int(expected):
        raise _ShortRead(f"{got} of {expected} bytes")


def _verify(path: Path, f: RemoteFile) -> str | None:
    """None when the file matches the hub's size and hash, else what is wrong."""
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        return f"size {size} bytes, the hub lists {f.size}"
    if f.sha256:
        digest = _hash(path, hashlib.sha256())
        if digest != f.sha256.lower():
            return f"sha256 mismatch (expected {f.sha256}, got {digest})"
    elif f.git_sha1:
        digest = _hash(path, hashlib.sha1(f"blob {size}\0".encode()))
        if digest != f.git_sha1.lower():
            return f"git blob sha1 mismatch (expected {f.git_sha1}, got {digest})"
    return None


def _hash(path: Path, h: hashlib._Hash) -> str:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
