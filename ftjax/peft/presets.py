"""Classic fine-tuning methods as trainability specs (the top-level config key `method`).

Each preset only *produces* a spec (DESIGN.md 2); the optimizer and train step are the same for
all. Depth, used by llrd and gradual_unfreeze, counts from the input: embeddings 0, block i at
i + 1, and the head (with the final norm and BERT's pooler, which feed it) at L + 1.

Replacing the pretraining head by a new one (linear probes, classification) is the model's job
(ftjax.models.replace_head); these specs only say that `head/...` trains.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from ftjax.models.components import component
from ftjax.optim.rules import FROZEN, TRAIN, Rule, Spec
from ftjax.optim.selectors import layers, top
from ftjax.peft.attach import PEFT_LEAVES
from ftjax.settings import from_config, setting

PEFT = ("lora", "houlsby", "pfeiffer", "prefix", "prompt", "ia3")
# custom: no preset; the config's own `rules` are the whole spec.
METHODS = ("full", "linear_probe", "top_layers", "bitfit", "llrd", "gradual_unfreeze") + PEFT + (
    "custom",)

# PEFT leaves by method, one regex each over canonical paths: the model adds them (ftjax.peft,
# where the leaf names are defined), the spec only says they train.
LORA_LEAVES = PEFT_LEAVES["lora"]  # .*/lora_(?:a|b)
ADAPTER_LEAVES = PEFT_LEAVES["houlsby"]  # .*/adapter_(?:attn|mlp)/.* (pfeiffer: the same)
PREFIX_LEAVES = PEFT_LEAVES["prefix"]  # .*/prefix_(?:k|v)|backbone/prefix_encoder/.*
PROMPT_LEAVES = PEFT_LEAVES["prompt"]  # backbone/soft_prompt
IA3_LEAVES = PEFT_LEAVES["ia3"]  # .*/ia3_scale

# Peak learning rates that work as defaults per method (AdamW): full updates of a pretrained
# model want small steps; a fresh head or a few biases need larger ones to move at all, and
# the fewer (and the more input-like) the trained numbers, the larger the step: a soft prompt
# or (IA)^3's scales move the model only through a few vectors. Starting points to tune, not
# tuned values: the papers trained with Adafactor or other schedules (prompt tuning: 0.3;
# (IA)^3: 3e-3; Houlsby's grid: 3e-5 .. 3e-3).
SUGGESTED_LEARNING_RATES = {
    "full": 2e-5, "llrd": 5e-5, "top_layers": 1e-4, "gradual_unfreeze": 1e-4,
    "bitfit": 1e-3, "linear_probe": 1e-3, "lora": 2e-4, "houlsby": 3e-4, "pfeiffer": 3e-4,
    "prefix": 1e-3, "prompt": 3e-2, "ia3": 3e-3,
}
# Houlsby et al. trained the layer norms beside the adapters; Pfeiffer et al. only adapters.
TRAIN_NORMS_BY_DEFAULT = {"houlsby": True, "pfeiffer": False}


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Settings of the presets (the `method_args` config block); each preset reads only its own."""

    top_k: int = setting(2, "top_layers: how many of the last blocks train (with the head, "
                         "final norm and pooler)")
    decay: float = setting(0.9, "llrd: lr multiplier decay per depth step (block i gets "
                           "decay**(L - i))")
    unfreeze_every: int = setting(100, "gradual_unfreeze: optimizer steps between unfreezing one "
                                  "more block, from the top")
    unfreeze_every_epochs: float = setting(
        0.0, "gradual_unfreeze: > 0 gives unfreeze_every in epochs of the train set instead "
        "(the run converts it to steps)")
    discriminative_decay: float | None = setting(
        None, "gradual_unfreeze: optional per-depth lr decay as in ULMFiT (1 / 2.6 there); "
        "None keeps every group at the full rate")
    train_head: bool | None = setting(
        None, "PEFT methods and bitfit: whether head/ trains beside the method's leaves; None: a "
        "new task head trains, a pretrained LM head stays frozen")
    train_norms: bool | None = setting(
        None, "houlsby / pfeiffer: whether every layer norm trains beside the adapters; None "
        "follows the papers (houlsby yes, pfeiffer no)")

    def __post_init__(self):
        if not 0 < self.decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")
        if self.unfreeze_every < 1:
            raise ValueError(f"unfreeze_every must be >= 1, got {self.unfreeze_every}")
        if self.unfreeze_every_epochs < 0:
            raise ValueError(f"unfreeze_every_epochs must be >= 0, got "
                             f"{self.unfreeze_every_epochs}")
        if self.discriminative_decay is not None and not 0 < self.discriminative_decay <= 1:
            raise ValueError(
                f"discriminative_decay must be in (0, 1], got {self.discriminative_decay}")

    @classmethod
    def from_config(cls, cfg: Any) -> "MethodConfig":
        return from_config(cls, cfg, "method")


def _head_side(arch: str, rule: Rule) -> Spec:
    """The head and what feeds it directly (final norm, pooler): depth L + 1."""
    return [(component(name, arch), rule) for name in ("head", "final_norm", "pooler")]


def _by_depth(arch: str, num_layers: int, rule_at_depth) -> Spec:
    """One rule per depth: head side (L + 1), blocks from the top down, embeddings (0)."""
    spec = _head_side(arch, rule_at_depth(num_layers + 1))
    spec += [(layers([i]), rule_at_depth(i + 1)) for i in reversed(range(num_layers))]
    spec.append((component("embeddings", arch), rule_at_depth(0)))
    return spec


def method_spec(
    method: str, model_config: Any, *, num_layers: int | None = None, method_cfg: Any = None,
    head_kind: str | None = None,
) -> Spec:
    """The spec of a named method for a backbone config (LlamaConfig or BertConfig).

    full: everything trains. linear_probe: only head/. top_layers: the last top_k blocks, the
    final norm / pooler and the head. bitfit: every bias and, per `train_head`, the head; a
    Llama-family decoder has no biases at all, so there it trains the RMSNorm scales instead
    (two per block and the final norm), with a warning. llrd: everything, lr x
    decay**(L + 1 - depth). gradual_unfreeze: the head side from step 0, then one block per
    `unfreeze_every` steps from the top, the embeddings last; optional discriminative lrs.
    PEFT methods (lora, houlsby, pfeiffer, prefix, prompt, ia3): only the leaves the method adds
    (ftjax.peft.add_peft; one regex each, PEFT_LEAVES) and, per `train_head`, the head;
    houlsby / pfeiffer also the layer norms per `train_norms`.

    head_kind: the model's HeadConfig.kind, for the PEFT methods' default of training a new head
    but not the pretrained LM head; None (unknown) trains the head.

    custom: the empty spec, for a config whose own rules (ftjax.optim.rules.parse_spec, placed
    before any method's spec) say everything.

    Specs without a catch-all (llrd, gradual_unfreeze) fail loudly on leaves they do not know
    (e.g. a PEFT leaf outside the blocks); prepend rules for them.
    """
    arch = getattr(model_config, "arch", None)
    if arch not in ("llama", "bert"):
        raise ValueError(f"method_spec needs a LlamaConfig or BertConfig, got {model_config!r}")
    L = num_layers if num_layers is not None else model_config.num_layers
    cfg = MethodConfig.from_config(method_cfg)
    train_head = cfg.train_head if cfg.train_head is not None else head_kind != "lm"
    head_rule = (component("head", arch), TRAIN if train_head else FROZEN)

    if method == "custom":
        return []
    if method == "full":
        return [(".*", TRAIN)]
    if method == "linear_probe":
        return [(component("head", arch), TRAIN), (".*", FROZEN)]
    if method == "top_layers":
        return _head_side(arch, TRAIN) + [(layers(top(cfg.top_k, L)), TRAIN), (".*", FROZEN)]
    if method == "bitfit":
        spec = [head_rule, (".*/bias", TRAIN)]
        if arch == "llama":
            warnings.warn(
                "bitfit: Llama-family decoders have no bias parameters; training the RMSNorm "
                "scales (two per block and the final norm) instead, and the head per train_head",
                stacklevel=2,
            )
            spec.append((component("norms", arch), TRAIN))
        return spec + [(".*", FROZEN)]
    if method == "llrd":
        return _by_depth(arch, L, lambda depth: Rule(lr=cfg.decay ** (L + 1 - depth)))
    if method == "gradual_unfreeze":
        def rule(depth: int) -> Rule:
            start = cfg.unfreeze_every * (L + 1 - depth)
            lr = 1.0 if cfg.discriminative_decay is None else cfg.discriminative_decay ** (
                L + 1 - depth)
            return Rule(lr=lr, unfreeze_at=start or None)

        return _by_depth(arch, L, rule)
    if method in PEFT:
        spec = [(PEFT_LEAVES[method], TRAIN)]
        if method in TRAIN_NORMS_BY_DEFAULT:
            norms = cfg.train_norms if cfg.train_norms is not None else \
                TRAIN_NORMS_BY_DEFAULT[method]
            if norms:
                spec.append((component("norms", arch), TRAIN))
        return spec + [head_rule, (".*", FROZEN)]
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
