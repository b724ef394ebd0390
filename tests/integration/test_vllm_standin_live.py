"""`spcs-llm serve --engine vllm` end to end on the strict stand-in `vllm serve` (as vLLM 0.11.0, the pinned image,
and as 0.33.0): Snowflake batches over real loopback HTTP to a service supervising two stand-in children.

What the audit's M1 and M2 break on a real GPU, shown here on the stand-in: COMPLETE with default options on a
model whose context is 4096 tokens (yi-1.5-6b-chat; COMPLETE's cap is 4096 output tokens) answers, cut where the
context is full; a 3,000-token text embeds (truncated to the model's 512) beside 63 short ones in one batch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import pytest

from .conftest import _free_port
from .test_engines_live import post_batch, serve

pytestmark = pytest.mark.integration
STANDIN = str(Path(__file__).resolve().parents[1] / "standin_vllm.py")


def model_dir(parent: Path, name: str, **config: object) -> Path:
    path = parent / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("version", ["0.11.0", "0.33.0"])
def test_complete_and_embed_on_vllm_answer_every_row(tmp_path: Path, version: str) -> None:
    yi = model_dir(
        tmp_path, "Yi-1.5-6B-Chat", num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096
    )
    arctic = model_dir(tmp_path, "snowflake-arctic-embed-m-v1.5", num_attention_heads=12, max_position_embeddings=512)
    port = _free_port()
    config = tmp_path / "vllm.toml"
    config.write_text(
        f'[engine]\nkind = "vllm"\nmodel = "{yi}"\nvllm_command = ["{sys.executable}", "{STANDIN}"]\n'
        f'embedding_model = "{arctic}"\nembedding_port = {port}\n'
        f'[[embeddings]]\nkind = "openai"\nupstream = "http://127.0.0.1:{port}/v1"\n'
        f'model = "snowflake-arctic-embed-m-v1.5"\ndimension = 768\n'
    )
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7",
        "STANDIN_VLLM_VERSION": version,
        "STANDIN_EMBED_DIM": "768",
        "STANDIN_RECORD": str(tmp_path / "launches.jsonl"),
    }
    with serve(tmp_path, f"vllm-{version}", "--config", str(config), env=env) as svc:
        assert httpx.get(f"{svc.base_url}/health").json()["status"] == "ok"
        launched = [json.loads(line)["argv"] for line in (tmp_path / "launches.jsonl").read_text().splitlines()]
        assert [a[a.index("--tensor-parallel-size") + 1] for a in launched] == ["8", "1"]  # 32 heads; embeddings
        story = "write a long story about the sea"
        r = post_batch(svc.base_url, "complete", [["yi-1.5-6b-chat", story], ["llama3.1-8b", "hi"]])
        assert r.status_code == 200, r.text
        (_, long_text), (_, short) = r.json()["data"]
        prompt = 7 + 4  # the stand-in's count: seven words and the chat template's markers
        assert len(long_text.split()) == 4096 - prompt and short == "echo:hi"
        r = post_batch(svc.base_url, "complete", [["yi-1.5-6b-chat", [{"role": "user", "content": story}], {}]])
        assert r.status_code == 200, r.text
        usage = json.loads(r.json()["data"][0][1])["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, 4096 - prompt)
        texts = [f"short text number {i}" for i in range(63)]
        texts.insert(20, "word " * 3000)
        r = post_batch(svc.base_url, "embed_text_768", [["snowflake-arctic-embed-m-v1.5", t] for t in texts])
        assert r.status_code == 200, r.text
        vectors = [v for _, v in r.json()["data"]]
        assert len(vectors) == 64 and all(len(v) == 768 for v in vectors)
        assert vectors[20][0] / vectors[20][1] == pytest.approx(512, rel=1e-3)  # truncated to 512 tokens
        assert vectors[0][0] / vectors[0][1] == pytest.approx(6, rel=1e-3)  # 4 words, [CLS] and [SEP]
