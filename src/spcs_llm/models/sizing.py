"""GPU memory estimates and the SPCS instance family + vLLM settings that fit a model.

The estimate is deliberately plain arithmetic, so that a reader can check it by hand:

    weights  = parameters x bytes per parameter of the dtype                       (split over tensor parallel)
    KV cache = 2 (K and V) x layers x KV heads x head dim x bytes x context x concurrent sequences
               (KV heads split over tensor parallel; a GPU holds at least one KV head, vLLM replicates them)
    overhead = OVERHEAD_GIB per GPU: CUDA context, cuBLAS workspace, CUDA graphs, activation peak

vLLM takes ``gpu_memory_utilization`` x the GPU's memory for itself; what the weights and overhead leave of it is KV
cache. A model fits a family when weights + overhead + the KV cache for ``context`` x ``concurrency`` tokens fit in
that budget on every GPU. The GPU table is ``../shared/docs/snowflake-contract.md`` §2.4; memory per GPU is what
``nvidia-smi`` reports for that GPU (approximate), not the marketing number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .catalog import ModelInfo

GIB = 1024**3
OVERHEAD_GIB = 2.0
DEFAULT_UTILIZATION = 0.90
MAX_NUM_SEQS_CAP = 256  # vLLM's own default; more sequences than this rarely helps throughput
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}


class DoesNotFit(ValueError):
    """No instance family (or not the one asked for) can hold the model at the requested context/concurrency."""


@dataclass(frozen=True)
class MemoryEstimate:
    """GiB per GPU, for one tensor-parallel degree."""

    weights_gib: float
    kv_cache_gib: float
    overhead_gib: float
    tensor_parallel: int = 1

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.kv_cache_gib + self.overhead_gib


@dataclass(frozen=True)
class GpuFamily:
    """An SPCS GPU instance family."""

    name: str
    cloud: str
    gpu: str
    gpus: int
    gib_per_gpu: float
    on_request: bool = False
    bf16: bool = True  # T4 (Turing) has no bfloat16: vLLM must run in float16 there

    @property
    def total_gib(self) -> float:
        return self.gpus * self.gib_per_gpu


# nvidia-smi totals: T4 15360 MiB, A10G/A10/L4 ~23028 MiB, L40S 46068 MiB, A100 40960 / 81920 MiB,
# RTX PRO 6000 Blackwell ~97887 MiB.
_T4, _A10, _L40S, _A100_40, _A100_80, _R6K = 15.0, 22.5, 45.0, 40.0, 80.0, 95.6
FAMILIES: tuple[GpuFamily, ...] = (
    GpuFamily("GPU_NV_S", "aws", "A10G", 1, _A10),
    GpuFamily("GPU_NV_M", "aws", "A10G", 4, _A10),
    GpuFamily("GPU_NV_L", "aws", "A100-40GB", 8, _A100_40, on_request=True),
    GpuFamily("GPU_L40S_G1_8", "aws", "L40S", 1, _L40S),
    GpuFamily("GPU_L40S_G1_48", "aws", "L40S", 4, _L40S, on_request=True),
    GpuFamily("GPU_L40S_G1_192", "aws", "L40S", 8, _L40S, on_request=True),
    GpuFamily("GPU_R6K_G1_8", "aws", "RTX PRO 6000", 1, _R6K),
    GpuFamily("GPU_R6K_G1_48", "aws", "RTX PRO 6000", 2, _R6K, on_request=True),
    GpuFamily("GPU_R6K_G1_96", "aws", "RTX PRO 6000", 4, _R6K, on_request=True),
    GpuFamily("GPU_R6K_G1_192", "aws", "RTX PRO 6000", 8, _R6K, on_request=True),
    GpuFamily("GPU_NV_XS", "azure", "T4", 1, _T4, bf16=False),
    GpuFamily("GPU_NV_SM", "azure", "A10", 1, _A10),
    GpuFamily("GPU_NV_2M", "azure", "A10", 2, _A10),
    GpuFamily("GPU_NV_3M", "azure", "A100-80GB", 2, _A100_80, on_request=True),
    GpuFamily("GPU_NV_SL", "azure", "A100-80GB", 4, _A100_80, on_request=True),
    GpuFamily("GPU_GCP_NV_L4_1_24G", "gcp", "L4", 1, _A10),
    GpuFamily("GPU_GCP_NV_L4_4_24G", "gcp", "L4", 4, _A10),
    GpuFamily("GPU_A100_G1_12", "gcp", "A100-40GB", 1, _A100_40, on_request=True),
    GpuFamily("GPU_A100_G1_48", "gcp", "A100-40GB", 4, _A100_40, on_request=True),
    GpuFamily("GPU_GCP_NV_A100_8_40G", "gcp", "A100-40GB", 8, _A100_40, on_request=True),
)
CLOUDS = ("aws", "azure", "gcp")


def kv_bytes_per_token(info: ModelInfo, tensor_parallel: int = 1, kv_bytes: float = 2.0) -> float:
    """KV-cache bytes one token takes on one GPU. Encoder (embedding) models keep no KV cache."""
    if info.kind == "embedding":
        return 0.0
    kv_heads_per_gpu = max(1, math.ceil(info.kv_heads / tensor_parallel))
    return 2 * info.layers * kv_heads_per_gpu * info.head_dim * kv_bytes


def estimate_memory(
    info: ModelInfo,
    context: int,
    concurrency: int = 1,
    *,
    tensor_parallel: int = 1,
    kv_bytes: float = 2.0,
    overhead_gib: float = OVERHEAD_GIB,
) -> MemoryEstimate:
    """GPU memory per GPU for ``concurrency`` sequences of ``context`` tokens each (see the module docstring)."""
    if info.params_b <= 0 or (info.kind == "chat" and not (info.layers and info.kv_heads and info.head_dim)):
        raise ValueError(f"{info.name}: the catalogue lacks the numbers needed to size it")
    if info.dtype not in BYTES_PER_PARAM:
        raise ValueError(f"{info.name}: unknown weight dtype {info.dtype!r}")
    weights = info.params_b * 1e9 * BYTES_PER_PARAM[info.dtype] / tensor_parallel
    kv = kv_bytes_per_token(info, tensor_parallel, kv_bytes) * context * concurrency
    return MemoryEstimate(weights / GIB, kv / GIB, overhead_gib, tensor_parallel)


@dataclass(frozen=True)
class Recommendation:
    """An instance family and the vLLM settings for it."""

    family: GpuFamily
    estimate: MemoryEstimate
    tensor_parallel: int
    max_model_len: int
    gpu_memory_utilization: float
    max_num_seqs: int
    dtype: str

    def vllm_args(self) -> list[str]:
        return [
            "--tensor-parallel-size",
            str(self.tensor_parallel),
            "--max-model-len",
            str(self.max_model_len),
            "--gpu-memory-utilization",
            f"{self.gpu_memory_utilization:.2f}",
            "--max-num-seqs",
            str(self.max_num_seqs),
            "--dtype",
            self.dtype,
        ]


def fit(
    info: ModelInfo, family: GpuFamily, context: int, concurrency: int, utilization: float = DEFAULT_UTILIZATION
) -> Recommendation | None:
    """The settings for ``info`` on ``family`` using all its GPUs, or None when it does not fit."""
    tp = family.gpus
    if info.heads and info.heads % tp:
        return None  # vLLM needs the attention heads to split evenly over the GPUs
    est = estimate_memory(info, context, concurrency, tensor_parallel=tp)
    budget = family.gib_per_gpu * utilization
    if est.total_gib > budget:
        return None
    per_seq = kv_bytes_per_token(info, tp) * context / GIB
    free_for_kv = budget - est.weights_gib - est.overhead_gib
    seqs = MAX_NUM_SEQS_CAP if per_seq == 0 else min(MAX_NUM_SEQS_CAP, int(free_for_kv // per_seq))
    dtype = (
        "bfloat16" if family.bf16 and info.dtype == "bf16" else "float16" if info.dtype in ("bf16", "fp16") else "auto"
    )
    return Recommendation(family, est, tp, context, utilization, max(seqs, concurrency), dtype)


def recommend(
    info: ModelInfo,
    *,
    context: int | None = None,
    concurrency: int = 8,
    cloud: str | None = None,
    family: str | None = None,
    utilization: float = DEFAULT_UTILIZATION,
) -> list[Recommendation]:
    """The smallest fitting family per cloud (generally available ones before those on request).

    Raises DoesNotFit, with a message that says how much memory the model needs, when nothing fits.
    """
    context = context or info.context_window
    if context > info.context_window:
        raise DoesNotFit(f"{info.name} supports at most {info.context_window} tokens of context; {context} asked")
    if concurrency < 1 or context < 1:
        raise DoesNotFit("context and concurrency must be at least 1")
    families = [f for f in FAMILIES if (cloud is None or f.cloud == cloud) and (family is None or f.name == family)]
    if not families:
        raise DoesNotFit(f"no GPU instance family matches cloud={cloud!r} family={family!r}")
    picks: list[Recommendation] = []
    for c in CLOUDS:
        ranked = sorted((f for f in families if f.cloud == c), key=lambda f: (f.on_request, f.total_gib))
        best = next((r for f in ranked if (r := fit(info, f, context, concurrency, utilization))), None)
        if best is not None:
            picks.append(best)
    if not picks:
        one_gpu = estimate_memory(info, context, concurrency)
        largest = max(families, key=lambda f: f.total_gib)
        raise DoesNotFit(
            f"{info.name} at context {context} x {concurrency} concurrent sequences needs about "
            f"{one_gpu.total_gib:.1f} GiB of GPU memory ({one_gpu.weights_gib:.1f} weights + "
            f"{one_gpu.kv_cache_gib:.1f} KV cache + {one_gpu.overhead_gib:.1f} overhead); no family fits it "
            f"(the largest considered, {largest.name}, has {largest.gpus} x {largest.gib_per_gpu:g} GiB at "
            f"{utilization:.0%} utilization). Lower --context or --concurrency, or use a quantised model."
        )
    return picks
