"""Curriculum learning on a source's train stream: records sorted by difficulty
(``ftjax.data.difficulty``), and a pacing function (``ftjax.data.pacing``) that grows the share
of them a step may draw from.

The stream. Output position p of a source's train stream belongs to step s = p // E (E =
``examples_per_step``, the global batch size); K(s) = ceil(c(s) N) of its N records are
available then, those of difficulty rank below K(s). While K < N, output p is the next record of
a walk through the records, reshuffled every pass (a seeded numpy permutation), whose rank is
below K(s): the records not yet available are skipped, the others come in the walk's order. From
the first step with K = N on, output p is position p - P of the source's plain stream (its
records shuffled, reshuffled every epoch and repeated: ``pipeline._shuffled_forever``), P being
the paced outputs before it. So

- while c < 1 a step draws only from the easiest share (``order = "hard_first"``: the hardest),
  each available record once per pass of the walk;
- then training goes on exactly as plain training starts;
- with c = 1 from the start (``pacing = "constant"``) P = 0 and the stream IS the plain one,
  element for element, whatever the scores: the control arm of an experiment trains exactly as
  without a curriculum (``score = "random"`` with another pacing is the "random order, same
  pacing" baseline).

Why a walk of its own rather than the plain stream with records skipped: which record sits at a
position of the plain stream is grain's index shuffle, one call per position (tens to hundreds
of microseconds on small splits), while a paced stream skips most positions early on and a
resumed run must walk every one before its position again; numpy permutations make that walk
cheap.

Several sources: each paces on its own clock, its own example count over E (its position in
its own stream), so a source drawn at weight w reaches step s of its pacing at about step s / w
of the run.

Packed tasks (causal_lm / chat with packing): the stream's elements are documents, several per
packed row, so the clock counts documents over E and runs ahead of the optimizer step by about
the documents per row; set ``full_at_step`` accordingly.

``CurriculumOrder`` is grain's ``DatasetSelectionMap`` (position -> (1, record index) while
paced, (0, plain position) after), so ``grain.MapDataset.select_from_datasets([plain,
records], order)`` stays a random-access MapDataset:
hosts slice it ``[i::n]`` and a resumed iterator only needs its position, as with
``ftjax.data.schedule.SourceSchedule``, whose blockwise caching this follows. The mapping is
computed per block of ``BLOCK`` positions with numpy; each block starts where the one before
ended in the walk, so the walk position where each block starts is kept (one integer per block)
and reaching a paced position computes the blocks before it once.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from typing import NamedTuple

import grain
import numpy as np

from ftjax.data.difficulty import (
    ORDERS,
    REFERENCE_SCORES,
    SCORES,
    column_scores,
    difficulty_ranks,
    length_scores,
    random_scores,
    rarity_scores,
    reference_scores,
)
from ftjax.data.errors import DataError
from ftjax.data.pacing import PACINGS, Pacing, check_pacing
from ftjax.data.teacher_cache import TeacherCache
from ftjax.data.types import RecordSource, TokenizerLike
from ftjax.settings import setting

BLOCK = 4096  # output positions per mapping block
CHUNK = 4096  # walk positions compared with K at once (within one pass)
SALT = 0xC0DE  # keeps the walk's reshuffles apart from other draws of the same seed
_CACHED_BLOCKS = 8
_CACHED_PASSES = 4


@dataclasses.dataclass(frozen=True)
class CurriculumConfig:
    """Curriculum learning on a source's train split (the `curriculum` block of a source)."""

    score: str = setting(
        "none", "the difficulty of each train record (ftjax.data.difficulty): none (no "
        "curriculum) | length (tokens of its texts) | rarity (sum of -log p(word), Platanios et "
        "al. 2019) | column (a numeric kept column, `column`) | reference_loss / "
        "reference_margin (a reference model's loss / small margin from a teacher cache, "
        "`reference`) | random (seeded: the random-order baseline)", choices=SCORES)
    column: str = setting("", "score='column': the record column holding the difficulty (list "
                          "it in the source's keep_columns)")
    reference: str = setting("", "reference_loss / reference_margin: a teacher cache directory "
                             "(ftjax teacher-cache, all logits) of this train split made by a "
                             "short reference run or a teacher")
    order: str = setting("easy_first", "easy_first (curriculum) | hard_first "
                         "(anti-curriculum)", choices=ORDERS)
    pacing: str = setting(
        "linear", "the share c(t) of the sorted records available at step t (ftjax.data.pacing):"
        " linear | root (Platanios et al. 2019, power root_power) | step (`stages` equal "
        "jumps) | geometric | constant (1 from the start: plain training order)",
        choices=PACINGS)
    start: float = setting(0.1, "c(0), the share available at the first step, in (0, 1]")
    full_at_step: int = setting(1000, "the step where every record is available (c = 1); the "
                                "clock is the source's own examples over the global batch size")
    root_power: float = setting(2.0, "pacing='root': the power p")
    stages: int = setting(4, "pacing='step': the number of equal jumps up to 1")
    seed: int = setting(0, "the random scores and the order of tied scores")

    def __post_init__(self):
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        check_pacing(self.pacing, self.start, self.full_at_step, self.root_power, self.stages)
        if self.score == "column" and not self.column:
            raise ValueError("score='column' reads the difficulty from a column: set column")
        if self.score in REFERENCE_SCORES and not self.reference:
            raise ValueError(f"score={self.score!r} reads a reference model's logits: set "
                             f"reference (a teacher cache directory)")

    @property
    def enabled(self) -> bool:
        return self.score != "none"

    @property
    def pacing_function(self) -> Pacing:
        return Pacing(self.pacing, self.start, self.full_at_step, self.root_power, self.stages)

    def describe(self, num_records: int) -> str:
        """One line for the run's report."""
        shape = "c = 1" if self.pacing == "constant" else (
            f"{self.pacing} from {self.start:g} to 1 at step {self.full_at_step}")
        return f"curriculum: {self.score} scores, {self.order}, {shape}, {num_records} records"


def curriculum_scores(config: CurriculumConfig, records: RecordSource, where: str, *,
                      tokenizer: TokenizerLike | None = None,
                      reference: TeacherCache | None = None) -> np.ndarray:
    """The difficulty of each of ``records`` by ``config.score`` (a DataError names the first
    record that cannot be scored)."""
    if config.score == "length":
        if tokenizer is None:
            raise DataError(f"{where}: length scores need the run's tokenizer")
        return length_scores(records, tokenizer, where)
    if config.score == "rarity":
        return rarity_scores(records, where)
    if config.score == "column":
        return column_scores(records, config.column, where)
    if config.score in REFERENCE_SCORES:
        if reference is None:
            raise DataError(f"{where}: {config.score} scores need the reference cache opened")
        return reference_scores(reference, records, config.score, where)
    if config.score == "random":
        return random_scores(len(records), config.seed)
    raise DataError(f"{where}: no curriculum (score={config.score!r}) to score records by")


class Curriculum(NamedTuple):
    """What a train source's stream needs of its curriculum: each record's rank (0 = shown
    first) and the pacing function."""

    ranks: np.ndarray
    pacing: Pacing

    @classmethod
    def from_scores(cls, scores: np.ndarray, config: CurriculumConfig) -> "Curriculum":
        return cls(difficulty_ranks(scores, config.order, config.seed), config.pacing_function)


class CurriculumOrder(grain.transforms.DatasetSelectionMap):
    """Output position -> (stream, index) of a curriculum (module doc): (1, record index) while
    the pacing holds records back, (0, position in the plain stream) after.

    ``seed``: the walk's reshuffles (one numpy permutation of the records per pass).
    """

    def __init__(self, curriculum: Curriculum, *, seed: int, examples_per_step: int):
        if examples_per_step < 1:
            raise DataError(f"examples_per_step must be >= 1, got {examples_per_step}")
        curriculum.pacing.check()
        self.ranks = np.asarray(curriculum.ranks, np.int64)
        self.num_records = len(self.ranks)
        if self.num_records < 1 or not np.array_equal(np.sort(self.ranks),
                                                      np.arange(self.num_records)):
            raise DataError("curriculum ranks must be a permutation of 0..N-1")
        self.pacing, self.seed = curriculum.pacing, seed
        self.examples_per_step = examples_per_step
        self.paced = self._full_step() * examples_per_step  # outputs before it are paced
        self._chunk = min(CHUNK, self.num_records)
        self._reset_cache()

    # Caches are rebuilt, not pickled: grain may pickle the pipeline into worker processes.
    def _reset_cache(self) -> None:
        self._lock = threading.Lock()
        self._starts = [0]  # walk position where output block b starts
        self._blocks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._passes: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_lock", "_starts", "_blocks", "_passes")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset_cache()

    def __len__(self) -> int:
        return sys.maxsize  # infinite, as the plain stream

    def __getitem__(self, position: int) -> tuple[int, int]:
        if position < 0:
            raise IndexError(f"position {position} < 0")
        position = int(position)
        if position >= self.paced:
            return 0, position - self.paced
        block, offset = divmod(position, BLOCK)
        with self._lock:
            walked = int(self._block(block)[offset])
            return 1, int(self._pass(walked // self.num_records)[walked % self.num_records])

    def records(self, start: int, stop: int) -> np.ndarray:
        """The record indices of the paced outputs start..stop-1 (< ``paced``; tests)."""
        if stop > self.paced:
            raise IndexError(f"outputs from {self.paced} on come from the plain stream")
        return np.array([self[p][1] for p in range(start, stop)], np.int64)

    def available(self, steps: np.ndarray) -> np.ndarray:
        """K(s): how many of the easiest records step s draws from (1..N)."""
        share = self.pacing(np.asarray(steps))
        return np.clip(np.ceil(share * self.num_records), 1, self.num_records).astype(np.int64)

    def _full_step(self) -> int:
        """The first step with every record available: at most full_at_step (c = 1 there),
        found by bisection since the pacing never decreases."""
        low, high = 0, self.pacing.full_at_step
        while low < high:
            middle = (low + high) // 2
            if self.available(np.array([middle]))[0] >= self.num_records:
                high = middle
            else:
                low = middle + 1
        return low

    def _block(self, block: int) -> np.ndarray:
        if block in self._blocks:
            self._blocks.move_to_end(block)
            return self._blocks[block]
        while len(self._starts) <= block:  # a resumed run walks the blocks before it once
            b = len(self._starts) - 1
            self._starts.append(int(self._walk(b)[-1]) + 1)
        positions = self._walk(block)
        self._blocks[block] = positions
        if len(self._blocks) > _CACHED_BLOCKS:
            self._blocks.popitem(last=False)
        return positions

    def _walk(self, block: int) -> np.ndarray:
        """The walk positions of output block ``block`` (which starts at _starts[block]): for
        each output, the next position whose record is available at the output's step."""
        if block in self._blocks:
            return self._blocks[block]
        first = block * BLOCK
        steps = np.arange(first, first + BLOCK, dtype=np.int64) // self.examples_per_step
        limits = self.available(steps)  # non-decreasing: pacing is monotone
        q = self._starts[block]
        out = np.empty(BLOCK, np.int64)
        i = 0
        while i < BLOCK:
            limit = limits[i]
            end = int(np.searchsorted(limits, limit, side="right"))  # outputs sharing K
            if limit >= self.num_records:  # every record available: none skipped
                out[i:end] = q + np.arange(end - i)
                q += end - i
                i = end
                continue
            while i < end:  # the next (end - i) walk positions whose rank < K
                ranks, chunk_end = self._chunk_ranks(q)
                taken = np.flatnonzero(ranks < limit)[:end - i] + q
                out[i:i + len(taken)] = taken
                i += len(taken)
                # Filled: go on after the last taken; else the chunk's rest has none left.
                q = int(taken[-1]) + 1 if i == end else chunk_end
        return out

    def _chunk_ranks(self, q: int) -> tuple[np.ndarray, int]:
        """The ranks of the records at walk positions q.. up to the end of q's chunk (at most
        CHUNK positions, within one pass), and that end."""
        n = self.num_records
        walk_pass, at = divmod(q, n)
        stop = min((at // self._chunk + 1) * self._chunk, n)
        return self.ranks[self._pass(walk_pass)[at:stop]], walk_pass * n + stop

    def _pass(self, walk_pass: int) -> np.ndarray:
        """The record order of one pass of the walk: a seeded permutation (cached)."""
        if walk_pass not in self._passes:
            rng = np.random.default_rng([self.seed, SALT, walk_pass])
            self._passes[walk_pass] = rng.permutation(self.num_records)
            if len(self._passes) > _CACHED_PASSES:
                self._passes.popitem(last=False)
        return self._passes[walk_pass]

    def __repr__(self) -> str:
        return (f"CurriculumOrder({self.pacing}, {self.num_records} records, "
                f"examples_per_step={self.examples_per_step}, paced={self.paced})")


__all__ = ["BLOCK", "Curriculum", "CurriculumConfig", "CurriculumOrder", "curriculum_scores"]
