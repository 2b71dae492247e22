"""The source of every unit of a mixed train stream, as a pure function of (seed, unit index).

A unit is what one draw decides: an example (mixed batches, annealed), a packed row, or a whole
global batch (per-source batches). ``SourceSchedule[u]`` is ``(source, rank)``: the source of
unit u and how many earlier units came from that source, i.e. the position in that source's own
stream. That is grain's ``DatasetSelectionMap`` interface, so ``grain.MapDataset.
select_from_datasets(streams, schedule)`` is a random-access mixed stream: it can be sliced per
host (``[shard_index::shard_count]``), and a resumed iterator only needs its position.

Draws: units come in blocks of ``BLOCK`` ; block b's sources are drawn by
``np.random.default_rng([seed, SALT, b])`` by inverse CDF on the strategy's probabilities at
each unit (annealed: at the unit's first example, u * ``unit_examples``), round_robin takes
u mod k. The rank needs the counts of every earlier block: they are kept as cumulative sums (k
integers per block), so reaching unit u costs drawing its blocks once; the last few blocks' draws
are cached. Every host computes the same draws (same seed, same numpy): only a uniform draw
within one float rounding of a CDF step could differ between two CPUs' exp/log, odds ~1e-16 per
draw.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence

import grain
import numpy as np

from ftjax.data.errors import DataError
from ftjax.data.mixing import TrainSource, annealed_weights, mixture_weights, num_records

BLOCK = 4096  # units per draw block
SALT = 0x50C5  # keeps these draws apart from the record shuffles' seeds
_CACHED_BLOCKS = 8
DRAWS = ("weights", "annealed", "round_robin")


class SourceSchedule(grain.transforms.DatasetSelectionMap):
    """Which source each unit comes from (see the module doc); infinite.

    ``draw``: "weights" (fixed ``probabilities``), "annealed" (``annealed_weights`` of
    ``sizes`` at the unit's first example, reaching uniform at ``anneal_examples``) or
    "round_robin" (the k sources in turn). ``unit_examples``: examples per unit, the clock of
    the annealing (1 for examples or rows, the global batch size for batches).
    """

    def __init__(self, draw: str, num_sources: int, *, seed: int,
                 probabilities: Sequence[float] = (), sizes: Sequence[int] = (),
                 anneal_examples: int = 1, unit_examples: int = 1):
        if draw not in DRAWS:
            raise DataError(f"draw must be one of {DRAWS}, got {draw!r}")
        if num_sources < 1 or unit_examples < 1:
            raise DataError(f"a schedule needs >= 1 source and >= 1 example per unit, got "
                            f"{num_sources} and {unit_examples}")
        if draw == "weights" and len(probabilities) != num_sources:
            raise DataError(f"need one probability per source, got {len(probabilities)} for "
                            f"{num_sources}")
        if draw == "annealed":
            if len(sizes) != num_sources:
                raise DataError(f"need one size per source, got {len(sizes)} for "
                                f"{num_sources}")
            if anneal_examples < 1:
                raise DataError(f"anneal_examples must be >= 1, got {anneal_examples}")
        self.draw, self.num_sources, self.seed = draw, num_sources, seed
        self.probabilities = np.asarray(probabilities, np.float64)
        self.sizes = tuple(int(n) for n in sizes)
        self.anneal_examples, self.unit_examples = anneal_examples, unit_examples
        self._reset_cache()

    # Caches are rebuilt, not pickled: grain may pickle the pipeline into worker processes.
    def _reset_cache(self) -> None:
        self._lock = threading.Lock()
        self._counts_before = [np.zeros(self.num_sources, np.int64)]  # per block b
        self._blocks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_lock", "_counts_before", "_blocks")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset_cache()

    def __len__(self) -> int:
        return sys.maxsize  # infinite, as grain's repeat() says it

    def __getitem__(self, unit: int) -> tuple[int, int]:
        """(source of unit ``unit``, its position in that source's stream)."""
        if unit < 0:
            raise IndexError(f"unit {unit} < 0")
        block, offset = divmod(int(unit), BLOCK)
        with self._lock:
            sources, ranks = self._block(block)
            counts = self._counts_before_block(block)
        source = int(sources[offset])
        return source, int(counts[source] + ranks[offset])

    def sources(self, start: int, stop: int) -> np.ndarray:
        """The sources of units start..stop-1 (for tests and reports)."""
        out = []
        with self._lock:
            for block in range(start // BLOCK, -(-stop // BLOCK)):
                out.append(self._block(block)[0])
        if not out:
            return np.zeros(0, np.int64)
        first = (start // BLOCK) * BLOCK
        return np.concatenate(out)[start - first: stop - first]

    def _counts_before_block(self, block: int) -> np.ndarray:
        while len(self._counts_before) <= block:
            b = len(self._counts_before) - 1
            # Counting needs the draws only (a resumed run counts every block before it).
            sources = self._blocks[b][0] if b in self._blocks else self._draw(b)
            self._counts_before.append(
                self._counts_before[b] + np.bincount(sources, minlength=self.num_sources))
        return self._counts_before[block]

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """The block's sources and each unit's rank among the block's units of its source."""
        if block in self._blocks:
            self._blocks.move_to_end(block)
            return self._blocks[block]
        sources = self._draw(block)
        ranks = np.empty(BLOCK, np.int64)
        for source in range(self.num_sources):
            mine = sources == source
            ranks[mine] = np.arange(int(mine.sum()))
        self._blocks[block] = (sources, ranks)
        if len(self._blocks) > _CACHED_BLOCKS:
            self._blocks.popitem(last=False)
        return sources, ranks

    def _draw(self, block: int) -> np.ndarray:
        units = np.arange(block * BLOCK, (block + 1) * BLOCK, dtype=np.int64)
        if self.draw == "round_robin":
            return units % self.num_sources
        uniform = np.random.default_rng([self.seed, SALT, block]).random(BLOCK)
        if self.draw == "weights":
            probabilities = np.broadcast_to(self.probabilities, (BLOCK, self.num_sources))
        else:
            probabilities = annealed_weights(self.sizes, units * self.unit_examples,
                                             self.anneal_examples)
        # Inverse CDF: the source is the number of CDF steps at or below the draw. The last
        # step (1.0, up to rounding) is left out, so a draw never falls past the last source.
        # Column by column: numpy reduces a short last axis slowly, and a resumed run draws
        # every block before its position.
        sources = np.zeros(BLOCK, np.int64)
        step = np.zeros(BLOCK)
        for source in range(self.num_sources - 1):
            step = step + probabilities[:, source]
            sources += uniform >= step
        return sources

    def __repr__(self) -> str:
        return (f"SourceSchedule({self.draw!r}, {self.num_sources} sources, "
                f"unit_examples={self.unit_examples})")


def source_schedule(sources: Sequence[TrainSource], mixing: str, *, seed: int,
                    temperature: float = 2.0, anneal_examples: int = 1,
                    unit_examples: int = 1) -> SourceSchedule:
    """The schedule that draws ``sources`` by the strategy ``mixing`` (``ftjax.data.mixing``),
    one draw per unit of ``unit_examples`` examples."""
    if mixing == "round_robin":
        return SourceSchedule("round_robin", len(sources), seed=seed,
                              unit_examples=unit_examples)
    if mixing == "annealed":
        return SourceSchedule("annealed", len(sources), seed=seed,
                              sizes=[num_records(source) for source in sources],
                              anneal_examples=anneal_examples, unit_examples=unit_examples)
    return SourceSchedule("weights", len(sources), seed=seed,
                          probabilities=mixture_weights(sources, mixing, temperature),
                          unit_examples=unit_examples)


__all__ = ["BLOCK", "SourceSchedule", "source_schedule"]
