"""Experience replay for continual learning: a reservoir sample of the examples a run trained
on, and a later run's sources restricted to it.

A `Reservoir` (Vitter's Algorithm R) holds at most `capacity` items of a stream so that after n
items each of them is held with probability capacity / n: a uniform sample of everything seen,
whatever n turns out to be. The draw for the k-th item comes from a generator seeded by (seed,
k), so the sample is a function of the stream alone: a run resumed from a checkpoint (which
saves the reservoir) holds exactly what the uninterrupted run would.

Items are (source name, record index in that source's train split). A run writes its reservoir
to WORKDIR/replay.json (ftjax.train.hooks.ReplayRecorder); a later stage continues it (every
task's examples seen so far, one uniform sample) and trains on it through a source whose
`replay_from` names that file: its train split is then the records the buffer holds for it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ftjax.data.errors import DataError
from ftjax.data.types import Record, RecordSource
from ftjax.settings import setting

REPLAY_FILE = "replay.json"
_SALT = 0x2E5E


class Reservoir:
    """At most `capacity` items of a stream, each item seen so far held with equal chance."""

    def __init__(self, capacity: int, seed: int = 0, *, items: Iterable = (), seen: int = 0):
        if capacity < 1:
            raise DataError(f"a replay buffer holds >= 1 example, got capacity {capacity}")
        self.capacity, self.seed = int(capacity), int(seed)
        self.items = [tuple(item) for item in items]
        self.seen = int(seen)
        if len(self.items) > self.capacity or len(self.items) > self.seen:
            raise DataError(f"a reservoir of capacity {capacity} that saw {seen} items cannot "
                            f"hold {len(self.items)}")

    def add(self, item) -> None:
        """Algorithm R: the k-th item enters a full buffer with probability capacity / k, in
        place of a uniformly chosen held item."""
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(tuple(item))
            return
        slot = int(np.random.default_rng([self.seed, _SALT, self.seen]).integers(self.seen))
        if slot < self.capacity:
            self.items[slot] = tuple(item)

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "seed": self.seed, "seen": self.seen,
                "items": [list(item) for item in self.items]}

    @classmethod
    def from_state(cls, state: dict) -> "Reservoir":
        return cls(state["capacity"], state["seed"], items=state["items"], seen=state["seen"])


def write_replay(path: str | os.PathLike, reservoir: Reservoir) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(reservoir.state_dict()))
    os.replace(tmp, path)
    return path


def read_replay(path: str | os.PathLike) -> Reservoir:
    """The reservoir a run wrote (a file, or a run directory holding replay.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / REPLAY_FILE
    if not path.is_file():
        raise DataError(f"no replay buffer at {path} (a run with a `replay` block writes "
                        f"WORKDIR/{REPLAY_FILE} when it finishes)")
    try:
        return Reservoir.from_state(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is not a replay buffer: {err}") from None


class ReplayedRecords:
    """The records of `base` at `indices`, in that order (a random-access split)."""

    def __init__(self, base: RecordSource, indices: Sequence[int]):
        self.base, self.indices = base, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Record:
        return self.base[self.indices[index]]


def replayed(name: str, records: RecordSource, path: str | os.PathLike) -> ReplayedRecords:
    """Source `name`'s train records that the buffer at `path` holds (sorted by index)."""
    reservoir = read_replay(path)
    indices = sorted(int(i) for source, i in reservoir.items if source == name)
    if not indices:
        held = sorted({source for source, _ in reservoir.items})
        raise DataError(f"sources.{name}.replay_from: the buffer {path} holds no example of "
                        f"{name!r} (it holds {held})")
    if indices[-1] >= len(records):
        raise DataError(f"sources.{name}.replay_from: the buffer {path} holds record "
                        f"{indices[-1]} of {name!r}, whose train split has {len(records)}: it "
                        f"was made from other data")
    return ReplayedRecords(records, indices)




@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """The `replay` block of a run: keep a reservoir sample of the examples it trains on."""

    capacity: int = setting(0, "examples the buffer holds (0: no buffer); the run writes it to "
                            "WORKDIR/replay.json and saves it with every checkpoint")
    continue_from: str = setting("", "an earlier run's replay.json (or its workdir) to continue: "
                                 "the buffer stays one uniform sample of every example seen "
                                 "since the first run")
    sources: tuple[str, ...] = setting((), "the sources whose examples enter the buffer "
                                       "(default: the trained sources without replay_from)")
    seed: int = setting(0, "the seed of the reservoir's draws")

    def __post_init__(self):
        if self.capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {self.capacity}")
        if self.continue_from and not self.capacity:
            raise ValueError("continue_from needs capacity > 0 (the buffer to continue)")

    @property
    def enabled(self) -> bool:
        return self.capacity > 0


__all__ = ["REPLAY_FILE", "ReplayConfig", "ReplayedRecords", "Reservoir", "read_replay", "replayed",
           "write_replay"]
