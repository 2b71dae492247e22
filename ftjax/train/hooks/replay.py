"""Experience replay's buffer: a reservoir sample (ftjax.data.replay) of the examples a run
trains on, kept with every checkpoint and written to WORKDIR/replay.json at the end, for a later
stage to train on (`sources.<name>.replay_from`) and to continue (`replay.continue_from`)."""

from __future__ import annotations

import jax
import numpy as np

from ftjax.data.packing import PIECE_RECORD
from ftjax.data.replay import REPLAY_FILE, ReplayConfig, Reservoir, read_replay, write_replay
from ftjax.settings import ConfigError
from ftjax.train.hooks.base import Hook


def _in_order(tokens: np.ndarray) -> list[int]:
    """The records a packed row's tokens name (first_piece_record), in the row's order."""
    starts = np.flatnonzero(np.diff(tokens, prepend=-1))
    return [int(r) for r in tokens[starts] if r >= 0]


class ReplayRecorder(Hook):
    """Adds each real row of the step's batch from the recorded sources to the reservoir, in
    row order, as (source name, record index); a packed row adds each document whose first
    piece it holds, in the row's order (a document is seen once per pass, as a row is)."""

    def __init__(self, config: ReplayConfig):
        self.config = config
        self.reservoir = Reservoir(config.capacity, config.seed)
        self._restored = False
        self._names: list[str] = []
        self._recorded: set[int] = set()

    def on_start(self, trainer):
        if jax.process_count() > 1:
            raise ConfigError("replay: each process sees only its rows of a batch; a replay "
                              "buffer is recorded by single-process runs")
        sources = trainer.cfg.get("sources") or {}
        self._names = [s.name for s in trainer.exp.sources if s.trained]  # the batches' order
        chosen = self.config.sources or [
            n for n in self._names if not (sources.get(n) or {}).get("replay_from")]
        unknown = sorted(set(chosen) - set(self._names))
        if unknown:
            raise ConfigError(f"replay.sources {unknown} are not trained sources of this run "
                              f"({self._names})")
        self._recorded = {self._names.index(n) for n in chosen}
        if not self._restored and self.config.continue_from:
            earlier = read_replay(self.config.continue_from)
            if earlier.capacity != self.config.capacity:
                raise ConfigError(f"replay.continue_from holds a buffer of capacity "
                                  f"{earlier.capacity}, this run's is {self.config.capacity}; "
                                  f"a continued reservoir keeps its size")
            self.reservoir = Reservoir(self.config.capacity, self.config.seed,
                                       items=earlier.items, seen=earlier.seen)
        return None

    def on_step_end(self, trainer, step, metrics):
        batch = trainer.host_batch
        sources = np.asarray(batch["source"]).tolist()
        if PIECE_RECORD in batch:  # packed rows: each document once, at its first piece
            records = [_in_order(row) for row in np.asarray(batch[PIECE_RECORD])]
        else:
            records = [[example] for example in np.asarray(batch["example_id"]).tolist()]
        for row_records, source in zip(records, sources):
            if source in self._recorded:
                for example in row_records:
                    if example >= 0:
                        self.reservoir.add((self._names[source], example))
        return None

    def on_end(self, trainer, outcome):
        if outcome == "finished" and trainer.primary:
            write_replay(trainer.workdir / REPLAY_FILE, self.reservoir)

    def state_dict(self) -> dict:
        return self.reservoir.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.reservoir = Reservoir.from_state(state)
        self._restored = True
