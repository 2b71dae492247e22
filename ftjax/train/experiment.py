"""Build everything a run needs from a config: model, data, trainability, optimizer, state.

`build_experiment(cfg)` is the notebook entry point too: it returns plain objects (the Flax
module, parameter trees, the grain iterator factory, the pure step functions) that can be used
without the loop.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from typing import Any, Callable, Sequence

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from ftjax import parallel
from ftjax.data import (
    ROLES,
    batch_length,
    bucket_lengths,
    cut_to_bucket,
    data_facts,
    data_notes,
    load_run_data,
    make_eval_batches,
    make_mixed_train_iterator,
    make_task,
    source_configs,
    steps_per_epoch,
)
from ftjax.io.checkpoint import params_shape_hash
from ftjax.io.adapter import load_adapter, read_adapter_meta
from ftjax.io.adapter_store import adapter_dir
from ftjax.io.pretrained import Pretrained, load_pretrained
from ftjax.models import HeadConfig, plan_for_model
from ftjax.models.layout import keep_layers
from ftjax.nn.adapters import ADAPTER_LEAVES
from ftjax.nn.dense_methods import DenseMethod
from ftjax.nn.hyperformer import HyperConfig
from ftjax.objectives import LossTerm
from ftjax.objectives.term import TERM_PARAMS, TermSetup
from ftjax.optim import learning_rate_fn, make_optimizer, trainability
from ftjax.optim.rules import Rule, check_rules_match, parse_spec
from ftjax.peft import (
    PEFT_METHODS,
    add_dense_method,
    add_peft,
    method_config,
    presets,
    with_slots,
)
from ftjax.peft.composition import ComposeConfig, compose_adapters
from ftjax.peft.hyperformer import add_hyperformer
from ftjax.peft.multi import exact_paths
from ftjax.settings import ConfigError
from ftjax.train.config import typed
from ftjax.train.initial_weights import start_from
from ftjax.train.state import TrainState, create_train_state, state_shardings
from ftjax.train.step import (
    jit_eval_step,
    jit_train_step,
    make_eval_step,
    make_train_step,
)
from ftjax.train.terms import terms_from_config
from ftjax.utils.imports import import_object
from ftjax.utils.paths import path_str
from ftjax.utils.tree import split_leaves

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Experiment:
    cfg: ml_collections.ConfigDict
    pretrained: Pretrained
    sources: list  # ftjax.data.RunSource per data source, in the config's order
    resolved: Any  # tree of trainability Rules
    mask: Any  # trainability.trainable_mask(resolved): how the state splits the params
    terms: tuple  # the loss terms (ftjax.objectives), the task's first
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
    def task(self):
        """The task of the (first) source; every source's task differs only in its columns."""
        return self.sources[0].task

    @property
    def splits(self) -> list[str]:
        """The roles some source has a split for, in order (train, validation, test)."""
        return [r for r in ROLES if any(r in s.splits for s in self.sources)]

    @property
    def result_splits(self) -> list[str]:
        """What a finished run reports: its eval splits, then test, those the data has."""
        return [s for s in dict.fromkeys((*self.cfg.eval_splits, "test")) if s in self.splits]

    def data_facts(self) -> dict:
        return data_facts(self.sources)

    def data_notes(self) -> list[str]:
        """What the run says about its data at the start (each source's curriculum)."""
        return data_notes(self.sources)

    def train_iterator(self):
        """This process's share of the train stream, the sources mixed and batched as
        configured (with several processes, process i reads every n-th example and batches of
        batch_size / n rows; place_train_batch joins them). data.anneal_examples 0 anneals over
        the whole run: steps * batch_size examples of the global stream."""
        count = jax.process_count()
        data = self.cfg.data
        trained = [s.train_source(self.tokenizer) for s in self.sources if s.trained]
        return make_mixed_train_iterator(
            trained, self.tokenizer,
            batch_size=self.cfg.batch_size // count, seed=self.cfg.seed,
            mixing=data.mixing, temperature=data.temperature,
            anneal_examples=data.anneal_examples or self.cfg.steps * self.cfg.batch_size,
            batching=data.batching, shard_index=jax.process_index(), shard_count=count,
            group_by_length=data.group_by_length)

    def eval_batches(self, split: str, source: str | None = None, *, task=None,
                     max_records: int | None = None, indices: Sequence[int] | None = None):
        """numpy eval batches of one source's split (every process reads all of them); the
        source may be left out when the run has one. task: rows of another task over the same
        records (a masked LM's pseudo-likelihood rows); max_records: the first n only;
        indices: these records only, in this order."""
        index = self._source_index(source)
        s = self.sources[index]
        records = s.splits[split]
        if indices is not None:
            records = [records[int(i)] for i in indices]
        if max_records is not None and max_records < len(records):
            records = [records[i] for i in range(max_records)]
        return make_eval_batches(records, task or s.task, self.tokenizer,
                                 batch_size=self.cfg.eval_batch_size, source_index=index,
                                 group_by_length=self.cfg.data.group_by_length)

    def _source_index(self, source: str | None) -> int:
        names = [s.name for s in self.sources]
        if source is None:
            if len(names) > 1:
                raise ValueError(f"the run has several sources {names}: name one")
            return 0
        if source not in names:
            raise KeyError(f"no source {source!r}; the run has {names}")
        return names.index(source)

    @functools.cached_property
    def buckets(self) -> tuple[int, ...]:
        """The lengths batches are cut to (ftjax.data.bucketing); () when they keep
        task.max_length."""
        return bucket_lengths(self.cfg.data.buckets, self.task.max_length)

    def place_train_batch(self, batch: dict) -> dict:
        """A numpy train batch (this process's rows) cut to its bucket and placed on the mesh.
        Processes hold different rows, so they first agree on the longest row of all."""
        if self.buckets:
            batch = cut_to_bucket(batch, self.buckets, parallel.agreed_max(batch_length(batch)))
        return parallel.place_batch(batch, self.plan.batch, per_process=True)

    def placed_eval_batches(self, split: str, source: str | None = None, **options):
        """Eval batches cut to their buckets and placed (every process reads them all)."""
        for batch in self.eval_batches(split, source, **options):
            yield parallel.place_batch(cut_to_bucket(batch, self.buckets), self.plan.batch,
                                       per_process=False)

    def jit_train_step(self):
        """The train step jitted with the state's shardings (state donated, frozen kept)."""
        return jit_train_step(self.train_step, state_shardings(self.state), self.plan.batch)

    def jit_eval_step(self):
        return jit_eval_step(self.eval_step, state_shardings(self.state), self.plan.batch)


def labels_of(task, head) -> int | None:
    """The label count a task's data is checked against: its head's (classification and
    token classification), None for the other kinds."""
    return head.num_labels if task.kind in ("classification", "token_classification") else None


def head_config(cfg) -> HeadConfig:
    return HeadConfig(kind=cfg.head.kind, num_labels=cfg.head.num_labels,
                      pooling=cfg.head.pooling, dropout=cfg.head.dropout)


def build_task(cfg):
    """The task of a run config's (first) source, without loading any data."""
    run = typed(cfg)
    first = next(iter(source_configs(run.sources, run.data, run.task).values()))
    return make_task(run.task, first, num_labels=cfg.head.num_labels)


def method_args(cfg, num_train_examples: int) -> dict:
    """cfg.method_args as MethodConfig fields; unfreezing given in epochs becomes steps."""
    args = {**cfg.method_args.to_dict(), "stack_target": cfg.compose.target}
    epochs = args.pop("unfreeze_every_epochs")
    if epochs:
        per_epoch = max(steps_per_epoch(num_train_examples, cfg.batch_size), 1)
        args["unfreeze_every"] = max(int(round(epochs * per_epoch)), 1)
    return args


def dense_methods(cfg) -> list[DenseMethod]:
    """The config's `dense_methods`, each 'module:Name' of a DenseMethod subclass (made with no
    arguments) or of a function returning one."""
    methods = []
    for target in cfg.dense_methods:
        method = import_object(target, "dense method")()
        if not isinstance(method, DenseMethod):
            raise ConfigError(f"dense method {target!r} made {method!r}, not a DenseMethod")
        methods.append(method)
    return methods


def peft_settings(cfg):
    """The config block of a PEFT method (`cfg.lora`, `cfg.adapter`, ...), as a dict."""
    field = PEFT_METHODS[cfg.method][0]
    return cfg[field].to_dict()


def load_model(spec: str, dtype: str = "float32") -> tuple:
    """(model, params) of another model for a loss term (a teacher): an ftjax adapter
    directory (or a run's adapter/) on its base, else a pretrained name or checkpoint path; in
    `dtype`. A finished run's workdir needs ftjax.train.restore.load_run_model."""
    try:
        directory = adapter_dir(spec)
    except FileNotFoundError:
        directory = None
    if directory is not None:
        base = read_adapter_meta(directory)["base"]["name"]
        model, params = load_adapter(directory, load_pretrained(base, dtype="float32"))
    else:
        if Path(spec).is_dir() and (Path(spec) / "config.json").is_file() and \
                (Path(spec) / "results.json").is_file():
            raise ConfigError(f"{spec} is a run's workdir: build with "
                              f"ftjax.train.restore.build_run_experiment to load it")
        pretrained = load_pretrained(spec, dtype="float32")
        model, params = pretrained.model, pretrained.params
    return in_dtype(model, params, dtype)


def in_dtype(model, params: dict, dtype: str) -> tuple:
    """The model computing and storing its floating-point parameters in `dtype`."""
    model = model.clone(config=model.config.with_policy(dtype=dtype, param_dtype=dtype))
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x  # noqa: E731
    return model, jax.tree.map(cast, params)


def build_data(cfg: ml_collections.ConfigDict, *, roles: tuple[str, ...] = ROLES,
               data_facts: dict | None = None) -> list:
    """A run config's sources, loaded and checked as its run loads them (no model)."""
    run = typed(cfg)
    return load_run_data(
        source_configs(run.sources, run.data, run.task), run.task, roles=roles,
        num_labels=labels_of(run.task, run.head), facts=data_facts,
        tasks={name: (entry.task, labels_of(entry.task, entry.head))
               for name, entry in run.tasks.items()})


def build_experiment(cfg: ml_collections.ConfigDict, *, terms: tuple[LossTerm, ...] = (),
                     roles: tuple[str, ...] = ROLES, data_facts: dict | None = None,
                     base_params: dict | None = None,
                     load_model: Callable[[str, str], tuple] = load_model) -> Experiment:
    """Everything a run needs, its data loaded and checked first (a data error costs no model
    load).

    terms: loss terms of your own beside the config's (ftjax.objectives.LossTerm instances).
    roles / data_facts: the splits to load, and what the run saved about its data
    (Experiment.data_facts(): label names, train sizes); a run restored for evaluation loads
    ("validation", "test") only.
    base_params: with cfg.init_from, that run's final parameters merged into the pretrained
    architecture (ftjax.train.restore.build_run_experiment reads them; so does every command).
    load_model: how loss terms load other models (a teacher); build_run_experiment also reads
    finished runs' workdirs.
    """
    run = typed(cfg)
    loss_terms = terms_from_config(cfg, run, terms)
    sources = build_data(cfg, roles=roles, data_facts=data_facts)
    available = {role for s in sources for role in s.splits} | set(
        role for role in ROLES if role not in roles)
    unknown = [s for s in cfg.eval_splits if s not in available]
    if unknown:
        raise ConfigError(f"eval_splits {unknown}: no source has such a split (the run's "
                          f"splits: {sorted(available)})")
    task = sources[0].task
    pretrained = load_pretrained(
        cfg.model.name, head=None if run.tasks else head_config(cfg), dtype=cfg.model.dtype,
        param_dtype=cfg.model.param_dtype, scan_layers=cfg.model.scan_layers,
        rng_seed=cfg.seed,
        # A verbalizer head starts from the LM's rows of the label words, found by the task
        # (where each word is one token depends on the prompt and the tokenizer).
        label_tokens=task.label_token_ids if cfg.head.kind == "verbalizer" else None,
        task_heads=tuple((name, entry.head) for name, entry in run.tasks.items()),
    )
    changes = {"remat": cfg.model.remat}
    for key in ("attention_impl", "hidden_dropout", "attention_dropout", "embedding_dropout"):
        if cfg.model[key] is not None:
            changes[key] = cfg.model[key]
    pretrained.model = dataclasses.replace(
        pretrained.model, config=dataclasses.replace(pretrained.model.config, **changes)
    )
    if cfg.model.keep_layers:
        try:
            pretrained.model, pretrained.params = keep_layers(
                pretrained.model, pretrained.params, cfg.model.keep_layers)
        except ValueError as err:
            raise ConfigError(f"model.keep_layers on {cfg.model.name}: {err}") from None
    if cfg.init_from:
        if base_params is None:
            raise ConfigError(f"init_from={cfg.init_from!r}: build the run with "
                              "ftjax.train.restore.build_run_experiment, which reads that "
                              "run's weights")
        pretrained.params = start_from(pretrained.params, base_params,
                                       keep_head=cfg.init_head == "keep", where=cfg.init_from)
    try:
        if cfg.method in PEFT_METHODS:
            # The base comes from the checkpoint; the method's leaves are new, seeded like the
            # head.
            pretrained.model, pretrained.params = add_peft(
                pretrained.model, pretrained.params, cfg.method, peft_settings(cfg),
                jax.random.key(cfg.seed), tokenizer=pretrained.tokenizer)
        if cfg.method in ("fusion", "stack"):
            pretrained.model, pretrained.params = compose_from_config(
                cfg, pretrained, jax.random.key(cfg.seed))
        if cfg.method == "hyperformer":
            hyper = HyperConfig.from_config(cfg.hyperformer)
            adapter = method_config(hyper.adapter_kind, {
                **cfg.adapter.to_dict(), "kind": hyper.adapter_kind})
            pretrained.model, pretrained.params = add_hyperformer(
                pretrained.model, pretrained.params, tuple(run.tasks), hyper, adapter,
                jax.random.key(cfg.seed))
        for i, method in enumerate(dense_methods(cfg)):
            pretrained.model, pretrained.params = add_dense_method(
                pretrained.model, pretrained.params, method,
                jax.random.fold_in(jax.random.key(cfg.seed), i + 1))
    except ValueError as err:  # settings that do not fit this model (targets, sizes)
        raise ConfigError(f"method {cfg.method!r} on {cfg.model.name}: {err}") from None
    params = pretrained.params
    base_hash = params_shape_hash(params)
    mesh = build_mesh(cfg)
    own_rules = parse_spec(cfg.rules)
    check_rules_match(own_rules, params)
    trained = [s for s in sources if s.trained]  # first, in mixture order (source_configs)
    spec = own_rules + idle_heads_frozen(run, trained) + presets.method_spec(
        cfg.method, pretrained.model.config,
        method_cfg=method_args(cfg, sum(s.num_train for s in trained)),
        head_kind="sequence" if run.tasks else cfg.head.kind)  # task heads are new
    resolved = trainability.resolve(spec, params)
    mask = trainability.trainable_mask(resolved)
    if cfg.adapter_per_task:
        pretrained.model, params = with_slots(pretrained.model, params, tuple(run.tasks),
                                              per_task_leaves(mask))
        resolved = trainability.resolve(spec, params)
        mask = trainability.trainable_mask(resolved)
        base_hash = params_shape_hash(params)
    plan = plan_for_model(pretrained.model, params, mesh)
    shared: dict = {}  # what the terms build alike (a loaded teacher), from here to their state
    own = term_params(loss_terms, TermSetup(
        params=None, mask=None, trainable=None, place_like_trainable=None,
        place_replicated=None, model=pretrained.model, tokenizer=pretrained.tokenizer,
        config=cfg, load_model=load_model, shared=shared), jax.random.key(cfg.seed))
    if own:  # the terms' own parameters: always trained, replicated
        params = {**params, TERM_PARAMS: own}
        spec = [(f"{TERM_PARAMS}/.*", Rule()), *spec]
        resolved = trainability.resolve(spec, params)
        mask = trainability.trainable_mask(resolved)
        base_hash = params_shape_hash(params)
        plan = dataclasses.replace(plan, params={
            **plan.params, TERM_PARAMS: jax.tree.map(lambda _: plan.replicated, own)})
    # Shapes suffice for the optimizer.
    shapes = trainability.trainable_half(jax.eval_shape(lambda p: p, params), mask)
    tx = make_optimizer(cfg.optimizer, resolved, shapes, total_steps=cfg.steps)
    # The loaded arrays move into the state (no second copy of the model on any device), so
    # pretrained keeps none: its arrays are donated, and re-combining the halves here would
    # pin a copy of every stack split between them. exp.params combines them on demand.
    state = create_train_state(params, mask, tx, cfg.seed, terms=loss_terms, plan=plan,
                               frozen_dtype=cfg.model.frozen_dtype, donate_params=True,
                               model=pretrained.model, tokenizer=pretrained.tokenizer,
                               config=cfg, load_model=load_model,
                               train_rows=trained[0].train_task.row_shapes()
                               if trained else None, shared=shared)
    pretrained.params = None
    lr_fn = learning_rate_fn(cfg.optimizer, cfg.steps)
    return Experiment(
        cfg=cfg, pretrained=pretrained, sources=sources,
        resolved=resolved, mask=mask, terms=tuple(loss_terms), tx=tx, state=state,
        train_step=make_train_step(pretrained.model, tx, loss_terms,
                                   accumulation_steps=cfg.accumulation_steps,
                                   learning_rate_fn=lr_fn, sources=[s.name for s in trained]),
        eval_step=make_eval_step(pretrained.model, loss_terms,
                                 predict=getattr(task, "predict", None)),
        learning_rate=lr_fn, plan=plan, base_hash=base_hash,
    )


def term_params(terms, setup: TermSetup, rng: jax.Array) -> dict:
    """{term name: its own parameters} of the terms that have some (LossTerm.init_params)."""
    out = {}
    for i, term in enumerate(terms):
        own = term.init_params(setup, jax.random.fold_in(rng, 7919 + i))
        if own is not None:
            out[term.name] = own
    return out


def compose_from_config(cfg, pretrained: Pretrained, rng: jax.Array) -> tuple:
    """(model, params) of methods fusion / stack: the trained adapters the compose block
    names, loaded onto the run's base (each checked to fit it) and composed."""
    compose = ComposeConfig.from_config(cfg.compose)
    adapters, settings = {}, {}
    for name, directory in compose.named().items():
        try:
            model, params = load_adapter(adapter_dir(directory), pretrained)
        except (OSError, ValueError) as err:
            raise ConfigError(f"compose.adapters {name}={directory}: {err}") from None
        if model.config.peft_methods != ("adapter",) or model.config.adapter.compose:
            raise ConfigError(f"compose.adapters {name}={directory}: holds "
                              f"{list(model.config.peft_methods) or 'no method'}, not one "
                              f"bottleneck adapter (houlsby / pfeiffer)")
        adapters[name] = split_leaves(params, ADAPTER_LEAVES)[1]
        settings[name] = model.config.adapter
    first = next(iter(settings))
    for name, adapter in settings.items():
        if adapter != settings[first]:
            raise ConfigError(f"compose.adapters: {name} is a {adapter} and {first} a "
                              f"{settings[first]}; composed adapters share one kind and size")
    return compose_adapters(pretrained.model, pretrained.params, adapters, settings[first],
                            cfg.method, rng, target=compose.target)


def idle_heads_frozen(run, trained) -> list:
    """Rules freezing the heads of a multi-task run's tasks that no trained source feeds (a
    continual stage's earlier and later tasks, evaluated only): they get no gradient, and
    frozen they also get no weight decay and no optimizer state, so they stay bit-identical."""
    fed = {run.sources[s.name].task for s in trained} if run.sources else set()
    return [(f"head/{re.escape(task)}/.*", Rule(frozen=True))
            for task in run.tasks if task not in fed]


def per_task_leaves(mask) -> str:
    """The regex of the leaves each task of an adapter-per-task run has its own copy of: what
    trains besides the heads (head/<task>/ is already per task)."""
    flat = jax.tree_util.tree_flatten_with_path(mask)[0]
    paths = {path_str(path): m for path, m in flat}
    partial = sorted(p for p, m in paths.items() if not isinstance(m, bool))
    if partial:
        raise ConfigError(f"adapter_per_task: {partial[0]} trains only some of its layers; "
                          f"a task's adapter trains its leaves whole (use scan_layers=False "
                          f"or rules that train whole stacks)")
    trained = [p for p, m in paths.items() if m and not p.startswith("head/")]
    if not trained:
        raise ConfigError("adapter_per_task: the method trains nothing besides the heads")
    return exact_paths(trained)


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
