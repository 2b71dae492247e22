"""What the benchmarks run: model shapes, jobs per suite, FLOP counts, device peaks, timing.

Imports nothing heavy (no jax, no torch): the runner and both workers share it.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
from typing import Callable

# Llama shapes, random init. "1.1B" is TinyLlama-1.1B, "160M" a Llama-160M (both also presets of
# ftjax.models), "410M" a Llama-shaped midpoint for the size sweep. "tiny" is for --smoke only.
SIZES = {
    "160M": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_layers=12,
                 num_heads=12, num_kv_heads=12, head_dim=64),
    "410M": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_layers=24,
                 num_heads=16, num_kv_heads=16, head_dim=64),
    "1.1B": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22,
                 num_heads=32, num_kv_heads=4, head_dim=64),
    "tiny": dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_layers=2,
                 num_heads=4, num_kv_heads=2, head_dim=8),
}
GPU_BATCH = {"160M": 16, "410M": 8, "1.1B": 8}
LORA_RANK, LORA_ALPHA = 16, 32.0
LLAMA_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LLAMA_LORA_TARGETS = r".*/(?:self_attn/(?:q|k|v|o)_proj|mlp/(?:gate|up|down)_proj)"

# CPU suite: all-MiniLM-L6-v2 classifying polarity sentences (the `make demo` task).
CPU_BATCH, CPU_SEQ = 16, 48
CPU_LORA_RANK, CPU_LORA_ALPHA = 8, 16.0  # on query and value, as in the demo's LoRA row

LEARNING_RATE = 1e-4  # both frameworks: AdamW, no weight decay, no clipping, constant rate

# Dense bf16 tensor-core peaks from the vendors' data sheets (no sparsity), FLOP/s.
PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100", 989.4e12),  # SXM5 / HBM3 parts
    ("H200", 989.4e12),  # same compute as H100 SXM
    ("A100", 312e12),
)


@dataclasses.dataclass
class Job:
    """One measurement, run in its own process (so peak memory is this job's alone)."""

    suite: str  # "gpu" (Llama LM, random init) | "cpu" (MiniLM classification)
    impl: str  # "ftjax" | "torch" | "torch.compile"
    mode: str  # "full" | "lora"
    size: str
    batch: int
    seq: int
    steps: int = 10  # timed steps; the median is reported
    warmup: int = 3  # untimed steps first (the first compiles)
    tag: str = ""  # which part of the suite: "grid", "seq-sweep", "size-sweep", "smoke"
    batches_file: str = ""  # cpu suite: the pre-tokenized batches (.npz) both workers read
    options: dict = dataclasses.field(default_factory=dict)  # impl-specific settings


def llama_flops_per_token(shape: dict, seq: int, mode: str, lora_rank: int = LORA_RANK) -> float:
    """Model FLOPs per trained token, attention included (PaLM appendix B convention).

    N = weights of every matmul (attention and MLP projections, LM head; the embedding lookup is
    a gather, no FLOPs). Attention scores and values: 2 matmuls of T x (heads x head_dim) per
    token and layer, counted over the full T x T square (causal masking not subtracted).
      full: 6 N + 12 L T (N_h H)          (forward 2, backward 4 per weight)
      lora: 4 N + 6 N_lora + 12 L T (N_h H)
            (frozen weights still need input gradients (2) but no weight gradients)
    """
    d, f, L = shape["hidden_size"], shape["intermediate_size"], shape["num_layers"]
    q = shape["num_heads"] * shape["head_dim"]
    kv = shape["num_kv_heads"] * shape["head_dim"]
    v = shape["vocab_size"]
    per_layer = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                 "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
    n = L * sum(i * o for i, o in per_layer.values()) + d * v
    attention = 12 * L * seq * q
    if mode == "full":
        return 6 * n + attention
    n_lora = L * sum(lora_rank * (i + o) for name, (i, o) in per_layer.items()
                     if name in LLAMA_LORA_MODULES)
    return 4 * n + 6 * n_lora + attention


def peak_flops(device_name: str) -> tuple[float | None, str]:
    """(dense bf16 peak FLOP/s, where it comes from) for a device name; None for unknown/CPU."""
    for key, value in PEAK_BF16:
        if key.lower() in device_name.lower():
            return value, f"{key} dense bf16 {value / 1e12:.1f} TFLOP/s (data sheet)"
    return None, "no known bf16 peak for this device: MFU not computed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def max_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def time_steps(step: Callable[[], object], sync: Callable[[object], None], warmup: int,
               steps: int) -> dict:
    """Run `warmup` untimed then `steps` timed steps, each synchronized on its result.

    first_s: the first step's wall time (compilation included); compile_s = first_s minus the
    median step (what compiling / tracing cost on top of one step).
    """
    start = time.perf_counter()
    sync(step())
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        sync(step())
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        sync(step())
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"step_s_median": median, "step_s_min": min(times), "step_s_max": max(times),
            "first_step_s": first, "compile_s": max(first - median, 0.0), "timed_steps": steps}
