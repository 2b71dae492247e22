"""Data for training: record sources -> task features -> grain pipelines of fixed-shape batches.

    splits = polarity_splits(seed=0)
    task = SequenceClassification("text", "label", num_labels=2, max_length=64)
    train = make_train_iterator(splits["train"], task, tokenizer, batch_size=32, seed=0)
    batch = next(train)                       # dict of numpy arrays, see features.py
    state = train.get_state()                 # JSON-serializable; set_state() resumes exactly
    for batch in make_eval_batches(splits["validation"], task, tokenizer, batch_size=64): ...

Local files and several sources:

    reviews = load_source("reviews", SourceConfig(path="reviews_{split}.csv"))  # checked now
    train = make_mixed_train_iterator(
        [TrainSource("reviews", reviews.splits["train"], task, weight=0.8),
         TrainSource("tweets", tweets.splits["train"], task, weight=0.2)],
        tokenizer, batch_size=32, seed=0)     # rows carry "source": 0 or 1

``datasets`` and ``tensorflow_datasets`` are imported only by the sources that use them.
"""

from ftjax.data.bucketing import LengthGroupedBatches, batch_length, bucket_lengths, cut_to_bucket
from ftjax.data.config import SourceConfig
from ftjax.data.errors import (
    DataError,
    EmptySplitError,
    LabelOutOfRangeError,
    MalformedRowError,
    MissingColumnError,
    MissingFileError,
    MissingSplitError,
    TokenizerError,
    UndecodableFileError,
)
from ftjax.data.features import IndexedRecord
from ftjax.data.loading import ROLES, LoadedSource, load_source
from ftjax.data.mixing import TrainSource, mixture_weights
from ftjax.data.pipeline import (
    EvalBatches,
    batch_shapes,
    count_loss_weight,
    count_real_tokens,
    make_eval_batches,
    make_mixed_train_iterator,
    make_train_iterator,
    steps_per_epoch,
)
from ftjax.data.prompting import PromptTemplate, label_token_ids
from ftjax.data.readers import read_rows
from ftjax.data.run_data import (
    RunSource,
    data_facts,
    data_notes,
    load_run_data,
    make_task,
    source_configs,
)
from ftjax.data.sources import (
    PlainRecords,
    hf_dataset,
    local_file,
    polarity_splits,
    tfds_source,
)
from ftjax.data.conversation import Conversation
from ftjax.data.tasks import CausalLM, MaskedLM, PseudoLikelihood, SequenceClassification, Task
from ftjax.data.token_classification import NerMetric, TokenClassification, load_tagged_source
from ftjax.data.types import RecordSource, TokenizerLike

__all__ = [
    "ROLES",
    "LengthGroupedBatches",
    "batch_length",
    "bucket_lengths",
    "cut_to_bucket",
    "RunSource",
    "data_facts",
    "data_notes",
    "load_run_data",
    "make_task",
    "source_configs",
    "CausalLM",
    "NerMetric",
    "TokenClassification",
    "load_tagged_source",
    "Conversation",
    "DataError",
    "EmptySplitError",
    "EvalBatches",
    "IndexedRecord",
    "LabelOutOfRangeError",
    "LoadedSource",
    "MalformedRowError",
    "MaskedLM",
    "PseudoLikelihood",
    "MissingColumnError",
    "MissingFileError",
    "MissingSplitError",
    "PlainRecords",
    "PromptTemplate",
    "RecordSource",
    "SequenceClassification",
    "SourceConfig",
    "Task",
    "TokenizerError",
    "TokenizerLike",
    "TrainSource",
    "UndecodableFileError",
    "batch_shapes",
    "count_loss_weight",
    "count_real_tokens",
    "hf_dataset",
    "label_token_ids",
    "load_source",
    "local_file",
    "make_eval_batches",
    "make_mixed_train_iterator",
    "make_train_iterator",
    "mixture_weights",
    "polarity_splits",
    "read_rows",
    "steps_per_epoch",
    "tfds_source",
]
