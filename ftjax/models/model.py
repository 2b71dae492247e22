"""The one model entry point: a backbone (Llama or BERT) plus a task head.

Parameter tree: {"backbone": {...}, "head": {...}} of plain arrays (the head subtree is absent for
heads without parameters, such as a tied LM head). Everything else (trainability rules, PEFT leaves,
checkpoint formats, sharding) addresses leaves by their "/"-joined path in this tree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models.adapter_slots import AdapterSlots, apply_per_row, split_slots
from ftjax.models.bert import BertModel
from ftjax.models.config import BackboneConfig, BertConfig, HeadConfig, LlamaConfig
from ftjax.models.heads import (
    CLASSIFIER_KINDS,
    MaskedLMHead,
    TaskHeads,
    classifier_head,
    classifier_logits,
)
from ftjax.models.llama import LlamaModel
from ftjax.nn.hyperformer import HyperConfig, HyperNetwork
from ftjax.nn.layers import Dense
from ftjax.nn.scan import INTERMEDIATES
from ftjax.utils.tree import insert_leaves


@flax.struct.dataclass
class ModelOutput:
    # fp32; (B, T, V) lm/mlm, (B, C) sequence/verbalizer, (B, T, C) token, (B, T, 2) span;
    # a model with task heads: {task: logits}
    logits: Any
    hidden: jax.Array  # (B, T, D) final hidden states
    cache: Any = None  # updated KV cache when one was passed in (decoders)


def default_positions(attention_mask_BT, cache=None):
    """Positions that skip padding: left-padded prompts still start at position 0.

    With a KV cache, new tokens continue from the number of real tokens already cached.
    """
    positions = jnp.cumsum(attention_mask_BT, axis=1) - 1
    if cache is not None:
        positions = positions + jnp.sum(cache["mask"], axis=1, keepdims=True)
    return jnp.maximum(positions, 0).astype(jnp.int32)


class Model(nn.Module):
    """A backbone and its head. `task_heads` (name, HeadConfig) pairs make a multi-task model
    instead: one head per task under head/<name>/ (TaskHeads), logits {name: ...}; the model's
    own head_config is then kind "none".

    `adapter_slots` makes a model with many adapters on one base (ftjax.models.adapter_slots):
    the leaves it selects carry a leading slot axis, and a call gives each row its slot
    (`adapter_ids`). With `hypernetwork` (HyperFormer, ftjax.nn.hyperformer) those slots
    are not parameters: a shared hypernetwork under hyper/ generates every slot's adapter
    (config.adapter's leaves) at each call."""

    config: BackboneConfig
    head_config: HeadConfig = HeadConfig()
    task_heads: tuple[tuple[str, HeadConfig], ...] = ()
    adapter_slots: AdapterSlots | None = None
    hypernetwork: HyperConfig | None = None

    def setup(self):
        cfg, head = self.config, self.head_config
        if isinstance(cfg, LlamaConfig):
            self.backbone = LlamaModel(cfg)
        elif isinstance(cfg, BertConfig):
            self.backbone = BertModel(cfg)
        else:
            raise TypeError(f"unsupported backbone config {type(cfg).__name__}")
        dtypes = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
        if self.hypernetwork is not None:
            if self.adapter_slots is None or cfg.adapter is None:
                raise ValueError("a hypernetwork generates the adapters (config.adapter) of "
                                 "the model's adapter slots: set both")
            self.hyper = HyperNetwork(self.hypernetwork, cfg.adapter, self.adapter_slots.names,
                                      cfg.num_layers, cfg.hidden_size, cfg.scan_layers,
                                      param_dtype=cfg.weight_dtype)
        if self.task_heads:
            if head.kind != "none":
                raise ValueError(f"a model with task heads has no head of its own: "
                                 f"head_config.kind must be 'none', got {head.kind!r}")
            self.head = TaskHeads(self.task_heads, **dtypes)
        elif head.kind == "lm":
            if isinstance(cfg, BertConfig):
                raise ValueError("an encoder has no causal LM head; use HeadConfig(kind='mlm')")
            if not cfg.tie_word_embeddings:
                # The pretrained LM head is a LoRA candidate like any backbone projection.
                self.head = Dense(cfg.vocab_size, ("embed", "vocab"), lora=cfg.lora, ia3=cfg.ia3,
                                  methods=cfg.dense_methods, **dtypes)
        elif head.kind in CLASSIFIER_KINDS:
            self.head = classifier_head(head, **dtypes)
        elif head.kind == "mlm":
            if not isinstance(cfg, BertConfig):
                raise ValueError("kind='mlm' is the encoder objective; decoders use kind='lm'")
            self.head = MaskedLMHead(cfg.hidden_act, cfg.layer_norm_eps, **dtypes)

    def __call__(
        self,
        input_ids,
        *,
        attention_mask=None,
        positions=None,
        segment_ids=None,
        token_type_ids=None,
        cache=None,
        deterministic: bool = True,
        with_prompt: bool | None = None,
        adapter_ids=None,
        embedding_delta=None,
        prefill: bool = False,
    ) -> ModelOutput:
        """with_prompt (decoders with a soft prompt, config.prompt): whether the prompt precedes
        input_ids in this call. None: exactly when no KV cache is passed; generation's prefill
        passes True so the prompt enters the cache (ftjax.generate does this).
        adapter_ids: (B,) each row's slot, for (and only for) a model with adapter_slots.
        embedding_delta: (B, T, D) added to the token embeddings of input_ids (not to a soft
        prompt's), where the first block and the embedding norm receive them: the input
        perturbation of adversarial training (ftjax.objectives.adversarial).
        prefill (a decoder with an LM head and an empty cache: generation's first call): the T
        tokens attend among themselves only and fill the cache's first T slots, and the logits
        (B, 1, V) are the last position's only (the LM head over every prompt position would
        cost a fifth of a small model's prefill); `hidden` still holds every position."""
        if self.adapter_slots is not None and not self.is_initializing():
            if adapter_ids is None:
                raise ValueError(f"this model holds {self.adapter_slots.size} adapters "
                                 f"{list(self.adapter_slots.names)}: give each row's adapter "
                                 f"(adapter_ids)")
            return self._per_row(input_ids, adapter_ids, cache=cache,
                                 deterministic=deterministic, with_prompt=with_prompt,
                                 prefill=prefill,
                                 row_inputs=dict(attention_mask=attention_mask,
                                                 positions=positions, segment_ids=segment_ids,
                                                 token_type_ids=token_type_ids,
                                                 embedding_delta=embedding_delta))
        if adapter_ids is not None and self.adapter_slots is None:
            raise ValueError("adapter_ids given to a model without adapter slots")
        if self.hypernetwork is not None:  # initializing: create the hypernetwork's leaves
            self.hyper()
        cfg, head = self.config, self.head_config
        if prefill and (head.kind != "lm" or cache is None):
            raise ValueError(f"prefill is a decoder's first call on an empty KV cache, with an "
                             f"LM head; got head {head.kind!r} and "
                             f"{'a' if cache is not None else 'no'} cache")
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        pooled = None
        if isinstance(cfg, LlamaConfig):
            if positions is None:
                positions = default_positions(attention_mask, cache)
            hidden, cache = self.backbone(
                input_ids, positions=positions, attention_mask_BT=attention_mask,
                segment_ids=segment_ids, cache=cache, deterministic=deterministic,
                with_prompt=with_prompt, embedding_delta=embedding_delta,
                prefill=prefill,
            )
        else:
            if cache is not None:
                raise ValueError("encoders do not take a KV cache")
            if with_prompt is not None:
                raise ValueError("with_prompt is for decoders with a KV cache; an encoder always "
                                 "prepends its soft prompt")
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
            hidden, pooled = self.backbone(
                input_ids, positions=positions, attention_mask_BT=attention_mask,
                token_type_ids=token_type_ids, deterministic=deterministic,
                embedding_delta=embedding_delta,
            )

        if self.task_heads:
            logits = jax.tree.map(lambda x: x.astype(jnp.float32),
                                  self.head(hidden, attention_mask, pooled, deterministic))
            return ModelOutput(logits=logits, hidden=hidden, cache=cache)
        if head.kind == "none":
            logits = None
        elif head.kind == "lm":
            read = hidden[:, -1:] if prefill else hidden
            logits = (self.backbone.attend(read) if cfg.tie_word_embeddings
                      else self.head(read, deterministic))
        elif head.kind in CLASSIFIER_KINDS:
            logits = classifier_logits(head.kind, self.head, hidden, attention_mask, pooled,
                                       deterministic)
        else:  # mlm
            logits = self.head(hidden, self.backbone.attend)
        if logits is not None:
            logits = logits.astype(jnp.float32)
        return ModelOutput(logits=logits, hidden=hidden, cache=cache)

    def _per_row(self, input_ids, adapter_ids, *, cache, deterministic, with_prompt,
                 prefill, row_inputs):
        """Each row through this model with one adapter: its own slot's leaves."""
        single = self.clone(parent=None, adapter_slots=None, hypernetwork=None)
        params = self.variables["params"]
        if self.hypernetwork is not None:
            params = insert_leaves({k: v for k, v in params.items() if k != "hyper"},
                                   self.hyper())

        def apply_single(params, ids, row_cache, rng, **inputs):
            out = single.apply({"params": params}, ids, cache=row_cache,
                               deterministic=deterministic, with_prompt=with_prompt,
                               prefill=prefill,
                               rngs={} if rng is None else {"dropout": rng}, **inputs)
            return out.logits, out.hidden, out.cache

        logits, hidden, cache = apply_per_row(
            apply_single, params, self.adapter_slots, adapter_ids, input_ids,
            row_inputs={k: v for k, v in row_inputs.items() if v is not None}, cache=cache,
            rng=None if deterministic else self.make_rng("dropout"))
        return ModelOutput(logits=logits, hidden=hidden, cache=cache)


def init_boxed(model: Model, rng: jax.Array):
    """Initialize with logical-partitioning metadata still attached (nn.LogicallyPartitioned).

    With adapter slots every slot starts as the same fresh adapter (the one a single-adapter
    model gets from `rng`), its leaves stacked on a leading, unsharded slot axis; with a
    hypernetwork there are no slot leaves: it generates them."""
    params = model.init({"params": rng}, jnp.zeros((1, 4), jnp.int32))["params"]
    slots = model.adapter_slots
    if slots is None:
        return params
    base, single = split_slots(params, slots)
    if not jax.tree.leaves(single):
        raise ValueError(f"adapter slot leaves {slots.leaves!r} select no parameter")
    if model.hypernetwork is not None:
        return base

    def stacked(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            return leaf.replace(value=_repeat(leaf.value, slots.size),
                                names=(None, *leaf.names))
        return _repeat(leaf, slots.size)

    is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731
    return insert_leaves(base, jax.tree.map(stacked, single, is_leaf=is_box))


def materialize_adapters(model: Model, params: dict) -> tuple[Model, dict]:
    """A model whose hypernetwork generates its adapters as the plain adapter-slot model it
    computes: every slot's generated adapter stored as parameters, hyper/ dropped. The same
    function, with no hypernetwork to run (serving, export of one task's adapter)."""
    if model.hypernetwork is None:
        return model, params
    generated = model.apply({"params": params}, method=lambda m: m.hyper())
    rest = {k: v for k, v in params.items() if k != "hyper"}
    return dataclasses.replace(model, hypernetwork=None), insert_leaves(rest, generated)


def _repeat(x, n: int):
    return jnp.broadcast_to(x[None], (n, *x.shape))


def init_selected(model: Model, rng: jax.Array, select=lambda params: params):
    """`select(params)` of a fresh initialization, jitted, as plain arrays.

    Only what `select` keeps leaves the jitted init, so XLA drops every other initializer as dead
    code; the kept leaves get exactly the values a full init gives them (Flax derives each key
    from the rng and the parameter's path). Jitted at all because op-by-op initialization of a
    deep model costs seconds of per-primitive compiles.
    """
    return jax.jit(lambda key: select(nn.meta.unbox(init_boxed(model, key))))(rng)


def init_params(model: Model, rng: jax.Array):
    """Random parameters as a plain nested dict of arrays."""
    return init_selected(model, rng)


def param_shapes(model: Model):
    """Shapes and dtypes of every leaf (jax.ShapeDtypeStruct), without allocating anything."""
    return nn.meta.unbox(jax.eval_shape(lambda: init_boxed(model, jax.random.key(0))))


def logical_axes(model: Model):
    """The logical axis names of every leaf, as a tree of PartitionSpec of logical names."""
    boxed = jax.eval_shape(lambda: init_boxed(model, jax.random.key(0)))
    return nn.get_partition_spec(boxed)


def replace_head(model: Model, params: dict, head_config: HeadConfig, rng: jax.Array, *,
                 task_heads: tuple[tuple[str, HeadConfig], ...] = ()):
    """Discard the current head and attach a freshly initialized one (or, with `task_heads`,
    one per task: a multi-task model).

    Returns (new_model, new_params): the backbone parameters are reused untouched and only the
    head is initialized (SmolLM2 on CPU: ~1.5 s instead of ~27 s for a full init).
    """
    new_model = dataclasses.replace(model, head_config=head_config, task_heads=task_heads)
    fresh_head = init_selected(new_model, rng, lambda params: params.get("head"))
    new_params = {"backbone": params["backbone"]}
    if fresh_head is not None:
        new_params["head"] = fresh_head
    return new_model, new_params


def lm_head_rows(model: Model, params: dict, token_ids) -> jax.Array:
    """(len(token_ids), D): the LM head's output vectors of these tokens (its logit for token
    i is hidden . row i): the input-embedding rows when tied, the head's kernel columns if not."""
    cfg = model.config
    if model.head_config.kind != "lm" or not isinstance(cfg, LlamaConfig):
        raise ValueError(f"lm_head_rows needs a decoder with its LM head (HeadConfig('lm')), got "
                         f"{type(cfg).__name__} with head {model.head_config.kind!r}")
    ids = jnp.asarray(token_ids, jnp.int32)
    bad = [int(i) for i in token_ids if not 0 <= int(i) < cfg.vocab_size]
    if bad:
        raise ValueError(f"token ids {bad} are outside the vocabulary (size {cfg.vocab_size})")
    if cfg.tie_word_embeddings:
        return params["backbone"]["embed_tokens"]["embedding"][ids]
    return params["head"]["kernel"][:, ids].T


def verbalizer_from_lm(model: Model, params: dict, head_config: HeadConfig, token_ids):
    """Replace a decoder's LM head by a verbalizer head that starts as its label-word logits.

    Returns (new_model, new_params). The classifier's kernel column c is the LM head's row of
    `token_ids[c]` and its bias is zero, so before any training the class logits equal the
    LM's logits of the label words after the same prompt: fine-tuning starts from the model's
    zero-shot answer instead of a random head, and every method (a linear probe, PEFT leaves
    with the head) trains the same two-row head. The values depend on the checkpoint only
    (no rng), so every seed starts from the same head. A tied embedding is copied, not shared:
    training the head leaves the input embedding alone.
    """
    if head_config.kind != "verbalizer":
        raise ValueError(f"verbalizer_from_lm builds HeadConfig(kind='verbalizer'), got "
                         f"{head_config.kind!r}")
    if len(token_ids) != head_config.num_labels:
        raise ValueError(f"{len(token_ids)} label tokens for num_labels={head_config.num_labels}")
    rows_CD = lm_head_rows(model, params, token_ids)
    new_model, new_params = replace_head(model, params, head_config, jax.random.key(0))
    classifier = new_params["head"]["classifier"]
    kernel = rows_CD.T.astype(classifier["kernel"].dtype)
    if kernel.shape != classifier["kernel"].shape:
        raise ValueError(f"label-word rows {kernel.shape} do not fit the classifier kernel "
                         f"{classifier['kernel'].shape}")
    new_params["head"] = {"classifier": {"kernel": kernel,
                                         "bias": jnp.zeros_like(classifier["bias"])}}
    return new_model, new_params


def layer_hidden_states(intermediates: dict) -> list:
    """Every block's output hidden states (B, T, D), first block first, from the collection a
    model applied with mutable=["intermediates"] sowed (ftjax.nn.scan.INTERMEDIATES): per-layer
    (`layers_N`), scanned (`layers`, stacked) or scanned in segments alike."""
    return sown_per_layer(intermediates, "hidden")


def layer_attentions(intermediates: dict) -> list:
    """Every block's attention distributions (B, N, T, S), first block first (see
    layer_hidden_states)."""
    return sown_per_layer(intermediates, "attention")


def sown_per_layer(intermediates: dict, name: str) -> list:
    """The values the blocks sowed under `name` (anywhere inside a block), one per block."""
    intermediates = intermediates.get(INTERMEDIATES, intermediates)  # apply's whole mutable dict
    backbone = intermediates.get("backbone", {})

    def find(tree):
        if name in tree and isinstance(tree[name], tuple):
            return tree[name][0]
        for value in tree.values():
            if isinstance(value, dict) and (found := find(value)) is not None:
                return found
        return None

    if "layers" in backbone:
        stacked = find(backbone["layers"])
        return [stacked[i] for i in range(stacked.shape[0])]
    segments = sorted((k for k in backbone if k.startswith("layer_segments_")),
                      key=lambda k: int(k.rsplit("_", 1)[1]))
    if segments:
        return [layer for k in segments for layer in find(backbone[k])]
    layers = sorted((k for k in backbone if k.startswith("layers_")),
                    key=lambda k: int(k.split("_")[1]))
    found = [find(backbone[k]) for k in layers]
    if not found or any(f is None for f in found):
        raise ValueError(f"no {name!r} values were sown: apply the model with "
                         f"mutable=['intermediates']")
    return found
