"""The data side of a run config: the `task` block (how records become rows), the `data` block
(where the records come from) and the `SourceConfig` block (one data source of several)."""

from __future__ import annotations

import codecs
import dataclasses
import math
from pathlib import Path
from typing import ClassVar

from ftjax.data.augment import AugmentConfig
from ftjax.data.curriculum import CurriculumConfig
from ftjax.data.mixing import BATCHINGS, MIXINGS
from ftjax.data.readers import FORMATS, TXT_UNITS
from ftjax.settings import setting

GENERATION_METRICS = ("bleu", "chrf", "exact_match")
TASKS = ("classification", "causal_lm", "masked_lm", "chat", "extractive_qa",
         "token_classification")
SOURCE_KINDS = ("polarity", "local", "hf", "tfds")
SPLIT_PLACEHOLDER = "{split}"
# File extensions the hf kind reads as one local file (ftjax.data.sources.hf_dataset).
HF_FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """How records become rows of tokens and labels (ftjax.data.tasks)."""

    kind: str = setting("classification", "classification | causal_lm | masked_lm | chat "
                        "(instruction tuning: each source's messages_column rendered with the "
                        "tokenizer's chat template, the loss on assistant turns) | extractive_qa "
                        "(SQuAD spans; head.kind='span', source format 'squad') | "
                        "token_classification (NER: one tag per word, source format 'conll'; "
                        "head.kind='token')",
                        choices=TASKS)
    text_key: str = setting("text", "the record field holding the text")
    label_key: str = setting("label", "classification: the record field holding the label")
    text_pair_key: str | None = setting(None, "classification: a second text (sentence pairs)")
    prompt_key: str | None = setting(
        None, "causal_lm: a prompt field; the loss then counts only on the text (target) tokens")
    max_length: int = setting(64, "tokens per row (longer texts are truncated)")
    packing: bool = setting(True, "causal_lm / chat: pack documents whole into rows of "
                            "max_length")
    doc_stride: int = setting(128, "extractive_qa: tokens of overlap between the windows of a "
                              "long context")
    max_query_length: int = setting(64, "extractive_qa: questions are cut to this many tokens")
    max_answer_length: int = setting(30, "extractive_qa: the longest answer span decoded, in "
                                     "tokens")
    n_best: int = setting(20, "extractive_qa: start and end positions tried per window when "
                          "decoding")
    null_threshold: float | None = setting(
        None, "extractive_qa: None always answers (SQuAD v1.1); a number answers '' when the "
        "null score beats the best span's by more (v2.0)")
    mask_prob: float = setting(0.15, "masked_lm: the share of tokens selected for prediction")
    whole_word: bool = setting(False, "masked_lm: select whole words (all their tokens) "
                               "instead of single tokens")
    template: str | None = setting(
        None, "classification as instruction following (ftjax.data.prompting): each text goes "
        "into the template at {text}; causal_lm with a prompt field (translation): the prompt "
        "goes there, the target follows the template")
    chat: bool = setting(False, "render the template as a user turn of the tokenizer's chat "
                         "template")
    system_prompt: str | None = setting(None, "chat only: the system turn; None: the chat "
                                        "template's default")
    label_words: tuple[str, ...] = setting(
        (), "a verbalizer head scores these words, one per label, each one token after the "
        "prompt")

    label_all_subtokens: bool = setting(
        False, "token_classification: train every sub-token of a word (the later ones on the "
        "I- tag of its type), not only the first")
    tag_scheme: str = setting("IOB2", "token_classification: the tag scheme of seqeval's strict "
                              "mode (f1_strict): IOB2 | IOBES",
                              choices=("IOB2", "IOBES", "BIO", "BIOES"))

    def __post_init__(self):
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if min(self.max_query_length, self.max_answer_length, self.n_best) < 1:
            raise ValueError(f"max_query_length, max_answer_length and n_best must be >= 1, got "
                             f"{self.max_query_length}, {self.max_answer_length}, {self.n_best}")
        if not 0.0 <= self.mask_prob <= 1.0:
            raise ValueError(f"mask_prob must lie in [0, 1], got {self.mask_prob}")
        if self.label_words and self.kind != "classification":
            raise ValueError(f"label_words are for kind='classification', not {self.kind!r}")
        if self.template is not None and self.kind not in ("classification", "causal_lm"):
            raise ValueError(f"template wraps a classification text or a causal_lm prompt, "
                             f"not kind={self.kind!r}")
        if self.template is not None and self.template.count("{text}") != 1:
            raise ValueError(f"template must contain {{text}} exactly once: {self.template!r}")
        if self.system_prompt is not None and not self.chat:
            raise ValueError("system_prompt applies only with chat=True")
        if self.chat and self.template is None:
            raise ValueError("chat=True renders the template as a chat turn; set template")
        if self.label_words and self.template is None:
            raise ValueError("label_words answer a prompt: set template (with {text})")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the records come from (ftjax.data.sources), and how the train stream mixes and
    batches them."""

    # Keys of the whole stream, which a run with a `sources` block keeps here; the others
    # describe the one source of a run without that block.
    STREAM_KEYS: ClassVar[tuple[str, ...]] = ("mixing", "temperature", "anneal_examples",
                                              "batching", "buckets", "group_by_length")

    source: str = setting("polarity", "polarity (the bundled corpus) | local (csv / tsv / jsonl "
                          "/ json files) | hf (HF datasets) | tfds", choices=SOURCE_KINDS)
    path: str | None = setting(None, "local: a file, or a pattern with {split}; hf / tfds: the "
                               "dataset's name or path")
    train_split: str = setting("train", "the split (or {split} value) that trains")
    validation_split: str = setting("validation", "the split that selects (eval_splits)")
    test_split: str = setting("test", "the split reported at the end only")
    split_seed: int = setting(0, "the polarity corpus' fixed stratified split, and the draw of "
                              "max_*_examples subsets")
    max_train_examples: int = setting(
        0, "quick runs: n > 0 keeps a random n of the train split (drawn with split_seed, so "
        "every run sees the same subset); 0 keeps it whole")
    teacher_cache: str = setting("", "a teacher cache of the train split (ftjax "
                                 "teacher-cache); see SourceConfig.teacher_cache")
    augment: AugmentConfig = setting(factory=AugmentConfig)
    curriculum: CurriculumConfig = setting(factory=CurriculumConfig)
    max_eval_examples: int = setting(0, "the same for the validation and test splits")
    max_test_examples: int | None = setting(None, "the test split's own limit (None: "
                                            "max_eval_examples): a small validation subset to "
                                            "evaluate often, a whole test split at the end")
    mixing: str = setting(
        "fixed", "with several sources (the `sources` block), how often each trained source is "
        "drawn (ftjax.data.mixing): fixed (each source's weight) | proportional (to its train "
        "size) | temperature (size ** (1 / temperature)) | uniform (every source equally, "
        "whatever its size) | annealed (size ** alpha, alpha falling linearly from 1 = "
        "proportional at the first example to 0 = uniform at anneal_examples, uniform after; "
        "Stickland & Murray 2019) | round_robin (the sources in turn: with batching='mixed' the "
        "same stream as uniform, with 'per_source' batches from each source in turn)",
        choices=MIXINGS)
    temperature: float = setting(2.0, "mixing='temperature': T (1 = proportional; larger "
                                 "approaches uniform)")
    anneal_examples: int = setting(
        0, "mixing='annealed': the example (packed tasks: row) of the global train stream at "
        "which sampling reaches uniform; 0: the run's whole stream, steps * batch_size")
    batching: str = setting(
        "mixed", "with several sources: mixed (a batch holds rows of several sources, drawn per "
        "example) | per_source (every batch holds rows of one source, drawn per global batch "
        "with the mixing's probabilities, or in turn with round_robin; one task per step, as "
        "in MT-DNN)", choices=BATCHINGS)
    buckets: tuple[int, ...] = setting(
        (), "lengths a batch's token axis is cut to: each batch takes the shortest that holds "
        "its longest row (task.max_length is always one); each length compiles the train and "
        "eval steps once. (): every batch is max_length long")
    group_by_length: int = setting(
        0, "unpacked tasks, n > 0: rows are sorted by length within windows of n batches and "
        "batched, the window's batches in seeded random order (HF's group_by_length uses 50), "
        "so batches hold rows of similar length and buckets cut most padding; eval batches are "
        "grouped the same way. 0: batches in shuffled order")

    def __post_init__(self):
        if any(b < 1 for b in self.buckets):
            raise ValueError(f"buckets must be lengths >= 1, got {list(self.buckets)}")
        if self.group_by_length < 0:
            raise ValueError(f"group_by_length must be >= 0, got {self.group_by_length}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {self.mixing!r}")
        if self.anneal_examples < 0:
            raise ValueError(f"anneal_examples must be >= 0 (0: the whole run), got "
                             f"{self.anneal_examples}")
        if self.batching not in BATCHINGS:
            raise ValueError(f"batching must be one of {BATCHINGS}, got {self.batching!r}")
        if self.source != "polarity" and not self.path:
            raise ValueError(f"source={self.source!r} needs path")
        for key in ("max_train_examples", "max_eval_examples", "max_test_examples"):
            if (getattr(self, key) or 0) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """One data source of a run: where its records are, how to read them, and its columns
    (ftjax.data.loading.load_source)."""

    kind: str = setting("local", "polarity (the bundled corpus) | local (csv / tsv / jsonl / "
                        "json / txt files) | hf (HF datasets) | tfds", choices=SOURCE_KINDS)
    path: str | None = setting(
        None, "local / hf files: a file, or a pattern with {split} (one file per split); hf / "
        "tfds: the dataset's name; polarity: another copy of the corpus (None: the asset)")
    format: str = setting("auto", "local: auto (by the file's extension) | csv | tsv | jsonl | "
                          "json | txt | squad (SQuAD v1.1 / v2.0 JSON, for extractive_qa) | conll "
                          "(token<TAB>tag lines, blank-line sentences, for token_classification)",
                          choices=FORMATS)
    encoding: str = setting("utf-8", "local: the files' text encoding (utf-8 files may start "
                            "with a byte order mark)")
    train_split: str = setting("train", "the {split} value (hf / tfds: split name) that trains")
    validation_split: str | None = setting(
        "validation", "the split that selects (eval_splits); None: the source has none")
    test_split: str | None = setting(
        "test", "the split reported at the end only; None: the source has none")
    split_fractions: tuple[float, ...] = setting(
        (), "local / polarity: (train, validation, test) fractions that split ONE file (a path "
        "without {split}) by a seeded permutation, stratified by label; (): one file per split "
        "(polarity: (0.8, 0.1, 0.1)); a fraction of 0 means no such split")
    split_group_column: str | None = setting(
        None, "with split_fractions: the column whose values are split (a book, a speaker, a "
        "document): every record of one value lands in one split, so nothing of a held-out "
        "group is trained on; the fractions then count groups, not records")
    split_seed: int = setting(0, "the permutation of split_fractions, and the draw of the "
                              "max_*_examples subsets")
    text_column: str = setting("text", "the column holding the text")
    text_pair_column: str | None = setting(None, "a second text (sentence pairs)")
    label_column: str | None = setting("label", "the column holding the label; None for "
                                       "language-model data")
    messages_column: str | None = setting(
        None, "chat: the column holding each conversation, a list of {role, content} turns "
        "(jsonl / json / hf); the text columns are then not read")
    prompt_column: str | None = setting(None, "a prompt column (causal LM prompt / target "
                                        "data)")
    keep_columns: tuple[str, ...] = setting((), "more columns copied into each record as they "
                                            "are")
    labels: tuple[str, ...] = setting(
        (), "the label names in id order; files may hold the names or the ids. (): ids are "
        "kept if the train labels are all integers, else the names are the sorted distinct "
        "train labels")
    txt_unit: str = setting("line", "txt files: what a record is: line (each non-blank line) "
                            "| paragraph (blank-line separated) | document (the whole file)",
                            choices=TXT_UNITS)
    weight: float = setting(1.0, "the source's sampling weight with mixing='fixed' (> 0)")
    generation_metrics: tuple[str, ...] = setting(
        (), "metrics of the model's generated targets on this source's eval splits, scored by "
        "the GenerationEval hook (ftjax.generate.evaluation): bleu | chrf | exact_match; "
        "prompt / target causal_lm data or chat conversations (the last assistant turn)")
    task: str | None = setting(
        None, "multi-task runs: the entry of the `tasks` block this source's records are a "
        "task of (several sources may feed one task)")
    train: bool = setting(
        True, "False: the source is only evaluated (its validation / test splits), never "
        "trained on, and reported on its own (<split>/<source>), outside the split's average "
        "that selection follows: held-out general text, to see what training forgets")
    teacher_cache: str = setting(
        "", "a teacher cache directory (ftjax teacher-cache) made from this source's train "
        "split: its rows then carry the teacher's outputs, which the kd term without a "
        "teacher distils from")
    augment: AugmentConfig = setting(factory=AugmentConfig)
    curriculum: CurriculumConfig = setting(factory=CurriculumConfig)
    replay_from: str = setting(
        "", "a replay buffer (an earlier run's replay.json, or its workdir): the train split "
        "is then the records of this source it holds (experience replay in continual "
        "learning)")
    max_train_examples: int = setting(
        0, "n > 0 keeps a random n of the train split (drawn with split_seed, order kept); 0 "
        "keeps it whole")
    max_eval_examples: int = setting(0, "the same for the validation and test splits")
    max_test_examples: int | None = setting(None, "the test split's own limit (None: "
                                            "max_eval_examples): a small validation subset to "
                                            "evaluate often, a whole test split at the end")

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.kind != "polarity" and not self.path:
            raise ValueError(f"kind={self.kind!r} needs path")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.txt_unit not in TXT_UNITS:
            raise ValueError(f"txt_unit must be one of {TXT_UNITS}, got {self.txt_unit!r}")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"unknown encoding {self.encoding!r}") from None
        if not self.train_split:
            raise ValueError("train_split must name a split")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"weight must be > 0, got {self.weight}")
        for key in ("max_train_examples", "max_eval_examples", "max_test_examples"):
            if (getattr(self, key) or 0) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        unknown = sorted(set(self.generation_metrics) - set(GENERATION_METRICS))
        if unknown:
            raise ValueError(f"generation_metrics {unknown} are not among {GENERATION_METRICS}")
        self._check_columns()
        self._check_splits()

    def _check_columns(self):
        for key in ("labels", "keep_columns"):
            values = getattr(self, key)
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"{key} repeats {duplicates}")
        clashes = sorted(set(self.keep_columns) & {"text", "text_pair", "prompt", "label"})
        if clashes:
            raise ValueError(f"keep_columns {clashes} would overwrite the record's own fields "
                             f"(text, text_pair, prompt, label)")

    def _check_splits(self):
        fractions = self.split_fractions
        if fractions:
            if len(fractions) != 3 or any(not f >= 0 for f in fractions):
                raise ValueError(f"split_fractions must be 3 numbers >= 0 (train, validation, "
                                 f"test), got {fractions}")
            if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
                raise ValueError(f"split_fractions must sum to 1, got {fractions}")
            if fractions[0] == 0 and self.train:
                raise ValueError(f"split_fractions {fractions} leave nothing to train on")
            if self.kind in ("hf", "tfds"):
                raise ValueError(f"split_fractions splits a local file; {self.kind} datasets "
                                 f"slice their splits by name instead, e.g. 'train[:90%]'")
            if SPLIT_PLACEHOLDER in (self.path or ""):
                raise ValueError(f"split_fractions split ONE file, but path {self.path!r} is a "
                                 f"pattern with {SPLIT_PLACEHOLDER}")
            for role, fraction in zip(("validation", "test"), fractions[1:]):
                if fraction > 0 and getattr(self, f"{role}_split") is None:
                    raise ValueError(f"split_fractions give the {role} split {fraction} of the "
                                     f"file, but {role}_split is None: make its fraction 0")
        elif self.split_group_column:
            raise ValueError(f"split_group_column {self.split_group_column!r} groups the "
                             f"split_fractions split; set split_fractions too")
        elif self.one_file():
            named = [f"{role}_split={getattr(self, f'{role}_split')!r}"
                     for role in ("validation", "test") if getattr(self, f"{role}_split")]
            if named:
                raise ValueError(
                    f"path {self.path!r} is one file, which can only be the train split, but "
                    f"{' and '.join(named)}: use a pattern with {SPLIT_PLACEHOLDER} (e.g. "
                    f"'data_{{split}}.csv'), set split_fractions, or set those splits to None")

    def one_file(self) -> bool:
        """Whether path is one local file that every split would read (no {split} in it)."""
        if self.kind == "local":
            return SPLIT_PLACEHOLDER not in self.path
        if self.kind == "hf":
            return (SPLIT_PLACEHOLDER not in self.path
                    and Path(self.path).suffix.lower() in HF_FILE_SUFFIXES)
        return False
