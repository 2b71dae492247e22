"""Model configurations: architecture, task head and the dtype/layout policy.

Architecture fields describe a checkpoint and are read from / written to its config.json or GGUF
metadata. Policy fields (`dtype`, `param_dtype`, `scan_layers`, `remat`, `attention_impl`) choose
how it runs and never change the function the model computes beyond floating-point rounding.
PEFT fields (`lora`, `adapter`, `prefix`, `prompt`, `ia3`) add a method's leaves to the model;
each method gets one field there (ftjax.peft.attach sets them on a loaded model).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from ftjax.nn.adapters import AdapterConfig
from ftjax.nn.ia3 import IA3Config
from ftjax.nn.lora import LoraConfig
from ftjax.nn.prefix import PrefixConfig
from ftjax.nn.prompt import PromptConfig
from ftjax.settings import setting

HeadKind = Literal["lm", "sequence", "verbalizer", "token", "span", "mlm", "none"]
Pooling = Literal["cls", "mean", "last", "pooler"]


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """What sits on top of the backbone.

    kind: "lm" (next-token logits; tied to the input embedding when the backbone says so),
      "sequence" (one label per example, pooled), "verbalizer" (a sequence head on the last
      token whose classifier starts as the LM head's rows of the label words: see
      ftjax.models.verbalizer_from_lm), "token" (one label per token), "span" (extractive QA
      start/end logits), "mlm" (masked-LM logits for encoders), "none" (hidden states only).
    pooling: how "sequence" heads summarize the tokens: the first token ("cls"), the mask-weighted
      mean ("mean"), the last real token ("last", the decoder choice) or BERT's pretrained
      tanh pooler over the first token ("pooler").
    """

    kind: HeadKind = setting("lm", "lm | sequence | verbalizer | token | span | mlm | none")
    num_labels: int = setting(0, "classes of a sequence / verbalizer / token head")
    pooling: Pooling = setting("cls", "how a sequence head summarizes the tokens: cls | mean | "
                               "last (decoders; a verbalizer needs it) | pooler (BERT's)")
    dropout: float = setting(0.0, "dropout before the classifier")

    def __post_init__(self):
        if self.kind in ("sequence", "verbalizer", "token") and self.num_labels < 1:
            raise ValueError(f"HeadConfig(kind={self.kind!r}) needs num_labels >= 1")
        if self.kind == "verbalizer" and self.pooling != "last":
            # The LM scores the label word from the last prompt token; any other summary
            # would not start at the LM's own answer.
            raise ValueError(f"HeadConfig(kind='verbalizer') reads the last token: pooling must "
                             f"be 'last', got {self.pooling!r}")
        if self.kind not in HeadKind.__args__:
            raise ValueError(f"unknown head kind {self.kind!r}; expected one of {HeadKind.__args__}")
        if self.pooling not in Pooling.__args__:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {Pooling.__args__}")


@dataclasses.dataclass(frozen=True)
class PolicyMixin:
    """Numerics and layout; shared by every architecture config."""

    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of parameters
    scan_layers: bool = False  # stack layer params on a leading "layers" axis and lax.scan them
    # With scan_layers: the layer indices where a new scan starts (params `layer_segments_<i>`
    # instead of `layers`, ftjax.nn.scan). The train step sets them where trained and
    # frozen layers of a partly trained stack meet (ftjax.train.step.scan_split_view), so
    # autodiff computes no weight gradient for the frozen ones. (): one scan over every layer.
    scan_breaks: tuple[int, ...] = ()
    remat: str = "none"  # "none" | "full" | "dots" (save only matmul outputs) for training
    # None: cuDNN's fused kernel on GPU for bf16 / fp16 where it applies, else XLA
    # (ftjax.nn.layers.attention_implementation); "xla" or "cudnn" force one.
    attention_impl: str | None = None
    # PEFT: one field per method, beside each other. Not read from or written to checkpoints.
    lora: LoraConfig | None = None  # adds lora_a / lora_b to the targeted Dense layers
    adapter: AdapterConfig | None = None  # Houlsby / Pfeiffer bottleneck adapters in each block
    prefix: PrefixConfig | None = None  # trainable key/value prefixes in every attention layer
    prompt: PromptConfig | None = None  # a soft prompt prepended to the token embeddings
    ia3: IA3Config | None = None  # (IA)^3 scales on keys, values and the MLP activation
    # Methods of ftjax.nn.dense_methods (each a DenseMethod): the extension point for new ones.
    dense_methods: tuple = ()

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def with_policy(self, **changes):
        return dataclasses.replace(self, **changes)

    def without_peft(self):
        """The same config with every PEFT field cleared: the pretrained architecture."""
        return dataclasses.replace(self, dense_methods=(),
                                   **{name: None for name in PEFT_FIELDS})

    @property
    def peft_methods(self) -> tuple[str, ...]:
        """The PEFT fields that are set."""
        return tuple(name for name in PEFT_FIELDS if getattr(self, name) is not None)


PEFT_FIELDS = ("lora", "adapter", "prefix", "prompt", "ia3")


@dataclasses.dataclass(frozen=True)
class LlamaConfig(PolicyMixin):
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 0  # 0: hidden_size // num_heads
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    # Fine-tuning regularization; Llama pretraining uses none, so 0 by default.
    hidden_dropout: float = 0.0  # on each residual branch (attention and MLP outputs)
    attention_dropout: float = 0.0
    embedding_dropout: float = 0.0
    # Gemma 3 (family "gemma3") differs from Llama by these, all off for a Llama: a GeGLU MLP
    # (hidden_act), RMSNorm on each head's queries and keys, norms after the attention and the
    # MLP as well as before ("sandwich"), embeddings scaled by sqrt(hidden_size), and local
    # layers attending to the last `sliding_window` slots with their own RoPE base, every
    # `global_every`-th layer (the n-th, 2n-th, ...) attending to all.
    family: str = "llama"
    hidden_act: str = "silu"
    qk_norm: bool = False
    sandwich_norms: bool = False
    scale_embeddings: bool = False
    sliding_window: int = 0
    global_every: int = 0
    rope_local_theta: float = 0.0  # 0: rope_theta
    arch: str = dataclasses.field(default="llama", init=False)

    def is_local(self, layer: int) -> bool:
        """Whether `layer` attends within the sliding window only."""
        return bool(self.sliding_window) and (not self.global_every
                                              or (layer + 1) % self.global_every != 0)

    def __post_init__(self):
        if self.family not in ("llama", "gemma3"):
            raise ValueError(f"family must be llama or gemma3, got {self.family!r}")
        if self.sliding_window and self.scan_layers:
            raise ValueError("local and global attention layers (sliding_window) run "
                             "unscanned: set scan_layers=False")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if not self.head_dim and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                f"set head_dim explicitly"
            )
        if self.head_size % 2:
            raise ValueError(f"rotary embeddings need an even head size, got {self.head_size}")

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class BertConfig(PolicyMixin):
    vocab_size: int = 30522
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"  # exact erf GELU, as HF "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    embedding_dropout: float | None = None  # None: hidden_dropout, as in HF BERT
    pad_token_id: int = 0
    add_pooler: bool = True
    arch: str = dataclasses.field(default="bert", init=False)

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu"):
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads


BackboneConfig = LlamaConfig | BertConfig


def default_compute_dtype() -> str:
    """bf16 compute on accelerators, fp32 on CPU (where bf16 matmuls are slow and inexact)."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


# Named architectures. Checkpoint loaders build configs from the files themselves; these presets
# are for random-init benchmarks and tests and are checked against the real files in tests.
PRESETS: dict[str, BackboneConfig] = {
    "smollm2-135m": LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
        num_kv_heads=3, rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    ),
    "tinyllama-1.1b": LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32,
        num_kv_heads=4, rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=2048,
    ),
    "llama-160m": LlamaConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12,
        num_kv_heads=12, max_position_embeddings=2048,
    ),
    "all-minilm-l6-v2": BertConfig(
        vocab_size=30522, hidden_size=384, intermediate_size=1536, num_layers=6, num_heads=12,
    ),
    # Tiny prime-dimension configs: shape bugs (a transposed kernel, a wrong head split) cannot
    # hide behind equal sizes.
    "tiny-llama": LlamaConfig(
        vocab_size=97, hidden_size=31, intermediate_size=37, num_layers=2, num_heads=6,
        num_kv_heads=2, head_dim=10, rope_theta=10000.0, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    ),
    "tiny-llama-tied": LlamaConfig(
        vocab_size=97, hidden_size=31, intermediate_size=37, num_layers=3, num_heads=6,
        num_kv_heads=3, head_dim=14, max_position_embeddings=64, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    ),
    "tiny-bert": BertConfig(
        vocab_size=101, hidden_size=30, intermediate_size=37, num_layers=2, num_heads=5,
        max_position_embeddings=67, hidden_dropout=0.0, attention_dropout=0.0,
    ),
}


def preset(name: str, **policy) -> BackboneConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(PRESETS[name], **policy)
