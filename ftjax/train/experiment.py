"""Build everything a run needs from a config: model, data, trainability, optimizer, state.

`build_experiment(cfg)` is the notebook entry point too: it returns plain objects (the Flax
module, parameter trees, the grain iterator factory, the pure step functions) that can be used
without the loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from ftjax import data as ftdata
from ftjax.io.pretrained import Pretrained, load_pretrained
from ftjax.models import HeadConfig
from ftjax.optim import presets, trainability
from ftjax.optim import learning_rate_fn, make_optimizer, make_regularizer
from ftjax.peft import LoraConfig, add_lora
from ftjax.train.losses import loss_for_task
from ftjax.train.step import TrainState, create_train_state, make_eval_step, make_train_step


@dataclasses.dataclass
class Experiment:
    cfg: ml_collections.ConfigDict
    pretrained: Pretrained
    task: Any
    splits: dict  # split name -> records
    resolved: Any  # tree of trainability Rules
    tx: Any
    state: TrainState
    train_step: Callable
    eval_step: Callable
    learning_rate: Callable

    @property
    def model(self):
        return self.pretrained.model

    @property
    def tokenizer(self):
        return self.pretrained.tokenizer

    def train_iterator(self):
        return ftdata.make_train_iterator(
            self.splits["train"], self.task, self.tokenizer,
            batch_size=self.cfg.batch_size, seed=self.cfg.seed,
        )

    def eval_batches(self, split: str):
        return ftdata.make_eval_batches(
            self.splits[split], self.task, self.tokenizer, batch_size=self.cfg.eval_batch_size
        )


def head_config(cfg) -> HeadConfig:
    return HeadConfig(kind=cfg.head.kind, num_labels=cfg.head.num_labels,
                      pooling=cfg.head.pooling, dropout=cfg.head.dropout)


def build_task(cfg):
    t = cfg.task
    if t.kind == "classification":
        prompt = None
        if t.template is not None:
            prompt = ftdata.PromptTemplate(t.template, chat=t.chat, system=t.system_prompt)
        return ftdata.SequenceClassification(
            t.text_key, t.label_key, num_labels=cfg.head.num_labels, max_length=t.max_length,
            text_pair_key=t.text_pair_key, prompt=prompt, label_words=tuple(t.label_words),
        )
    if t.kind == "causal_lm":
        return ftdata.CausalLM(t.text_key, t.max_length, packing=t.packing,
                               prompt_key=t.prompt_key)
    return ftdata.MaskedLM(t.text_key, t.max_length, mask_prob=t.mask_prob)


def load_splits(cfg) -> dict:
    d = cfg.data
    names = {"train": d.train_split, "validation": d.validation_split, "test": d.test_split}
    if d.source == "polarity":
        splits = ftdata.polarity_splits(seed=d.split_seed)
    elif d.source == "local":
        # One file per split: data.path is a pattern with {split}, or a single train file.
        label = cfg.task.label_key if cfg.task.kind == "classification" else None
        splits = {}
        for role, split in names.items():
            path = d.path.format(split=split)
            if role != "train" and path == d.path and "{split}" not in d.path:
                continue
            splits[role] = ftdata.local_file(path, text_column=cfg.task.text_key,
                                             label_column=label, num_labels=cfg.head.num_labels)
    elif d.source == "hf":
        splits = {role: ftdata.hf_dataset(d.path, split) for role, split in names.items()}
    else:
        splits = {role: ftdata.tfds_source(d.path, split) for role, split in names.items()}
    limits = {"train": d.max_train_examples, "validation": d.max_eval_examples,
              "test": d.max_eval_examples}
    for role, limit in limits.items():
        if limit and role in splits:
            splits[role] = subsample(splits[role], limit, seed=d.split_seed)
    return splits


def subsample(records, n: int, *, seed: int) -> list:
    """A random `n` of `records` (all of them if fewer), in their original order.

    Random rather than the first n: sources are often ordered by something that correlates
    with the label (the polarity splits are ordered by id, positives first). Seeded, so every
    run with the same seed evaluates on the same subset.
    """
    if n >= len(records):
        return [records[i] for i in range(len(records))]
    keep = np.sort(np.random.default_rng(seed).permutation(len(records))[:n])
    return [records[int(i)] for i in keep]


def method_args(cfg, num_train_examples: int) -> dict:
    """cfg.method_args as MethodConfig fields; unfreezing given in epochs becomes steps."""
    args = cfg.method_args.to_dict()
    epochs = args.pop("unfreeze_every_epochs")
    if epochs:
        per_epoch = max(ftdata.steps_per_epoch(num_train_examples, cfg.batch_size), 1)
        args["unfreeze_every"] = max(int(round(epochs * per_epoch)), 1)
    return args


def build_experiment(cfg: ml_collections.ConfigDict) -> Experiment:
    task = build_task(cfg)
    pretrained = load_pretrained(
        cfg.model.name, head=head_config(cfg), dtype=cfg.model.dtype,
        param_dtype=cfg.model.param_dtype, scan_layers=cfg.model.scan_layers,
        rng_seed=cfg.seed,
        # A verbalizer head starts from the LM's rows of the label words, found by the task
        # (where each word is one token depends on the prompt and the tokenizer).
        label_tokens=task.label_token_ids if cfg.head.kind == "verbalizer" else None,
    )
    changes = {"remat": cfg.model.remat}
    for key in ("hidden_dropout", "attention_dropout", "embedding_dropout"):
        if cfg.model[key] is not None:
            changes[key] = cfg.model[key]
    pretrained.model = dataclasses.replace(
        pretrained.model, config=dataclasses.replace(pretrained.model.config, **changes)
    )
    if cfg.method == "lora":
        # The base comes from the checkpoint; the adapter leaves are new, seeded like the head.
        pretrained.model, pretrained.params = add_lora(
            pretrained.model, pretrained.params, LoraConfig.from_config(cfg.lora),
            jax.random.key(cfg.seed),
        )
    params = pretrained.params
    splits = load_splits(cfg)
    spec = presets.method_spec(cfg.method, pretrained.model.config,
                               method_cfg=method_args(cfg, len(splits["train"])),
                               head_kind=cfg.head.kind)
    resolved = trainability.resolve(spec, params)
    mask = trainability.trainable_mask(resolved)
    trainable, _ = trainability.partition(params, mask)
    tx = make_optimizer(cfg.optimizer, resolved, trainable, total_steps=cfg.steps)
    regularizer = make_regularizer(cfg.regularizer, trainable)
    state = create_train_state(params, mask, tx, cfg.seed, regularizer=regularizer)
    loss_fn = loss_for_task(cfg.task.kind, cfg.label_smoothing)
    lr_fn = learning_rate_fn(cfg.optimizer, cfg.steps)
    return Experiment(
        cfg=cfg, pretrained=pretrained, task=task, splits=splits,
        resolved=resolved, tx=tx, state=state,
        train_step=make_train_step(pretrained.model, tx, loss_fn,
                                   accumulation_steps=cfg.accumulation_steps,
                                   learning_rate_fn=lr_fn),
        eval_step=make_eval_step(pretrained.model, loss_fn),
        learning_rate=lr_fn,
    )


def evaluate(eval_step_jit, state: TrainState, batches) -> dict:
    """Sum the eval step over a finite pass of batches; metrics are exact per-example means."""
    totals = None
    for batch in batches:
        sums = eval_step_jit(state.trainable, state.frozen, batch)
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    totals = jax.device_get(totals)
    weight = max(float(totals["weight"]), 1.0)
    return {"loss": float(totals["loss_sum"]) / weight,
            "accuracy": float(totals["correct"]) / weight,
            "examples": float(totals["weight"])}


def restore_run(workdir, *, best: bool = False, cfg=None):
    """(experiment, Restored) of an `ftjax train` run directory: the experiment rebuilt from
    `cfg` (default: the run's saved config.json) and its latest (or best) checkpoint."""
    import json
    from pathlib import Path

    from ftjax.config import config_from_dict
    from ftjax.io.checkpoint import Checkpointer

    workdir = Path(workdir)
    if cfg is None:
        config_file = workdir / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{workdir} has no config.json: is it an `ftjax train` workdir?")
        cfg = config_from_dict(json.loads(config_file.read_text()), str(config_file))
    exp = build_experiment(cfg)
    ckpt = Checkpointer(workdir, keep=cfg.keep_checkpoints)
    restored = ckpt.restore(exp.state, best=best)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no {'best' if best else 'latest'} checkpoint in {workdir}")
    return exp, restored
