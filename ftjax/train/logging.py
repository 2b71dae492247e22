"""Where a run's numbers go: WORKDIR/metrics.jsonl, TensorBoard event files, a progress bar.

metrics.jsonl holds one JSON object per logged row: train rows {"step", "loss", ...} and eval rows
{"step", "split", "<metric>", ...}. Appending (never rewriting) keeps it intact across a resume;
rows past the resumed step are dropped first so a replayed stretch is not logged twice.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import sys
import time
from pathlib import Path

import tqdm


def _plain(value):
    value = float(value) if hasattr(value, "__float__") else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible as strings
    return value


class MetricsWriter:
    def __init__(self, workdir: Path, *, resume_step: int = 0, tensorboard: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self._truncate_after(resume_step)
        self._file = open(self.path, "a")
        self._tb = TensorBoardWriter(Path(workdir) / "tensorboard") if tensorboard else None

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, row: dict, *, prefix: str = "train") -> None:
        row = {k: _plain(v) for k, v in row.items()}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            self._tb.write(row, prefix)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class TensorBoardWriter:
    """TensorBoard event files (tensorboardX), written by a thread of their own.

    Opening the writer imports tensorboardX, which imports torch where torch is installed
    (about 0.9 s); on its own thread that overlaps the run's start (compilation, the first
    step) instead of delaying it, and no step waits for an event file. Rows are written in the
    order given; an error of the writer is raised by the next `write` or by `close`.
    """

    def __init__(self, logdir: Path):
        self._writer = None  # set by _open, on the writer's thread
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tensorboard")
        self._pending = [self._pool.submit(self._open, str(logdir))]

    def _open(self, logdir: str) -> None:
        from tensorboardX import SummaryWriter  # on this thread: see the class docstring

        self._writer = SummaryWriter(logdir)

    def _add(self, row: dict, prefix: str) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key not in ("step", "split") and isinstance(value, (int, float)):
                self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def _raise_failures(self, wait: bool) -> None:
        if wait:
            concurrent.futures.wait(self._pending)
        done, still = [], []
        for future in self._pending:  # each future asked once: it may finish meanwhile
            (done if future.done() else still).append(future)
        self._pending = still
        for future in done:
            future.result()  # re-raises the thread's error here

    def write(self, row: dict, prefix: str) -> None:
        self._raise_failures(wait=False)
        self._pending.append(self._pool.submit(self._add, row, prefix))

    def close(self) -> None:
        try:
            self._raise_failures(wait=True)
        finally:
            if self._writer is not None:
                self._writer.close()
            self._pool.shutdown(wait=True)


class NoMetrics:
    """MetricsWriter's stand-in on processes other than 0, which write no files."""

    def write(self, row: dict, *, prefix: str = "train") -> None:
        pass

    def close(self) -> None:
        pass


class Progress:
    """A tqdm bar with ETA, loss and tokens/s; quiet when stderr is not a terminal and `quiet`.

    process: this process's index in a multi-process run (None: the only one). Every process
    runs the same loop, so only process 0 shows the bar and the run's messages; a message about
    this process alone (`every_process=True`: its data position, a signal it stopped on) is
    printed by each, prefixed with its index.
    """

    def __init__(self, total: int, initial: int, *, quiet: bool = False,
                 process: int | None = None):
        self._process = process
        self._bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                              disable=quiet or bool(process), file=sys.stderr,
                              mininterval=1.0)
        self._last_time = time.perf_counter()

    def update(self, steps: int, tokens: float, loss: float) -> float:
        now = time.perf_counter()
        rate = tokens / max(now - self._last_time, 1e-9)
        self._last_time = now
        self._bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}")
        self._bar.update(steps)
        return rate

    def write(self, text: str, *, every_process: bool = False) -> None:
        if self._process and not every_process:
            return
        if self._process is not None and every_process:
            text = f"[process {self._process}] {text}"
        self._bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()
