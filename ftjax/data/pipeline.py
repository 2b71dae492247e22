"""Input pipelines on grain: an infinite, checkpointable train iterator and finite eval batches.

Shapes: every batch a pipeline emits has exactly the shapes of ``batch_shapes(task,
batch_size)``: (B, T) token features with T = ``task.max_length``, (B,) or (B, T) labels and
masks, and the (B,) "source" of each row. ``group_by_length`` (unpacked tasks) batches rows of
similar length together (``ftjax.data.bucketing``); cutting a batch's token axis to a bucket
length is left to the consumer (``cut_to_bucket``), which with several processes must agree on
one length first.

Train order: records are shuffled by index (grain's ``index_shuffle``, a pure function of
(seed, epoch, index): no buffer, identical on every machine), re-shuffled every epoch, and
repeated forever; batches cross epoch boundaries, so every batch is full. The iterator's
``get_state()`` is a small JSON-serializable dict; ``set_state()`` on a fresh iterator (also in
a fresh process) continues with exactly the same batches.

Several sources (``make_mixed_train_iterator``): each is shuffled and repeated on its own, and a
mixing strategy (``ftjax.data.mixing``: fixed, proportional, temperature, uniform, annealed,
round_robin) says how often each is drawn. ``batching="mixed"`` (the default): rows of several
sources share a batch; grain's ``mix`` interleaves the sources deterministically in the
strategy's proportions, except "annealed", whose proportions change along the stream: its source
of each example is drawn at random (``ftjax.data.schedule.SourceSchedule``).
``batching="per_source"``: every batch holds rows of one source (one task per step, as in
MT-DNN), the source of each global batch drawn at random with the strategy's probabilities
(round_robin: in turn); batches keep one shape, so one compiled step serves every source.

Determinism and resuming with several sources: a draw is a pure function of (seed, position in
the global stream), never of an iterator's history. Row tasks stay random-access grain
``MapDataset``s (``select_from_datasets`` with the schedule as its selection map), so host i's
``[i::n]`` slice and ``get_state()`` (a position) work as for one source; per-source batches
are drawn per global batch index, so every host's share of a global batch comes from one
source. Packed rows, QA windows and length-grouped batches exist only as iterators: there
``ftjax.data.scheduled_iter.ScheduledMix`` picks the scheduled source's next element and keeps
each source's iterator state. One source is the plain train stream, so ``make_train_iterator``
is that one-source case (mixing and batching then play no part).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import grain
import grain.experimental
import numpy as np

from ftjax.data.bucketing import LengthGroupedBatches, group_order, row_length
from ftjax.data.curriculum import CurriculumOrder
from ftjax.data.errors import DataError, EmptySplitError
from ftjax.data.features import (
    IndexedRecord,
    Row,
    Shapes,
    filler_like,
    source_shapes,
    stack_rows,
    with_source,
)
from ftjax.data.mixing import (
    BATCHINGS,
    SCHEDULED_MIXINGS,
    TrainSource,
    check_compatible,
    mixture_weights,
    num_records,
)
from ftjax.data.packing import PiecesWithRecord, pack_documents, packed_shapes
from ftjax.data.schedule import SourceSchedule, source_schedule
from ftjax.data.scheduled_iter import ScheduledMix
from ftjax.data.tasks import Task
from ftjax.data.types import RecordSource, TokenizerLike

Batch = dict[str, np.ndarray]


def default_read_options() -> grain.ReadOptions:
    """Modest threading: tokenization mostly holds the GIL, and CI machines have 2 cores."""
    return grain.ReadOptions(num_threads=min(4, os.cpu_count() or 1), prefetch_buffer_size=32)


def batch_shapes(task: Task, batch_size: int) -> Shapes:
    """The one set of (shape, dtype) every batch of ``task`` has; e.g. for model init."""
    packing = packed_shapes(task.max_length) if task.packed else {}
    return {name: ((batch_size, *shape), dtype)
            for name, (shape, dtype) in {**task.row_shapes(), **source_shapes(),
                                         **packing}.items()}


def make_train_iterator(
    records: RecordSource,
    task: Task,
    tokenizer: TokenizerLike,
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    packing_bins: int | None = None,
    group_by_length: int = 0,
    read_options: grain.ReadOptions | None = None,
) -> grain.DatasetIterator:
    """An infinite iterator of train batches (dicts of numpy arrays of fixed shapes).

    The one-source case of ``make_mixed_train_iterator`` (rows carry source 0).

    With ``shard_count`` > 1 (one shard per host), shard ``shard_index`` takes every
    ``shard_count``-th example of the one global shuffled stream, so hosts see disjoint
    examples; ``batch_size`` is then the per-host batch. ``packing_bins`` (packed tasks only,
    default ``batch_size``): rows per first-fit packing round; more rows pack tighter.
    ``group_by_length`` (unpacked tasks) n > 0: rows sorted by length within windows of n
    batches (``ftjax.data.bucketing.LengthGroupedBatches``); 0: batches in stream order.
    """
    return make_mixed_train_iterator(
        [TrainSource("train", records, task)], tokenizer, batch_size=batch_size, seed=seed,
        shard_index=shard_index, shard_count=shard_count, packing_bins=packing_bins,
        group_by_length=group_by_length, read_options=read_options)


def make_mixed_train_iterator(
    sources: Sequence[TrainSource],
    tokenizer: TokenizerLike,
    *,
    batch_size: int,
    seed: int,
    mixing: str = "fixed",
    temperature: float = 2.0,
    anneal_examples: int = 0,
    batching: str = "mixed",
    shard_index: int = 0,
    shard_count: int = 1,
    packing_bins: int | None = None,
    group_by_length: int = 0,
    read_options: grain.ReadOptions | None = None,
) -> grain.DatasetIterator:
    """An infinite iterator of train batches drawn from several sources (``mixing``
    strategies: ``ftjax.data.mixing``); each row's "source" is its source's index in ``sources``.

    Each source is shuffled and repeated on its own (its own epochs). ``batching="mixed"``:
    rows of several sources share a batch. Row tasks mix examples (grain's ``mix``, or a
    ``SourceSchedule`` for "annealed"), then shard and featurize the mixed stream. Packed tasks
    pack each source's documents separately (every packed row comes from one source) and mix
    the rows, so for them the weights are shares of rows (and "annealed" counts rows).
    ``batching="per_source"``: every batch holds rows of one source, the source drawn per
    global batch (``SourceSchedule``), so all hosts' shares of one global batch come from it;
    ``anneal_examples``: mixing="annealed" reaches uniform after this many examples (rows) of
    the global stream (>= 1). One source is exactly ``make_train_iterator``'s stream, whatever
    the mixing and batching. Sharding, ``group_by_length`` and ``get_state`` / ``set_state``
    work as for ``make_train_iterator``.
    """
    _check_batching(batch_size, shard_index, shard_count)
    if group_by_length < 0:
        raise DataError(f"group_by_length must be >= 0, got {group_by_length}")
    if not 0 <= seed < 2**32:
        raise DataError(f"seed must lie in [0, 2**32), got {seed}")
    if batching not in BATCHINGS:
        raise DataError(f"batching must be one of {BATCHINGS}, got {batching!r}")
    if mixing == "annealed" and anneal_examples < 1:
        raise DataError(f"mixing='annealed' needs anneal_examples >= 1 (the examples over which "
                        f"it anneals), got {anneal_examples}")
    sources = tuple(sources)
    weights = mixture_weights(sources, mixing, temperature)
    check_compatible(sources)
    # A curriculum's clock: examples of the global batch (its source's own examples).
    streams = [_shuffled_forever(source, index, seed, examples_per_step=batch_size * shard_count)
               for index, source in enumerate(sources)]
    featurizers = [source.task.featurizer(tokenizer, seed=seed) for source in sources]
    read_options = read_options or default_read_options()
    task = sources[0].task
    layout = _Layout(tokenizer, batch_size, shard_index, shard_count, packing_bins,
                     group_by_length, read_options)
    if len(sources) > 1 and batching == "per_source":
        schedule = source_schedule(sources, mixing, seed=seed, temperature=temperature,
                                   anneal_examples=anneal_examples,
                                   unit_examples=batch_size * shard_count)
        return iter(_per_source_batches(streams, sources, featurizers, schedule, layout, seed))
    scheduled = len(sources) > 1 and mixing in SCHEDULED_MIXINGS
    if scheduled:  # one draw per example (row task) or packed row of the global stream
        schedule = source_schedule(sources, mixing, seed=seed, anneal_examples=anneal_examples)
    if task.packed:
        rows = [_packed_rows(stream, index, featurizers[index], task, layout)
                for index, stream in enumerate(streams)]
        if len(rows) == 1:
            mixed_rows = rows[0]
        elif scheduled:
            mixed_rows = ScheduledMix(rows, schedule, stride=shard_count, offset=shard_index)
        else:
            mixed_rows = grain.IterDataset.mix(rows, weights)
        batches = mixed_rows.batch(batch_size, drop_remainder=True)
    else:
        if len(streams) == 1:
            mixed = streams[0]
        elif scheduled:
            mixed = grain.MapDataset.select_from_datasets(streams, schedule)
        else:
            mixed = grain.MapDataset.mix(streams, weights)
        featurized = _examples(mixed, layout).map(_FeaturizeWithSource(featurizers))
        batches = _as_iter(_row_batches(featurized, task, layout, seed), read_options)
    return iter(batches)


class _Layout(NamedTuple):
    """How one host batches its share of the stream (make_mixed_train_iterator's arguments)."""

    tokenizer: TokenizerLike
    batch_size: int
    shard_index: int
    shard_count: int
    packing_bins: int | None
    group_by_length: int
    read_options: grain.ReadOptions


def _examples(stream: grain.MapDataset, layout: _Layout) -> grain.MapDataset:
    """A stream of (source, record index, record) as this host's IndexedRecords: every
    shard_count-th example of it, each numbered by its position in ``stream``."""
    examples = stream.map_with_index(_ExampleIndex())
    if layout.shard_count > 1:
        examples = examples[layout.shard_index::layout.shard_count]
    return examples


def _packed_rows(stream: grain.MapDataset, index: int, featurize: Any, task: Task,
                 layout: _Layout) -> grain.IterDataset:
    """One source's documents on this host, packed into rows that carry the source."""
    documents = _examples(stream, layout).map(PiecesWithRecord(featurize)).to_iter_dataset(
        layout.read_options)
    packed = pack_documents(documents, length=task.max_length,
                            num_bins=layout.packing_bins or layout.batch_size,
                            pad_id=layout.tokenizer.pad_id)
    return packed.map(_AddSource(index))


def _row_batches(featurized: grain.MapDataset, task: Task, layout: _Layout,
                 seed: int) -> grain.MapDataset | grain.IterDataset:
    """Featurized examples of an unpacked task in batches: still a MapDataset when every
    example is one row and batches come in stream order, else an IterDataset (the windows of
    a multi-row task flattened; rows grouped by length)."""
    if not (multi_row(task) or layout.group_by_length):
        return featurized.batch(layout.batch_size, drop_remainder=True)
    rows = featurized.to_iter_dataset(layout.read_options)
    if multi_row(task):
        rows = _flatten(rows)
    if layout.group_by_length:
        return LengthGroupedBatches(rows, batch_size=layout.batch_size,
                                    window=layout.group_by_length, seed=seed)
    return rows.batch(layout.batch_size, drop_remainder=True)


def _per_source_batches(streams: Sequence[grain.MapDataset], sources: Sequence[TrainSource],
                        featurizers: Sequence[Any], schedule: SourceSchedule, layout: _Layout,
                        seed: int) -> grain.IterDataset:
    """Batches of one source each, the source of global batch i drawn by ``schedule[i]``.

    Each source is batched on its own (sharded, featurized, packed or grouped like a one-source
    stream), so this host's j-th batch of a source is its share of that source's j-th global
    batch; the schedule picks which source's next batch comes. Row tasks stay random access
    (grain's select_from_datasets over the sources' batches); packed, multi-row and grouped
    batches exist only as iterators, which ``ScheduledMix`` picks from.
    """
    task = sources[0].task
    batches = []
    for index, stream in enumerate(streams):
        if task.packed:
            rows = _packed_rows(stream, index, featurizers[index], task, layout)
            batches.append(rows.batch(layout.batch_size, drop_remainder=True))
        else:
            featurized = _examples(stream, layout).map(_FeaturizeWithSource(featurizers))
            # Each source's length windows get their own order.
            batches.append(_row_batches(featurized, task, layout, _shuffle_seed(seed, index)))
    if all(isinstance(b, grain.MapDataset) for b in batches):
        return grain.MapDataset.select_from_datasets(batches, schedule).to_iter_dataset(
            layout.read_options)
    return ScheduledMix([_as_iter(b, layout.read_options) for b in batches], schedule)


def _as_iter(dataset: grain.MapDataset | grain.IterDataset,
             read_options: grain.ReadOptions) -> grain.IterDataset:
    if isinstance(dataset, grain.MapDataset):
        return dataset.to_iter_dataset(read_options)
    return dataset


def multi_row(task: Task) -> bool:
    """Whether ``task``'s featurizer returns a list of rows per record (``multi_row``: the
    windows of an extractive-QA context); the pipelines flatten them in order (grain's flat
    map, whose state is the record's and the position in its rows, so resuming is exact)."""
    return bool(getattr(task, "multi_row", False))


def _flatten(rows: grain.IterDataset) -> grain.IterDataset:
    return grain.experimental.FlatMapIterDataset(rows, _Rows())


def _shuffled_forever(source: TrainSource, index: int, seed: int, *,
                      examples_per_step: int = 1) -> grain.MapDataset:
    """The source's records as (source, record index, record), reshuffled every epoch; with a
    curriculum, its paced records first, then that stream (ftjax.data.curriculum),
    ``examples_per_step`` examples making a step of its pacing."""
    n = num_records(source)
    records = grain.MapDataset.source(source.records).map_with_index(_RecordIndex(n, index))
    plain = records.shuffle(seed=_shuffle_seed(seed, index)).repeat()
    if source.curriculum is None:
        return plain
    if len(source.curriculum.ranks) != n:
        raise DataError(f"source {source.name!r}: its curriculum ranks "
                        f"{len(source.curriculum.ranks)} records, its train split has {n}")
    order = CurriculumOrder(source.curriculum, seed=_shuffle_seed(seed, index),
                            examples_per_step=examples_per_step)
    return grain.MapDataset.select_from_datasets([plain, records], order)


class EvalBatches:
    """A finite, ordered, re-iterable pass over every record, in fixed-shape batches.

    The last batch is filled up to ``batch_size`` with copies of one of its rows whose
    ``example_mask`` / ``loss_mask`` is 0, so summing masked losses counts every example (or
    target token) exactly once. Every row's "source" is ``source_index``.

    ``group_by_length`` n > 0 (unpacked tasks): rows are batched by length within windows of n
    batches (a short batch per window, filled like the last), so the batches come in another
    order; every row still comes exactly once, and the task metrics are order-free.
    """

    def __init__(self, records: RecordSource, task: Task, tokenizer: TokenizerLike, *,
                 batch_size: int, seed: int, read_options: grain.ReadOptions | None,
                 source_index: int = 0, group_by_length: int = 0):
        _check_batching(batch_size, 0, 1)
        if group_by_length < 0:
            raise DataError(f"group_by_length must be >= 0, got {group_by_length}")
        self.group_by_length = 0 if task.packed else group_by_length
        self.num_examples = _num_records(records, "eval records")
        self.batch_size = batch_size
        self.source_index = source_index
        self._records, self._task, self._tokenizer = records, task, tokenizer
        self._featurize = task.featurizer(tokenizer, seed=seed)  # fail early on a bad setup
        self._read_options = read_options or default_read_options()

    @property
    def num_batches(self) -> int | None:
        """Batches per pass; None for packed and multi-row tasks (known only after packing or
        windowing)."""
        if self._task.packed or multi_row(self._task):
            return None
        return -(-self.num_examples // self.batch_size)

    def _rows(self) -> grain.IterDataset:
        examples = grain.MapDataset.source(self._records).map_with_index(
            _EvalIndex(self.source_index))
        if self._task.packed:
            documents = examples.map(PiecesWithRecord(self._featurize)).to_iter_dataset(
                self._read_options)
            rows = pack_documents(documents, length=self._task.max_length,
                                  num_bins=self.batch_size, pad_id=self._tokenizer.pad_id)
            return rows.map(_AddSource(self.source_index))
        featurize = _FeaturizeWithSource({self.source_index: self._featurize})
        rows = examples.map(featurize).to_iter_dataset(self._read_options)
        return _flatten(rows) if multi_row(self._task) else rows

    def __iter__(self) -> Iterator[Batch]:
        window = (self.group_by_length or 1) * self.batch_size
        pending: list[Row] = []
        for row in self._rows():
            pending.append(row)
            if len(pending) == window:
                yield from self._batches(pending)
                pending = []
        if pending:
            yield from self._batches(pending)

    def _batches(self, rows: list[Row]) -> Iterator[Batch]:
        if self.group_by_length:
            # Eval order is free, so the window's order is fixed (seed 0, window 0).
            order = group_order([row_length(r) for r in rows], self.batch_size, 0, 0)
        else:
            order = [list(range(i, min(i + self.batch_size, len(rows))))
                     for i in range(0, len(rows), self.batch_size)]
        for positions in order:
            batch = [rows[i] for i in positions]
            batch += [filler_like(batch[0])] * (self.batch_size - len(batch))
            yield stack_rows(batch)


def make_eval_batches(
    records: RecordSource,
    task: Task,
    tokenizer: TokenizerLike,
    *,
    batch_size: int,
    seed: int = 0,
    read_options: grain.ReadOptions | None = None,
    source_index: int = 0,
    group_by_length: int = 0,
) -> EvalBatches:
    """Every record once, in order (or grouped by length), in batches of ``batch_size`` (see
    ``EvalBatches``).

    ``seed`` only matters for random tasks (MLM masking, seeded by (seed, record index)).
    ``source_index``: the rows' "source" feature (the source's index in the train mixture).
    """
    return EvalBatches(records, task, tokenizer, batch_size=batch_size, seed=seed,
                       read_options=read_options, source_index=source_index,
                       group_by_length=group_by_length)


def steps_per_epoch(num_examples: int, batch_size: int, shard_count: int = 1) -> int:
    """Full train batches per epoch for unpacked tasks (per host with ``shard_count`` hosts)."""
    return num_examples // (batch_size * shard_count)


def count_real_tokens(batch: Batch) -> int:
    """Tokens the model attends to (filler rows included: they cost compute)."""
    return int(batch["attention_mask"].sum())


def count_loss_weight(batch: Batch) -> float:
    """What a loss normalizes by: target tokens (LM tasks) or real examples (classification)."""
    mask = batch["loss_mask"] if "loss_mask" in batch else batch["example_mask"]
    return float(mask.sum())


# --------------------------------------------------------------------------------------------
# Helpers. Module-level classes rather than lambdas so that the pipeline stays picklable
# (grain's multiprocessing prefetch pickles the transformations).


class _RecordIndex:
    def __init__(self, num_records: int, source: int = 0):
        self.num_records, self.source = num_records, source

    def __call__(self, index: int, record: Any) -> tuple[int, int, Any]:
        # After shuffle + repeat, the source sees index + epoch * n: fold it back.
        return self.source, index % self.num_records, record


class _ExampleIndex:
    def __call__(self, index: int, indexed: tuple[int, int, Any]) -> IndexedRecord:
        source, record_index, record = indexed
        return IndexedRecord(record_index, index, record, source)


class _EvalIndex:
    def __init__(self, source: int = 0):
        self.source = source

    def __call__(self, index: int, record: Any) -> IndexedRecord:
        return IndexedRecord(index, index, record, self.source)


class _FeaturizeWithSource:
    """Featurizes each example with its source's featurizer and records the source."""

    def __init__(self, featurizers: Sequence[Any] | Mapping[int, Any]):
        self.featurizers = featurizers

    def __call__(self, item: IndexedRecord) -> Row | list[Row]:
        rows = self.featurizers[item.source](item)
        if isinstance(rows, list):  # a multi-row task: every row of the record
            return [with_source(row, item.source, item.record_index) for row in rows]
        return with_source(rows, item.source, item.record_index)


class _Rows(grain.experimental.FlatMapTransform):
    """A multi-row task's list of rows, flattened (at most max_fan_out rows per record)."""

    max_fan_out = 4096

    def flat_map(self, rows: list[Row]) -> list[Row]:
        return rows


class _AddSource:
    def __init__(self, source: int):
        self.source = source

    def __call__(self, row: Row) -> Row:
        return with_source(row, self.source)


def _shuffle_seed(seed: int, source: int = 0) -> int:
    # grain reseeds epoch e with (seed + e), so seeds s and s+1 would share all but one epoch's
    # order; scramble the user seed first so nearby seeds give unrelated orders. Each source
    # of a mixture gets its own order; source 0 keeps the one-source seed, so one source gives
    # the stream of make_train_iterator.
    entropy = [seed, 0x5EED] + ([source] if source else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _num_records(records: RecordSource, what: str) -> int:
    try:
        n = len(records)
    except TypeError:
        raise DataError(f"{what} must support len() and indexing, got {type(records).__name__}")
    if n == 0:
        raise EmptySplitError(f"{what} are empty ({records!r:.120})")
    return n


def _check_batching(batch_size: int, shard_index: int, shard_count: int) -> None:
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise DataError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
