"""The run config's schema: every key, its type, default and help, written once.

`RunConfig` is the root block; the blocks it nests are declared beside the code that reads them
(`optimizer`: ftjax.optim, `lora`: ftjax.nn.lora, `task` / `data`: ftjax.data.config, ...).
Experiment files start from `base_config()` (the schema's defaults as an ml_collections
ConfigDict) and change what they need; `load_config` rejects any key the schema lacks (naming the
closest valid one), any value of the wrong type, and any value a block's own checks or the checks
across blocks (`validate`) reject. `ftjax config show EXPERIMENT` prints every key with its help.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import ml_collections

from ftjax.data.config import DataConfig, SourceConfig, TaskConfig
from ftjax.data.replay import ReplayConfig
from ftjax.models import HeadConfig
from ftjax.nn.adapters import AdapterConfig
from ftjax.nn.ia3 import IA3Config
from ftjax.nn.hyperformer import HyperConfig
from ftjax.peft.composition import ComposeConfig
from ftjax.nn.lora import LoraConfig
from ftjax.nn.prefix import PrefixConfig
from ftjax.nn.prompt import PromptConfig
from ftjax.objectives import RegularizerConfig, TermConfig, entry_config_class
from ftjax.optim.config import OptimizerConfig
from ftjax.optim.rules import parse_spec
from ftjax.parallel.mesh import MeshConfig
from ftjax.peft import PEFT_METHODS, method_config
from ftjax.peft.presets import METHODS, MethodConfig
from ftjax.settings import ConfigError, Schema, files, setting
from ftjax.train.robustness import RobustnessConfig
from ftjax.settings.schema import block_keys
from ftjax.utils.imports import import_object

DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The pretrained model and how it runs (the `model` block)."""

    name: str = setting("all-minilm-l6-v2", "asset name or local path (GGUF file or HF "
                        "directory)")
    dtype: str | None = setting(None, "compute dtype; None: float32 on CPU, bfloat16 on GPU",
                                choices=DTYPES)
    param_dtype: str = setting("float32", "storage dtype of the parameters", choices=DTYPES)
    scan_layers: bool = setting(False, "stack the blocks and lax.scan them (compile time flat "
                                "in depth)")
    remat: str = setting("none", "rematerialization in training: none | full | dots (save only "
                         "matmul outputs)", choices=("none", "full", "dots"))
    attention_impl: str | None = setting(
        None, "None: cuDNN's fused attention on GPU with bf16 / fp16 compute where it applies, "
        "XLA elsewhere; xla / cudnn force one (cudnn fails where it cannot run)",
        choices=("xla", "cudnn"))
    frozen_dtype: str | None = setting(
        None, "storage dtype of FROZEN kernels and embedding tables (None: param_dtype); "
        "bfloat16 with bf16 compute halves their memory and reads at no cost in accuracy; "
        "checkpoints never hold them, so it may change between resumes", choices=DTYPES)
    hidden_dropout: float | None = setting(None, "dropout override; None keeps the checkpoint's "
                                           "own (MiniLM: 0.1; Llama: none)")
    attention_dropout: float | None = setting(None, "attention dropout override; None keeps the "
                                              "checkpoint's own")
    embedding_dropout: float | None = setting(None, "embedding dropout override; None keeps the "
                                              "checkpoint's own")
    keep_layers: tuple[int, ...] = setting(
        (), "a shallower student: only these blocks of the checkpoint (increasing indices, "
        "e.g. (0, 2, 4)), with their weights; (): all")


@dataclasses.dataclass(frozen=True)
class EarlyStoppingConfig:
    """Stopping when the selection metric stops improving (the `early_stopping` block)."""

    patience: int = setting(0, "evaluations without improvement of best_metric before "
                            "stopping; 0 = off")
    min_delta: float = setting(0.0, "the improvement that counts")

    def __post_init__(self):
        if self.patience < 0 or self.min_delta < 0:
            raise ValueError(f"patience and min_delta must be >= 0, got {self.patience}, "
                             f"{self.min_delta}")


# The head each multi-task task kind is trained through.
TASK_HEADS = {"classification": "sequence", "token_classification": "token",
              "extractive_qa": "span"}


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """One task of a multi-task run (an entry of the `tasks` block): how its sources' records
    become rows, the head it trains on the shared backbone, and its loss weight."""

    task: TaskConfig = setting(factory=TaskConfig)
    head: HeadConfig = setting(factory=lambda: HeadConfig(kind="sequence", num_labels=2,
                                                          pooling="mean"))
    weight: float = setting(1.0, "the weight of this task's loss (each task's loss is the mean "
                            "over its own rows of the batch)")

    def __post_init__(self):
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight must be >= 0, got {self.weight}")
        expected = TASK_HEADS.get(self.task.kind)
        if expected is None:
            raise ValueError(f"task.kind {self.task.kind!r} cannot share batches with other "
                             f"tasks; multi-task kinds: {', '.join(TASK_HEADS)}")
        if self.head.kind != expected:
            raise ValueError(f"task.kind {self.task.kind!r} trains a {expected!r} head, got "
                             f"head.kind {self.head.kind!r}")


_POSITIVE = ("steps", "eval_every", "checkpoint_every", "log_every", "batch_size",
             "eval_batch_size", "accumulation_steps", "keep_checkpoints")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything `ftjax train` reads: the root of the schema."""

    seed: int = setting(0, "seed of the new parameters, dropout and the data order")
    steps: int = setting(1000, "optimizer steps")
    eval_every: int = setting(200, "steps between evaluations of eval_splits")
    eval_at_start: bool = setting(
        False, "evaluate before the first step too (step 0: the model as set up), so "
        "best-checkpoint selection may keep it when no step improves on it")
    checkpoint_every: int = setting(500, "steps between checkpoints")
    log_every: int = setting(10, "steps between metric rows (each one a host sync)")
    keep_checkpoints: int = setting(2, "the latest checkpoints kept for resuming")
    best_metric: str = setting("accuracy", "eval metric whose best checkpoint is kept and "
                               "restored at the end (\"\" keeps none)")
    best_mode: str = setting("max", "max | min: which way best_metric improves",
                             choices=("max", "min"))
    nonfinite: str = setting("skip", "a non-finite loss or gradient: skip the update and count "
                             "it, or stop the run", choices=("skip", "stop"))
    batch_size: int = setting(32, "examples per optimizer step (the global batch)")
    eval_batch_size: int = setting(64, "examples per evaluation batch")
    accumulation_steps: int = setting(1, "micro-batches per step; batch_size stays the global "
                                      "batch, the loss is normalized over all of it")
    method: str = setting("full", "the fine-tuning method: " + " | ".join(METHODS),
                          choices=METHODS)
    init_from: str | None = setting(
        None, "a finished run's workdir whose final weights (the checkpoint it reported: the "
        "best one when it kept one) this run starts from, LoRA / (IA)^3 merged; model.name must "
        "be that run's model")
    init_head: str = setting("new", "with init_from: keep the run's task head (same kind and "
                             "shape) or start a new one", choices=("new", "keep"))
    rules: tuple = setting(
        (), "trainability rules of your own, matched before the method's (first match wins): "
        "(regex, rule) pairs over canonical per-layer paths, rule = 'frozen', 'train' or a "
        "mapping of Rule fields ({'lr': 0.1, 'wd': 0.0, 'unfreeze_at': 500}); with "
        "method='custom' they are the whole spec; a rule matching nothing is an error")
    save_adapter: bool = setting(
        True, "at the end, write the kept parameters' trainable delta (+ a new head) to "
        "WORKDIR/adapter; skipped when every parameter trains")
    eval_splits: tuple[str, ...] = setting(("validation",), "splits evaluated every eval_every "
                                           "steps (the first selects); test is reported at the "
                                           "end only")
    early_stopping: EarlyStoppingConfig = setting(factory=EarlyStoppingConfig)
    model: ModelConfig = setting(factory=ModelConfig)
    head: HeadConfig = setting(factory=lambda: HeadConfig(kind="sequence", num_labels=2,
                                                          pooling="mean"))
    task: TaskConfig = setting(factory=TaskConfig)
    data: DataConfig = setting(factory=DataConfig)
    sources: Mapping[str, SourceConfig] = setting(
        factory=dict, help="several data sources by name, each a block of its location, "
        "columns, label names and weight (ftjax.data.SourceConfig), mixed in the train stream "
        "by data.mixing; empty: the data block is the one source")
    tasks: Mapping[str, TaskEntry] = setting(
        factory=dict, help="multi-task fine-tuning: tasks by name, each a block of its task, "
        "head and loss weight; every source names its task (sources.<name>.task), one head "
        "per task shares the backbone, and a batch mixes the tasks' rows. Empty: the task "
        "and head blocks are the run's one task")
    adapter_per_task: bool = setting(
        False, "with a tasks block: one copy per task of what the method trains besides the "
        "heads (a LoRA / adapter / prefix / prompt / (IA)^3 adapter, BitFit's biases), side by "
        "side on one frozen base; each row runs with and updates only its task's copy, and "
        "the run's adapter output is one adapter directory per task")
    optimizer: OptimizerConfig = setting(factory=OptimizerConfig)
    method_args: MethodConfig = setting(factory=MethodConfig)
    lora: LoraConfig = setting(factory=LoraConfig)
    adapter: AdapterConfig = setting(factory=AdapterConfig)
    prefix: PrefixConfig = setting(factory=PrefixConfig)
    prompt: PromptConfig = setting(factory=PromptConfig)
    ia3: IA3Config = setting(factory=IA3Config)
    hyperformer: HyperConfig = setting(factory=HyperConfig)
    compose: ComposeConfig = setting(factory=ComposeConfig)
    regularizer: RegularizerConfig = setting(factory=RegularizerConfig)
    label_smoothing: float = setting(0.0, "label smoothing of the task's cross-entropy")
    losses: Mapping[str, TermConfig] = setting(
        factory=dict, entry=entry_config_class,
        help="loss terms by name, each a block of its term's settings (kind, weight, weight "
        "schedule, ...): the task term (ce / lm / mlm) and penalties (l1 / l2 / l2_sp) by "
        "their names, any other term by kind='module:Class' (ftjax.objectives)")
    dense_methods: tuple[str, ...] = setting(
        (), "PEFT methods of your own that live in Dense layers, each 'module:Name' of a "
        "ftjax.nn.dense_methods.DenseMethod subclass (made with no arguments) or a function "
        "returning one; their leaves are added to the model, and rules say what trains")
    robustness: RobustnessConfig = setting(factory=RobustnessConfig)
    replay: ReplayConfig = setting(factory=ReplayConfig)
    hooks: tuple[str, ...] = setting(
        (), "extra Trainer hooks, each 'module:Name' of a Hook class (made with no arguments) "
        "or a function returning a hook (ftjax.train.hooks)")
    mesh: MeshConfig = setting(factory=MeshConfig)

    def __post_init__(self):
        for key in _POSITIVE:
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.batch_size % self.accumulation_steps:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by "
                             f"accumulation_steps={self.accumulation_steps}")
        if not math.isfinite(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")


SCHEMA = Schema(RunConfig)


def base_config() -> ml_collections.ConfigDict:
    """Every key at its default: what experiment files start from."""
    return SCHEMA.defaults()


def _check_across_blocks(run: RunConfig) -> None:
    """Checks that involve several blocks (each block checks its own values)."""
    parse_spec(run.rules)
    for key in ("hooks", "dense_methods"):
        for i, target in enumerate(getattr(run, key)):
            if not callable(import_object(target, f"{key}[{i}]")):
                raise ValueError(f"{key}[{i}] {target!r} is not a class or function")
    if run.method == "custom" and not run.rules:
        raise ValueError("method='custom' trains what config key 'rules' says; it is empty")
    if run.method in PEFT_METHODS:  # the method's block builds its settings object
        field = PEFT_METHODS[run.method][0]
        block = getattr(run, field)
        try:
            method_config(run.method, {key.name: getattr(block, key.name)
                                       for key in block_keys(type(block))})
        except (ValueError, KeyError) as err:
            raise ValueError(f"config block {field!r} (method={run.method!r}): "
                             f"{err.args[0] if err.args else err}") from None
    if run.sources:
        legacy = {f.name for f in dataclasses.fields(DataConfig)} - set(DataConfig.STREAM_KEYS)
        changed = sorted(k for k in legacy if getattr(run.data, k) != getattr(DataConfig(), k))
        if changed:
            raise ValueError(f"the sources block names the data; data.{', data.'.join(changed)} "
                             f"would be ignored: move them into a source")
    if run.tasks:
        _check_tasks(run)
    elif run.adapter_per_task:
        raise ValueError("adapter_per_task needs a tasks block: an adapter per task of it")
    if run.method in ("fusion", "stack"):
        if not run.compose.adapters:
            raise ValueError(f"method={run.method!r} composes trained adapters: list them in "
                             f"compose.adapters (NAME=DIR each)")
        run.compose.named()
    elif run.compose.adapters:
        raise ValueError(f"compose.adapters are composed by method 'fusion' or 'stack', not "
                         f"{run.method!r}")
    if run.method == "hyperformer" and not run.tasks:
        raise ValueError("method='hyperformer' generates an adapter per task of a tasks block; "
                         "the run has none")
    if run.adapter_per_task and run.method == "hyperformer":
        raise ValueError("method='hyperformer' already gives each task its adapter (generated "
                         "by the shared hypernetwork); drop adapter_per_task")
    if run.adapter_per_task and run.method in ("full", "llrd", "gradual_unfreeze"):
        raise ValueError(f"adapter_per_task keeps a copy per task of what trains; with "
                         f"method={run.method!r} that is the whole model: use a PEFT method "
                         f"or bitfit")
    task, head = run.task, run.head
    if head.kind == "verbalizer":
        if len(task.label_words) != head.num_labels:
            raise ValueError(f"head.kind='verbalizer' scores one word per label: task.label_words "
                             f"has {len(task.label_words)} ({list(task.label_words)}) for "
                             f"head.num_labels={head.num_labels}")
    elif task.label_words:
        raise ValueError(f"task.label_words are scored by a verbalizer head: set "
                         f"head.kind='verbalizer' (got {head.kind!r})")


def _check_tasks(run: RunConfig) -> None:
    """A multi-task run: its sources name its tasks, each task trains, rows share one length."""
    if not run.sources:
        raise ValueError("a tasks block needs a sources block whose entries name their task")
    unused = [key for key in ("task", "head")
              if getattr(run, key) != getattr(RunConfig(), key)]
    if unused:
        raise ValueError(f"with a tasks block each task has its own task and head blocks; "
                         f"the top-level {', '.join(unused)} would be ignored")
    for name, source in run.sources.items():
        if source.task not in run.tasks:
            raise ValueError(f"sources.{name}.task must name one of the tasks "
                             f"{sorted(run.tasks)}, got {source.task!r}")
    # A task with only evaluated sources is fine (a continual stage's other tasks: their heads
    # are frozen, ftjax.train.experiment.idle_heads_frozen); one with no source is a mistake.
    unused_tasks = sorted(set(run.tasks) - {s.task for s in run.sources.values()})
    if unused_tasks:
        raise ValueError(f"task(s) {unused_tasks}: no source names them")
    lengths = {name: entry.task.max_length for name, entry in run.tasks.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"the tasks share rows, so they need one task.max_length; got "
                         f"{lengths}")


def typed(cfg: ml_collections.ConfigDict, where: str = "config") -> RunConfig:
    """The typed RunConfig of a config; every block's checks run (ConfigError naming the key)."""
    return SCHEMA.build(cfg, where)


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Every block's own checks, then the checks across blocks."""
    run = typed(cfg)
    try:
        _check_across_blocks(run)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def load_config(path, overrides=()) -> ml_collections.ConfigDict:
    """An experiment file with `--set` overrides, checked against this schema; locked."""
    return files.load_config(path, list(overrides), SCHEMA, validate)


def config_from_dict(values: dict, where: str) -> ml_collections.ConfigDict:
    """A run's saved config.json back as a checked, locked config."""
    return files.config_from_dict(values, where, SCHEMA, validate)
