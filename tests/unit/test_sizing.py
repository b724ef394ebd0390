"""Catalogue, GPU memory estimate (against hand-computed numbers) and `models recommend`."""

from __future__ import annotations

import pytest

from spcs_llm.cli import main
from spcs_llm.errors import UnknownModel
from spcs_llm.models.catalog import CATALOG, CORTEX_EMBED_NAMES, catalog_entry, find_model
from spcs_llm.models.sizing import FAMILIES, GIB, DoesNotFit, GpuFamily, estimate_memory, fit, recommend


def family(name: str) -> GpuFamily:
    return next(f for f in FAMILIES if f.name == name)


def test_catalogue_entries_are_complete() -> None:
    for m in CATALOG.values():
        assert m.hf_repo.count("/") == 1 and m.ms_repo.count("/") == 1, m.name
        assert m.params_b > 0 and m.layers and m.heads and m.kv_heads and m.head_dim, m.name
        assert m.heads % m.kv_heads == 0, m.name  # grouped-query attention: whole groups
        assert (m.kind == "embedding") == (m.embed_dim is not None), m.name
    for dim, names in CORTEX_EMBED_NAMES.items():  # every Cortex embedding name we ship has the right width
        for n in names:
            if n in CATALOG:
                assert CATALOG[n].embed_dim == dim


def test_find_model_by_name_or_hub_id() -> None:
    assert find_model("Qwen/Qwen2.5-7B-Instruct").name == "qwen2.5-7b-instruct"
    assert find_model("LLM-Research/Meta-Llama-3.1-8B-Instruct").name == "llama-3.1-8b-instruct"
    assert catalog_entry("qwen2.5-coder-7b-instruct-q4_k_m.gguf").name == "qwen2.5-coder-7b-instruct"
    with pytest.raises(UnknownModel, match='unknown model "gpt-5"'):
        find_model("gpt-5")


def test_memory_estimate_matches_hand_computation() -> None:
    # Llama-3.1-8B: 8.03e9 params x 2 bytes; KV per token 2 x 32 layers x 8 heads x 128 x 2 bytes = 131072 B,
    # x 8192 tokens x 8 sequences = 8 GiB exactly.
    e = estimate_memory(find_model("llama-3.1-8b-instruct"), 8192, 8)
    assert e.weights_gib == pytest.approx(8.03e9 * 2 / GIB)
    assert e.kv_cache_gib == 8.0
    assert e.total_gib == pytest.approx(8.03e9 * 2 / GIB + 8.0 + 2.0)
    # Qwen2.5-7B over 4 GPUs: 4 KV heads -> 1 per GPU: 2 x 28 x 1 x 128 x 2 = 14336 B per token.
    e = estimate_memory(find_model("qwen2.5-7b-instruct"), 16384, 16, tensor_parallel=4)
    assert e.kv_cache_gib == pytest.approx(14336 * 16384 * 16 / GIB)
    assert e.weights_gib == pytest.approx(7.62e9 * 2 / 4 / GIB)
    # GLM-4-9B has 2 KV heads: over 4 GPUs each still holds one (vLLM replicates), so KV does not shrink past 2.
    glm = find_model("glm-4-9b-chat")
    one_head = pytest.approx(2 * 40 * 1 * 128 * 2 * 1000 / GIB)
    assert estimate_memory(glm, 1000, 1, tensor_parallel=4).kv_cache_gib == one_head
    assert estimate_memory(glm, 1000, 1, tensor_parallel=2).kv_cache_gib == one_head
    # Embedding models keep no KV cache.
    assert estimate_memory(find_model("bge-m3"), 8192, 64).kv_cache_gib == 0


def test_recommend_picks_the_smallest_family_that_fits() -> None:
    llama = find_model("llama-3.1-8b-instruct")
    # 15.0 weights + 1.0 KV + 2 = 18.0 GiB <= 22.5 x 0.9 = 20.25: one A10G
    assert [r.family.name for r in recommend(llama, context=8192, concurrency=1)] == [
        "GPU_NV_S",
        "GPU_NV_SM",
        "GPU_GCP_NV_L4_1_24G",
    ]
    # 8 sequences: 25.0 GiB no longer fits 24 GB cards; L40S on AWS, 2 x A10 on Azure, 4 x L4 on GCP
    picks = recommend(llama, context=8192, concurrency=8)
    assert [(r.family.name, r.tensor_parallel) for r in picks] == [
        ("GPU_L40S_G1_8", 1),
        ("GPU_NV_2M", 2),
        ("GPU_GCP_NV_L4_4_24G", 4),
    ]
    aws = picks[0]
    assert aws.vllm_args() == [
        "--tensor-parallel-size",
        "1",
        "--max-model-len",
        "8192",
        "--gpu-memory-utilization",
        "0.90",
        "--max-num-seqs",
        "23",
        "--dtype",
        "bfloat16",
    ]
    # (45 x 0.9 - 14.96 - 2) / (131072 x 8192 / GiB = 1 GiB per sequence) = 23.5 -> 23 full-context sequences


def test_t4_runs_float16_and_heads_must_split_evenly() -> None:
    small = recommend(find_model("qwen2.5-0.5b-instruct"), context=4096, concurrency=4, cloud="azure")
    assert small[0].family.name == "GPU_NV_XS" and small[0].dtype == "float16"
    assert fit(find_model("qwen2.5-7b-instruct"), family("GPU_NV_L"), 4096, 1) is None  # 28 heads / 8 GPUs


def test_recommend_refuses_what_cannot_fit() -> None:
    with pytest.raises(DoesNotFit, match="yi-1.5-9b-chat supports at most 4096 tokens of context; 8192 asked"):
        recommend(find_model("yi-1.5-9b-chat"), context=8192)
    with pytest.raises(DoesNotFit, match=r"qwen3-32b at context 32768 x 512 .* needs about \d+\.\d GiB"):
        recommend(find_model("qwen3-32b"), context=32768, concurrency=512)
    with pytest.raises(DoesNotFit, match="no family fits"):
        recommend(find_model("qwen3-32b"), context=32768, concurrency=8, family="GPU_NV_S")


def test_recommend_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "models",
                "recommend",
                "llama-3.1-8b-instruct",
                "--context",
                "8192",
                "--concurrency",
                "8",
                "--cloud",
                "aws",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "GPU_L40S_G1_8" in out and "--max-num-seqs 23" in out and "azure" not in out
    assert main(["models", "recommend", "qwen3-32b", "--context", "32768", "--concurrency", "512"]) == 2
    assert "no family fits" in capsys.readouterr().err
    assert main(["models", "info", "no-such-model"]) == 2
    assert 'unknown model "no-such-model"' in capsys.readouterr().err


def test_list_and_info_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in CATALOG) and "llama3.1-8b" in out
    assert main(["models", "info", "glm-4-9b-chat"]) == 0
    out = capsys.readouterr().out
    assert "ZhipuAI/glm-4-9b-chat-hf" in out and "40 layers" in out and "2 KV heads" in out
