"""The data of a run: its sources, each loaded with its own task, and the facts a saved run keeps.

A run names its sources in the `sources` block (name -> SourceConfig); without one, the `data`
block and the `task` block's column keys describe a single source named "data", the simple case.
Every source's records are canonical ("text", "text_pair", "prompt", "label"; ftjax.data.loading),
so one `task` block (kind, max_length, template ...) makes the task of each, reading the
canonical names; a source's own columns and label set live in its SourceConfig.

A run saves `data_facts` (each source's label names and train size) beside its checkpoints, and
a run restored for evaluation, export or generation loads with them: the label names map as in
training and the train split is never read.

A source with a `curriculum` block has its train records scored here, where the records are
(every bad record or reference cache refused before the model loads); length scores need the
run's tokenizer and wait for `RunSource.train_source(tokenizer)`. The train stream then sees
only the ranks (ftjax.data.curriculum).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from ftjax.assets import resolve
from ftjax.data.augment import AugmentedRecords, check_augmentable
from ftjax.data.config import DataConfig, SourceConfig, TaskConfig
from ftjax.data.curriculum import Curriculum, CurriculumConfig, curriculum_scores
from ftjax.data.errors import DataError
from ftjax.data.extractive_qa import ExtractiveQA
from ftjax.data.loading import ROLES, load_source
from ftjax.data.mixing import TrainSource
from ftjax.data.multitask import TaskOfMany
from ftjax.data.conversation import Conversation
from ftjax.data.prompting import PromptTemplate
from ftjax.data.replay import replayed
from ftjax.data.tasks import CausalLM, MaskedLM, SequenceClassification, Task
from ftjax.data.teacher_cache import TeacherCache, WithTeacherOutputs
from ftjax.data.token_classification import TokenClassification, load_tagged_source
from ftjax.data.types import RecordSource, TokenizerLike
from ftjax.data.wordnet import Synonyms

SINGLE_SOURCE = "data"


@dataclasses.dataclass(frozen=True)
class RunSource:
    """One source of a run, loaded: its task, its splits by role, its label names."""

    name: str
    task: Task
    splits: Mapping[str, RecordSource]
    label_names: tuple[str, ...] | None
    weight: float
    num_train: int  # train records (the saved count when the train split was not loaded)
    trained: bool = True  # False: evaluated only (SourceConfig.train)
    generation_metrics: tuple[str, ...] = ()  # scored on generations (SourceConfig)
    teacher_cache: TeacherCache | None = None  # its train rows carry a teacher's outputs
    curriculum: CurriculumConfig | None = None  # its train stream follows a curriculum
    difficulty: np.ndarray | None = None  # the train records' scores (None: length, not yet)

    @property
    def train_task(self) -> Task:
        """The task of the train rows: with the teacher's cached outputs, if any."""
        if self.teacher_cache is None:
            return self.task
        return WithTeacherOutputs(self.task, self.teacher_cache)

    def train_source(self, tokenizer: TokenizerLike | None = None) -> TrainSource:
        """The source in the train mixture; `tokenizer` scores a curriculum by length."""
        curriculum = None
        if self.curriculum is not None:
            scores = self.difficulty
            if scores is None:
                scores = curriculum_scores(self.curriculum, self.splits["train"],
                                           f"source {self.name!r}", tokenizer=tokenizer)
            curriculum = Curriculum.from_scores(scores, self.curriculum)
        return TrainSource(self.name, self.splits["train"], self.train_task, self.weight,
                           curriculum)


def legacy_source(data: DataConfig, task: TaskConfig) -> SourceConfig:
    """The `data` block (and the task's column keys) as one SourceConfig: a local path without
    {split} is the train file alone, as the block always meant."""
    one_file = data.source == "local" and "{split}" not in (data.path or "")
    classification = task.kind == "classification"
    return SourceConfig(
        kind=data.source, path=data.path, train_split=data.train_split,
        validation_split=None if one_file else data.validation_split,
        test_split=None if one_file else data.test_split, split_seed=data.split_seed,
        text_column=task.text_key, text_pair_column=task.text_pair_key,
        label_column=task.label_key if classification else None, prompt_column=task.prompt_key,
        max_train_examples=data.max_train_examples, max_eval_examples=data.max_eval_examples,
        max_test_examples=data.max_test_examples, teacher_cache=data.teacher_cache,
        augment=data.augment, curriculum=data.curriculum)


def source_configs(sources: Mapping[str, SourceConfig], data: DataConfig,
                   task: TaskConfig) -> dict[str, SourceConfig]:
    """The run's sources (a source's index in batches is its place here): the `sources` block,
    or the `data` block as one source. The trained sources come first, in name order, so that
    their indices are their places in the train mixture; sources only evaluated follow."""
    if not sources:
        return {SINGLE_SOURCE: legacy_source(data, task)}
    order = source_order({name: s.train for name, s in sources.items()})
    if not sources[order[0]].train:
        raise DataError(f"every source ({', '.join(order)}) has train=False: a run needs one "
                        f"to train on")
    return {name: sources[name] for name in order}


def source_order(trained: Mapping[str, bool]) -> list[str]:
    """Source names in the order of their indices in batches: trained ones first, each group
    by name. `trained`: name -> whether the source trains (SourceConfig.train)."""
    return sorted(trained, key=lambda name: (not trained[name], name))


def check_columns_for_task(task: TaskConfig, source: SourceConfig, name: str = "") -> None:
    """A source lacking a column its task reads, named before any file is read."""
    if task.kind == "chat" and source.messages_column is None:
        where = f"source {name!r}: " if name else ""
        raise DataError(f"{where}task kind 'chat' reads conversations: set the source's "
                        f"messages_column")


def _prompt_template(task: TaskConfig) -> PromptTemplate | None:
    if task.template is None:
        return None
    return PromptTemplate(task.template, chat=task.chat, system=task.system_prompt)


def make_task(task: TaskConfig, source: SourceConfig, *, num_labels: int | None,
              label_names: Sequence[str] | None = None) -> Task:
    """The task of one source: the run's task block over the source's canonical records."""
    if task.kind == "token_classification":
        return TokenClassification(num_labels, task.max_length, tuple(label_names or ()),
                                   label_all_subtokens=task.label_all_subtokens,
                                   scheme=task.tag_scheme)
    if task.kind == "classification":
        return SequenceClassification(
            "text", "label", num_labels=num_labels, max_length=task.max_length,
            text_pair_key="text_pair" if source.text_pair_column else None,
            prompt=_prompt_template(task),
            label_words=tuple(task.label_words))
    if task.kind == "chat":
        check_columns_for_task(task, source)
        return Conversation("messages", task.max_length, packing=task.packing)
    if task.kind == "causal_lm":
        return CausalLM("text", task.max_length, packing=task.packing,
                        prompt_key="prompt" if source.prompt_column else None,
                        prompt=_prompt_template(task))
    if task.kind == "extractive_qa":
        return ExtractiveQA(max_length=task.max_length, doc_stride=task.doc_stride,
                            max_query_length=task.max_query_length,
                            max_answer_length=task.max_answer_length, n_best=task.n_best,
                            null_threshold=task.null_threshold)
    return MaskedLM("text", task.max_length, mask_prob=task.mask_prob,
                    whole_word=task.whole_word)


def load_run_data(configs: Mapping[str, SourceConfig], task: TaskConfig, *,
                  num_labels: int | None, roles: Sequence[str] = ROLES,
                  facts: Mapping | None = None,
                  tasks: Mapping[str, tuple[TaskConfig, int | None]] | None = None
                  ) -> list[RunSource]:
    """Every source loaded and checked (ftjax.data.loading): the first bad file, column or label
    raises a DataError naming it, before anything trains.

    roles: the splits to load; a restored run passes ("validation", "test") with `facts`.
    facts: what `data_facts` saved for the run (label names, train sizes).
    tasks: a multi-task run's tasks (name -> (task block, num_labels)); each source's `task`
    names its own, `task` / `num_labels` are then unused, and every source's task is a
    TaskOfMany (ftjax.data.multitask) whose rows carry all the tasks' features.
    """
    known = (facts or {}).get("sources", {})
    missing = sorted(set(known) - set(configs)) if facts else []
    if missing:
        raise DataError(f"the run was trained with source(s) {missing} that its config no "
                        f"longer names")
    out = []
    for name, config in configs.items():
        if tasks:
            if config.task not in tasks:
                raise DataError(f"source {name!r}: task must name one of the tasks block's "
                                f"entries {sorted(tasks)}, got {config.task!r}")
            source_task, source_labels = tasks[config.task]
        else:
            source_task, source_labels = task, num_labels
        out.append(_load_one(name, config, source_task, source_labels, roles,
                             known.get(name, {})))
    return with_task_features(out, configs, order=tuple(tasks)) if tasks else out


def _load_one(name: str, config: SourceConfig, task: TaskConfig, num_labels: int | None,
              roles: Sequence[str], saved: Mapping) -> RunSource:
    check_columns_for_task(task, config, name)
    needs_labels = task.kind == "classification"
    source_roles = roles if config.train else tuple(r for r in roles if r != "train")
    if task.kind == "token_classification":
        loaded = load_tagged_source(name, config, roles=source_roles, num_labels=num_labels,
                                    label_names=saved.get("labels"))
    else:
        loaded = load_source(name, config, roles=source_roles, needs_labels=needs_labels,
                             label_names=saved.get("labels"),
                             num_labels=num_labels if needs_labels else None)
    made = make_task(task, config, num_labels=num_labels, label_names=loaded.label_names)
    splits = dict(loaded.splits)
    if config.augment.enabled and "train" in splits:
        splits["train"] = augmented(name, config, splits["train"])
    if config.replay_from and "train" in splits:
        # The buffer holds indices of the train split as the earlier run read it (augmented
        # copies included), so the source keeps that run's augment block.
        if config.teacher_cache:
            raise DataError(f"sources.{name}: replay_from and teacher_cache both choose the "
                            f"train records; use one")
        splits["train"] = replayed(name, splits["train"], config.replay_from)
    num_train = len(splits["train"]) if "train" in splits else saved.get("train_examples", 0)
    cache = None
    if config.teacher_cache and "train" in loaded.splits:
        cache = TeacherCache.open(config.teacher_cache)
        cache.check_source(name, loaded.splits["train"], made)
    curriculum, difficulty = None, None
    if config.curriculum.enabled and config.train and "train" in splits:
        curriculum = config.curriculum
        difficulty = scored(name, curriculum, splits["train"], made)
    return RunSource(name, made, splits, loaded.label_names, config.weight, num_train,
                     config.train, tuple(config.generation_metrics), cache, curriculum,
                     difficulty)


def scored(name: str, curriculum: CurriculumConfig, records: RecordSource,
           task: Task) -> np.ndarray | None:
    """A source's train records' difficulty (SourceConfig.curriculum); None for length scores,
    which need the tokenizer. A reference cache must have been made from these records."""
    if curriculum.score == "length":
        return None
    reference = None
    if curriculum.reference:
        reference = TeacherCache.open(curriculum.reference)
        reference.check_source(name, records, task)
    return curriculum_scores(curriculum, records, f"source {name!r}", reference=reference)


def augmented(name: str, config: SourceConfig, records: RecordSource) -> AugmentedRecords:
    """A source's train records with their augmented copies (SourceConfig.augment)."""
    augment = config.augment
    where = f"source {name!r}"
    if config.teacher_cache:
        raise DataError(f"{where}: a teacher cache holds the outputs of the records as they "
                        f"are; it cannot also be augmented (drop augment or teacher_cache)")
    if len(records):
        check_augmentable(records[0], where)
    synonyms = None
    if augment.needs_synonyms:
        synonyms = Synonyms(resolve(augment.wordnet), augment.senses)
    return AugmentedRecords(records, augment, synonyms)


def with_task_features(sources: Sequence[RunSource], configs: Mapping[str, SourceConfig], *,
                       order: Sequence[str]) -> list[RunSource]:
    """A multi-task run's sources, each task wrapped so that every row carries every task's
    features (TaskOfMany), the tasks in `order` (the tasks block's, which also orders the
    model's task heads and adapters: a row's task_id indexes all three alike)."""
    first: dict[str, Task] = {}
    for source in sources:
        first.setdefault(configs[source.name].task, source.task)
    tasks = tuple((name, first[name]) for name in order if name in first)
    return [dataclasses.replace(s, task=TaskOfMany(configs[s.name].task, s.task, tasks))
            for s in sources]


def data_facts(sources: Sequence[RunSource]) -> dict:
    """What a restored run needs to load its data as in training (JSON), and how each
    curriculum orders its source's train stream (said, not read back)."""
    facts = {"sources": {s.name: {"labels": None if s.label_names is None else
                                  list(s.label_names), "train_examples": s.num_train}
                         for s in sources}}
    for s in sources:
        if s.curriculum is not None:
            facts["sources"][s.name]["curriculum"] = s.curriculum.describe(s.num_train)
    return facts


def data_notes(sources: Sequence[RunSource]) -> list[str]:
    """What a run says about its data when it starts: each source's curriculum."""
    return [f"source {s.name!r}: {s.curriculum.describe(s.num_train)}" for s in sources
            if s.curriculum is not None]
