"""Build everything a run needs from a config: model, data, trainability, optimizer, state.

`build_experiment(cfg)` is the notebook entry point too: it returns plain objects (the Flax
module, parameter trees, the grain iterator factory, the pure step functions) that can be used
without the loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from ftjax import data as ftdata
from ftjax import parallel
from ftjax.io.checkpoint import Checkpointer, params_shape_hash
from ftjax.io.pretrained import Pretrained, load_pretrained
from ftjax.models import HeadConfig, plan_for_model
from ftjax.objectives.losses import loss_for_task
from ftjax.optim import (
    RegularizerConfig,
    learning_rate_fn,
    make_optimizer,
    make_regularizer,
    trainability,
)
from ftjax.optim.rules import check_rules_match, parse_spec
from ftjax.peft import PEFT_METHODS, add_peft, presets
from ftjax.settings import ConfigError
from ftjax.train.config import config_from_dict
from ftjax.train.step import (
    TrainState,
    create_train_state,
    jit_eval_step,
    jit_train_step,
    make_eval_step,
    make_train_step,
    state_shardings,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Experiment:
    cfg: ml_collections.ConfigDict
    pretrained: Pretrained
    task: Any
    splits: dict  # split name -> records
    resolved: Any  # tree of trainability Rules
    tx: Any
    state: TrainState
    train_step: Callable  # pure; jit it with jit_train_step()
    eval_step: Callable  # pure; jit it with jit_eval_step()
    learning_rate: Callable
    plan: parallel.ShardPlan  # the mesh and every parameter's sharding
    base_hash: str  # params_shape_hash of the base the run starts from (before any cast)

    @property
    def model(self):
        return self.pretrained.model

    @property
    def tokenizer(self):
        return self.pretrained.tokenizer

    @property
    def params(self):
        """The run's current parameters, the state's two halves combined (new arrays for the
        stacks split between them). `ftjax.generate(exp, ...)` generates with them."""
        return self.state.params

    @property
    def mesh(self):
        return self.plan.mesh

    @property
    def result_splits(self) -> list[str]:
        """What a finished run reports: its eval splits, then test, those the data has."""
        return [s for s in dict.fromkeys((*self.cfg.eval_splits, "test")) if s in self.splits]

    def train_iterator(self):
        """This process's share of the train stream: with several processes, process i reads
        every n-th example and batches of batch_size / n rows (place_train_batch joins them)."""
        count = jax.process_count()
        return ftdata.make_train_iterator(
            self.splits["train"], self.task, self.tokenizer,
            batch_size=self.cfg.batch_size // count, seed=self.cfg.seed,
            shard_index=jax.process_index(), shard_count=count,
        )

    def eval_batches(self, split: str):
        """numpy eval batches (every process reads all of them); see placed_eval_batches."""
        return ftdata.make_eval_batches(
            self.splits[split], self.task, self.tokenizer, batch_size=self.cfg.eval_batch_size
        )

    def place_train_batch(self, batch: dict) -> dict:
        return parallel.place_batch(batch, self.plan.batch, per_process=True)

    def placed_eval_batches(self, split: str):
        for batch in self.eval_batches(split):
            yield parallel.place_batch(batch, self.plan.batch, per_process=False)

    def jit_train_step(self):
        """The train step jitted with the state's shardings (state donated, frozen kept)."""
        return jit_train_step(self.train_step, state_shardings(self.state), self.plan.batch)

    def jit_eval_step(self):
        return jit_eval_step(self.eval_step, state_shardings(self.state), self.plan.batch)


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


def peft_settings(cfg):
    """The config block of a PEFT method (`cfg.lora`, `cfg.adapter`, ...), as a dict."""
    field = PEFT_METHODS[cfg.method][0]
    return cfg[field].to_dict()


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
    for key in ("attention_impl", "hidden_dropout", "attention_dropout", "embedding_dropout"):
        if cfg.model[key] is not None:
            changes[key] = cfg.model[key]
    pretrained.model = dataclasses.replace(
        pretrained.model, config=dataclasses.replace(pretrained.model.config, **changes)
    )
    if cfg.method in PEFT_METHODS:
        # The base comes from the checkpoint; the method's leaves are new, seeded like the head.
        pretrained.model, pretrained.params = add_peft(
            pretrained.model, pretrained.params, cfg.method, peft_settings(cfg),
            jax.random.key(cfg.seed), tokenizer=pretrained.tokenizer,
        )
    params = pretrained.params
    base_hash = params_shape_hash(params)
    mesh = build_mesh(cfg)
    splits = load_splits(cfg)
    own_rules = parse_spec(cfg.rules)
    check_rules_match(own_rules, params)
    spec = own_rules + presets.method_spec(cfg.method, pretrained.model.config,
                                           method_cfg=method_args(cfg, len(splits["train"])),
                                           head_kind=cfg.head.kind)
    resolved = trainability.resolve(spec, params)
    mask = trainability.trainable_mask(resolved)
    # Shapes suffice for the optimizer; arrays are sliced (a copy of each split stack's trained
    # layers) only for a regularizer's anchor, and then once more into the state.
    shapes = trainability.trainable_half(jax.eval_shape(lambda p: p, params), mask)
    tx = make_optimizer(cfg.optimizer, resolved, shapes, total_steps=cfg.steps)
    regularizer = None
    if RegularizerConfig.from_config(cfg.regularizer).active:
        anchor = trainability.trainable_half(params, mask)
        regularizer = make_regularizer(cfg.regularizer, anchor, mask)
    plan = plan_for_model(pretrained.model, params, mesh)
    # The loaded arrays move into the state (no second copy of the model on any device), so
    # pretrained keeps none: its arrays are donated, and re-combining the halves here would
    # pin a copy of every stack split between them. exp.params combines them on demand.
    state = create_train_state(params, mask, tx, cfg.seed, regularizer=regularizer, plan=plan,
                               frozen_dtype=cfg.model.frozen_dtype, donate_params=True)
    pretrained.params = None
    loss_fn = loss_for_task(cfg.task.kind, cfg.label_smoothing)
    lr_fn = learning_rate_fn(cfg.optimizer, cfg.steps)
    return Experiment(
        cfg=cfg, pretrained=pretrained, task=task, splits=splits,
        resolved=resolved, tx=tx, state=state,
        train_step=make_train_step(pretrained.model, tx, loss_fn,
                                   accumulation_steps=cfg.accumulation_steps,
                                   learning_rate_fn=lr_fn),
        eval_step=make_eval_step(pretrained.model, loss_fn),
        learning_rate=lr_fn, plan=plan, base_hash=base_hash,
    )


def build_mesh(cfg):
    """cfg.mesh as a jax Mesh, checking that the batches split evenly over it."""
    try:
        mesh = parallel.mesh_from_config(cfg.mesh)
    except parallel.MeshError as err:
        raise ConfigError(str(err)) from None
    shards, processes = parallel.batch_shards(mesh), jax.process_count()
    for key in ("batch_size", "eval_batch_size"):
        if cfg[key] % shards:
            raise ConfigError(
                f"{key}={cfg[key]} does not split over the mesh's batch axes "
                f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']} = {shards} shards); "
                f"use a multiple of {shards}")
    if cfg.batch_size % processes:
        raise ConfigError(f"batch_size={cfg.batch_size} does not split over {processes} processes")
    if cfg.accumulation_steps > 1 and (cfg.batch_size // cfg.accumulation_steps) % shards:
        logger.warning("micro-batches of %d rows do not split over %d batch shards: XLA will "
                       "reshard each one", cfg.batch_size // cfg.accumulation_steps, shards)
    return mesh


def evaluate(eval_step_jit, state: TrainState, batches) -> dict:
    """Sum the eval step over a finite pass of batches; metrics are exact per-example means.

    batches: Experiment.placed_eval_batches(split) (or numpy batches for an unsharded state).
    """
    totals = None
    for batch in batches:
        sums = eval_step_jit(state.trainable, state.frozen, batch)
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    totals = jax.device_get(totals)
    weight = max(float(totals["weight"]), 1.0)
    return {"loss": float(totals["loss_sum"]) / weight,
            "accuracy": float(totals["correct"]) / weight,
            "examples": float(totals["weight"])}


def restore_run(workdir, *, best: bool = False, cfg=None, full_precision: bool = False):
    """(experiment, Restored) of an `ftjax train` run directory: the experiment rebuilt from
    `cfg` (default: the run's saved config.json) and its latest (or best) checkpoint.

    The saved config's `mesh` block is not reused: the run may have been trained on another
    machine's devices, and the checkpoint restores onto any mesh. Without `cfg` the default mesh
    (data parallel over this machine's devices) is used; pass a cfg to choose one.
    full_precision: rebuild the frozen leaves at the run's param_dtype even if it trained with a
    lower model.frozen_dtype (they are the pretrained weights; checkpoints never hold them), for
    export and generation.
    A newer checkpoint that is corrupt or incomplete is skipped with a warning (see
    Checkpointer.restore and Restored.skipped); one that does not fit the rebuilt state raises
    IncompatibleCheckpointError.
    """
    workdir = Path(workdir)
    if cfg is None:
        config_file = workdir / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{workdir} has no config.json: is it an `ftjax train` workdir?")
        values = json.loads(config_file.read_text())
        values.pop("mesh", None)  # the schema's default mesh: whatever devices are here
        cfg = config_from_dict(values, str(config_file))
    if full_precision and cfg.model.frozen_dtype is not None:
        cfg = config_from_dict({**cfg.to_dict(), "model": {**cfg.model.to_dict(),
                                                           "frozen_dtype": None}}, str(workdir))
    exp = build_experiment(cfg)
    # Read only: a run directory may be read-only (shared, archived); nothing is written to it.
    ckpt = Checkpointer(workdir, keep=cfg.keep_checkpoints, read_only=True)
    try:
        restored = ckpt.restore(exp.state, best=best)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no {'best' if best else 'latest'} checkpoint in {workdir}")
    return exp, restored
