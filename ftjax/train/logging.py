"""Where a run's numbers go: WORKDIR/metrics.jsonl, TensorBoard event files, a progress bar.

metrics.jsonl holds one JSON object per logged row: train rows {"step", "loss", ...} and eval rows
{"step", "split", "<metric>", ...}. Appending (never rewriting) keeps it intact across a resume;
rows past the resumed step are dropped first so a replayed stretch is not logged twice.
"""

from __future__ import annotations

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
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

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
            step = int(row["step"])
            for key, value in row.items():
                if key not in ("step", "split") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


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
