"""The schema of every training config: all valid keys, their types and defaults.

Experiment files start from `base_config()` and change what they need; `ftjax.config` rejects
any key not listed here (with the closest valid one) and any value of the wrong type.
Optional keys default to a typed placeholder (`placeholder(str)`), i.e. None that only accepts
that type.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from ftjax.optim.config import DEFAULT_NO_DECAY
from ftjax.optim.presets import METHODS
from ftjax.optim.rules import parse_spec
from ftjax.peft import PEFT_METHODS, ia3, lora, method_config

TASKS = ("classification", "causal_lm", "masked_lm")
SOURCES = ("polarity", "local", "hf", "tfds")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.steps = 1000
    c.eval_every = 200
    c.checkpoint_every = 500
    c.log_every = 10
    c.keep_checkpoints = 2
    c.best_metric = "accuracy"  # eval metric whose best checkpoint is kept ("" keeps none)
    c.best_mode = "max"
    c.nonfinite = "skip"  # a non-finite loss: "skip" the update and count it, or "stop" the run
    c.batch_size = 32
    c.eval_batch_size = 64
    c.accumulation_steps = 1  # micro-batches per step; batch_size is the global batch
    c.method = "full"
    # Trainability rules of your own, matched before the method's spec (first match wins):
    # (regex, rule) pairs over canonical per-layer paths (backbone/layers_3/self_attn/q_proj/
    # kernel, in either layer layout), rule = "frozen", "train" or a mapping of Rule fields
    # ({"lr": 0.1, "wd": 0.0, "unfreeze_at": 500}). E.g. method="full" with
    # (("backbone/embed_tokens/.*", "frozen"),) freezes the embeddings; method="custom" makes
    # them the whole spec (every parameter must match one). A rule matching nothing is an error.
    c.rules = ()
    # At the end, write the kept params' trainable delta (+ a new head) to <workdir>/adapter
    # (ftjax.io.adapter); skipped when every parameter trains (the delta is the whole model).
    c.save_adapter = True
    c.eval_splits = ("validation",)  # evaluated every eval_every steps; "test" at the end only

    c.early_stopping = ml_collections.ConfigDict()
    c.early_stopping.patience = 0  # evals without improvement of best_metric before stopping; 0 = off
    c.early_stopping.min_delta = 0.0

    c.model = ml_collections.ConfigDict()
    c.model.name = "all-minilm-l6-v2"  # asset name or local path (GGUF file or HF dir)
    c.model.dtype = config_dict.placeholder(str)  # None: fp32 on CPU, bf16 on GPU
    c.model.param_dtype = "float32"
    c.model.scan_layers = False
    c.model.remat = "none"
    # None: cuDNN's fused attention on GPU with bf16 / fp16 compute where it applies, XLA
    # elsewhere; "xla" / "cudnn" force one (cudnn fails where it cannot run).
    c.model.attention_impl = config_dict.placeholder(str)
    # Storage dtype of FROZEN kernels and embedding tables (None: param_dtype). They get no
    # gradient, so "bfloat16" with bf16 compute halves their memory and reads at no cost in
    # accuracy (the layers cast them to the compute dtype anyway); trainable leaves keep
    # param_dtype. Checkpoints never hold frozen leaves, so it can change between resumes.
    c.model.frozen_dtype = config_dict.placeholder(str)
    # Dropout overrides; None keeps the checkpoint's own (MiniLM: 0.1 / 0.1; Llama: none).
    c.model.hidden_dropout = config_dict.placeholder(float)
    c.model.attention_dropout = config_dict.placeholder(float)
    c.model.embedding_dropout = config_dict.placeholder(float)

    c.head = ml_collections.ConfigDict()
    c.head.kind = "sequence"  # sequence | verbalizer | token | span | lm | mlm
    c.head.num_labels = 2
    c.head.pooling = "mean"  # cls | mean | last | pooler (a verbalizer needs "last")
    c.head.dropout = 0.0

    c.task = ml_collections.ConfigDict()
    c.task.kind = "classification"
    c.task.text_key = "text"
    c.task.label_key = "label"
    c.task.text_pair_key = config_dict.placeholder(str)
    c.task.prompt_key = config_dict.placeholder(str)
    c.task.max_length = 64
    c.task.packing = True
    c.task.mask_prob = 0.15
    # Classification as instruction following (ftjax.data.prompting): each text goes into
    # `template` at {text}, optionally as a user turn of the tokenizer's chat template; a
    # "verbalizer" head scores `label_words` (one per label, each one token after the prompt).
    c.task.template = config_dict.placeholder(str)
    c.task.chat = False
    c.task.system_prompt = config_dict.placeholder(str)  # chat only; None: the template's default
    c.task.label_words = ()

    c.data = ml_collections.ConfigDict()
    c.data.source = "polarity"
    c.data.path = config_dict.placeholder(str)  # local file / HF name / tfds name
    c.data.train_split = "train"
    c.data.validation_split = "validation"
    c.data.test_split = "test"
    c.data.split_seed = 0  # the polarity corpus' fixed stratified split
    # Quick runs: 0 keeps a split whole; n > 0 keeps a random n of it, drawn with split_seed so
    # every run of an experiment sees the same subset (the splits are ordered by id, and the
    # polarity file lists its positive sentences first: a prefix would be one class).
    c.data.max_train_examples = 0
    c.data.max_eval_examples = 0  # the same for the validation and test splits

    # Mirrors ftjax.optim.OptimizerConfig field by field (it re-checks the keys).
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # adamw | sgd | adafactor | lion
    c.optimizer.learning_rate = 5e-5
    c.optimizer.b1 = config_dict.placeholder(float)  # None: the optimizer's usual value
    c.optimizer.b2 = config_dict.placeholder(float)
    c.optimizer.eps = 1e-8
    c.optimizer.momentum = 0.0  # sgd only
    c.optimizer.nesterov = False
    c.optimizer.weight_decay = 0.01
    c.optimizer.no_decay = DEFAULT_NO_DECAY  # regexes of leaves without weight decay
    c.optimizer.schedule = "linear"  # constant | linear | cosine | inverse_sqrt | step
    c.optimizer.warmup_steps = 0
    c.optimizer.decay_steps = config_dict.placeholder(int)  # None: the rest of the run
    c.optimizer.end_factor = 0.0
    c.optimizer.step_boundaries = ()
    c.optimizer.step_factor = 0.1
    c.optimizer.grad_clip_norm = 1.0  # 0 disables clipping

    # Mirrors ftjax.optim.MethodConfig: each preset reads only its own keys.
    c.method_args = ml_collections.ConfigDict()
    c.method_args.top_k = 2  # top_layers: last k blocks train
    c.method_args.decay = 0.9  # llrd: lr x decay**(depth from the top)
    c.method_args.unfreeze_every = 100  # gradual_unfreeze: steps between unfreezing a block
    c.method_args.unfreeze_every_epochs = 0.0  # > 0: the same in epochs (overrides the above)
    c.method_args.discriminative_decay = config_dict.placeholder(float)
    # PEFT methods and bitfit: None trains a new task head but keeps a pretrained LM head frozen.
    c.method_args.train_head = config_dict.placeholder(bool)
    # houlsby / pfeiffer: train the layer norms too; None: houlsby yes, pfeiffer no (the papers).
    c.method_args.train_norms = config_dict.placeholder(bool)

    # Mirrors ftjax.peft.LoraConfig; read when method="lora".
    c.lora = ml_collections.ConfigDict()
    c.lora.rank = 8
    c.lora.alpha = 16.0  # update scale alpha / rank (alpha / sqrt(rank) with rslora)
    c.lora.dropout = 0.0
    c.lora.targets = lora.DEFAULT_TARGETS  # regex over module paths (ftjax.peft.lora names them)
    c.lora.rslora = False
    c.lora.init = "default"  # default (peft's kaiming-uniform A) | gaussian (std 1/rank)

    # Mirrors ftjax.peft.AdapterConfig (its `kind` is the method); read when method is
    # "houlsby" (adapters after attention and MLP) or "pfeiffer" (after the MLP only).
    c.adapter = ml_collections.ConfigDict()
    c.adapter.size = config_dict.placeholder(int)  # bottleneck width; None: D / reduction_factor
    c.adapter.reduction_factor = 16.0
    c.adapter.activation = "relu"  # relu | gelu | gelu_new | silu
    c.adapter.init_scale = 1e-2  # std of the down projection; the up projection starts at 0

    # Mirrors ftjax.peft.PrefixConfig; read when method="prefix".
    c.prefix = ml_collections.ConfigDict()
    c.prefix.num_tokens = 20  # virtual tokens per attention layer
    c.prefix.projection = False  # train through an MLP reparameterization (fold_prefix drops it)
    c.prefix.projection_hidden = 512
    c.prefix.init_scale = 0.02

    # Mirrors ftjax.peft.PromptConfig; read when method="prompt".
    c.prompt = ml_collections.ConfigDict()
    c.prompt.num_tokens = 20  # soft-prompt length
    c.prompt.init = "vocab"  # vocab (sampled token embeddings) | text | random
    c.prompt.init_text = config_dict.placeholder(str)  # for init="text"

    # Mirrors ftjax.peft.IA3Config; read when method="ia3".
    c.ia3 = ml_collections.ConfigDict()
    c.ia3.targets = ia3.DEFAULT_TARGETS  # keys, values, MLP output projection
    c.ia3.feedforward = ia3.DEFAULT_FEEDFORWARD  # which targets scale their input

    # Mirrors ftjax.optim.RegularizerConfig; added to the loss (0 = off).
    c.regularizer = ml_collections.ConfigDict()
    c.regularizer.l1 = 0.0
    c.regularizer.l2 = 0.0
    c.regularizer.l2sp = 0.0  # pull toward the pretrained weights (L2-SP)
    c.regularizer.l2sp_include = "backbone/.*"

    c.label_smoothing = 0.0

    # Device mesh (ftjax.parallel): the product is the device count of all processes together;
    # one axis may be -1 to fill. data: batch split, params replicated. fsdp: batch split and
    # params / optimizer state sharded. tensor: Megatron tensor parallelism (heads, MLP, vocab).
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    return c


def _choice(cfg, key, value, options):
    if value not in options:
        raise ValueError(f"config key {key!r} is {value!r}; expected one of {options}")


def _validate_prompt_task(cfg) -> None:
    t, kind = cfg.task, cfg.head.kind
    if (t.template is not None or t.label_words) and t.kind != "classification":
        raise ValueError(f"task.template / task.label_words are for task.kind='classification', "
                         f"not {t.kind!r}")
    if t.template is not None and t.template.count("{text}") != 1:
        raise ValueError(f"task.template must contain {{text}} exactly once: {t.template!r}")
    if t.system_prompt is not None and not t.chat:
        raise ValueError("task.system_prompt applies only with task.chat=True")
    if t.chat and t.template is None:
        raise ValueError("task.chat=True renders task.template as a chat turn; set task.template")
    if kind == "verbalizer":
        if len(t.label_words) != cfg.head.num_labels:
            raise ValueError(f"head.kind='verbalizer' scores one word per label: task.label_words "
                             f"has {len(t.label_words)} ({list(t.label_words)}) for "
                             f"head.num_labels={cfg.head.num_labels}")
        if cfg.head.pooling != "last":
            raise ValueError(f"head.kind='verbalizer' reads the last prompt token: set "
                             f"head.pooling='last' (got {cfg.head.pooling!r})")
    if t.label_words and t.template is None:
        raise ValueError("task.label_words answer a prompt: set task.template (with {text})")
    if kind != "verbalizer" and t.label_words:
        raise ValueError(f"task.label_words are scored by a verbalizer head: set "
                         f"head.kind='verbalizer' (got {kind!r})")


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Value checks the type schema cannot express."""
    from ftjax.config import ConfigError

    try:
        for key in ("steps", "eval_every", "checkpoint_every", "log_every", "batch_size",
                    "eval_batch_size", "accumulation_steps", "keep_checkpoints"):
            if cfg[key] < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {cfg[key]}")
        if cfg.batch_size % cfg.accumulation_steps:
            raise ValueError(
                f"batch_size={cfg.batch_size} is not divisible by "
                f"accumulation_steps={cfg.accumulation_steps}"
            )
        _choice(cfg, "method", cfg.method, METHODS)
        parse_spec(cfg.rules)
        if cfg.method == "custom" and not cfg.rules:
            raise ValueError("method='custom' trains what config key 'rules' says; it is empty")
        if cfg.method in PEFT_METHODS:  # the method's block builds its settings object
            field = PEFT_METHODS[cfg.method][0]
            try:
                method_config(cfg.method, cfg[field])
            except (ValueError, KeyError) as err:
                raise ValueError(f"config block {field!r} (method={cfg.method!r}): "
                                 f"{err.args[0] if err.args else err}") from None
        _choice(cfg, "task.kind", cfg.task.kind, TASKS)
        _choice(cfg, "data.source", cfg.data.source, SOURCES)
        _choice(cfg, "nonfinite", cfg.nonfinite, ("skip", "stop"))
        _choice(cfg, "best_mode", cfg.best_mode, ("max", "min"))
        if cfg.optimizer.learning_rate <= 0:
            raise ValueError(f"optimizer.learning_rate must be > 0, got {cfg.optimizer.learning_rate}")
        if cfg.task.max_length < 2:
            raise ValueError(f"task.max_length must be >= 2, got {cfg.task.max_length}")
        for axis in ("data", "fsdp", "tensor"):
            size = cfg.mesh[axis]
            if size < 1 and size != -1:
                raise ValueError(f"mesh.{axis} must be >= 1 or -1 (fill), got {size}")
        if [cfg.mesh[a] for a in ("data", "fsdp", "tensor")].count(-1) > 1:
            raise ValueError("only one of mesh.data / mesh.fsdp / mesh.tensor may be -1")
        if cfg.model.attention_impl is not None:
            _choice(cfg, "model.attention_impl", cfg.model.attention_impl, ("xla", "cudnn"))
        if cfg.model.frozen_dtype is not None:
            _choice(cfg, "model.frozen_dtype", cfg.model.frozen_dtype,
                    ("float32", "bfloat16", "float16"))
        if cfg.data.source != "polarity" and not cfg.data.path:
            raise ValueError(f"data.source={cfg.data.source!r} needs data.path")
        for key in ("max_train_examples", "max_eval_examples"):
            if cfg.data[key] < 0:
                raise ValueError(f"data.{key} must be >= 0, got {cfg.data[key]}")
        _validate_prompt_task(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
