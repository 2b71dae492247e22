"""What guards a run directory: one writer at a time, and a resume that continues the same run.

- `WorkdirLock`: an exclusive lock (fcntl.flock on WORKDIR/.lock, released by the kernel when
  the process ends however it ends) holding the owner's pid and host. A second run on the same
  workdir fails at once naming the owner; a lock file left by a process that died is taken over
  with a message.
- `config_changes`: the differences between the config a run was trained with (saved with
  every checkpoint) and the one resuming it. Keys that only schedule, log or place the run
  (RESUMABLE) may change; any other difference changes what is trained (the method, rules,
  model, task, head, data, optimizer ...) and refuses to resume unless allowed.
- `check_fresh_start`: a workdir whose checkpoints are gone but whose metrics exist is not a
  fresh run; starting it again would append a second run to the first one's metrics.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from ftjax.settings import ConfigError

# Keys that may differ on resume: they schedule, log or place the run, not what it trains.
RESUMABLE = (
    "steps", "eval_every", "eval_at_start", "checkpoint_every", "log_every", "keep_checkpoints", "eval_splits",
    "eval_batch_size", "best_metric", "best_mode", "early_stopping.", "save_adapter", "hooks",
    "nonfinite", "mesh.", "model.attention_impl", "model.frozen_dtype",
)
LOCK_FILE = ".lock"


class WorkdirBusyError(ConfigError):
    """Another live process holds the workdir."""


class ResumeError(ConfigError):
    """The workdir's run cannot be continued as asked; the message says why and what allows it."""


def _flat(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and key not in ("losses", "sources"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _normalized(value):
    """JSON's view of a value (tuples and lists alike)."""
    return json.loads(json.dumps(value, default=str))


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(resumable, refused) differences as 'key: old -> new' lines, each sorted."""
    old, new = _flat(saved), _flat(current)
    resumable, refused = [], []
    for key in sorted(set(old) | set(new)):
        before, after = _normalized(old.get(key)), _normalized(new.get(key))
        if before == after:
            continue
        line = f"{key}: {before!r} -> {after!r}"
        allowed = any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)
        (resumable if allowed else refused).append(line)
    return resumable, refused


def check_resume(workdir: Path, saved: dict | None, current: dict, *, allow: bool) -> list[str]:
    """The resumable differences (to log); raises ResumeError for the others unless `allow`."""
    if saved is None:
        return []
    resumable, refused = config_changes(saved, current)
    if refused and not allow:
        shown = "; ".join(refused[:6]) + (f"; and {len(refused) - 6} more" if len(refused) > 6
                                          else "")
        raise ResumeError(
            f"{workdir} was trained with another config ({shown}); resuming would train "
            f"something else on its checkpoints. Use a fresh --workdir, or pass "
            f"--allow-config-change to resume anyway")
    return resumable + refused


def check_fresh_start(workdir: Path) -> None:
    """Refuse to start from step 0 in a workdir that already logged a run."""
    metrics = workdir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        raise ResumeError(
            f"{workdir} holds the metrics of an earlier run but no checkpoint to resume from; "
            f"use a fresh --workdir (or delete {metrics} to start over there)")


class WorkdirLock:
    """An exclusive lock on a run directory for as long as this process runs it."""

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / LOCK_FILE
        self._fd: int | None = None
        self.taken_over: dict | None = None  # the dead owner's record, when one was found

    def acquire(self) -> "WorkdirLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self._read(fd)
            os.close(fd)
            raise WorkdirBusyError(
                f"{self.path.parent} is in use by another run (pid {owner.get('pid', '?')} on "
                f"{owner.get('host', '?')}, since {owner.get('started', '?')}); wait for it or "
                f"use another --workdir") from None
        previous = self._read(fd)
        if previous.get("pid") not in (None, os.getpid()):
            self.taken_over = previous  # its process is gone: the kernel released its lock
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            return {}

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
