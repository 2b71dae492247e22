"""Training checkpoints on orbax: atomic, exact-resume, trainable delta only.

A checkpoint step directory holds three items in one `ocp.args.Composite`:
  state  the trainable params, optimizer state, step, rng, skipped-step count and the loss
         terms' states (orbax
         StandardSave: sharded arrays restore onto whatever shardings the abstract target has);
  data   the grain iterator state, one JSON file per process (grain's own orbax handler:
         every host's stream resumes where that host stopped, packed streams included);
  meta   JSON: the run's config, the base model's name and parameter-shape hash, metrics.
Frozen leaves are not saved: they are the pretrained weights (or the seeded new head), rebuilt
identically when the run is set up again. For full fine-tuning the delta is everything.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint as the latest loadable one.

Restoring says what is wrong with a checkpoint that does not restore:
  incomplete    a step directory without its commit marker or one of its items
                (UnusableCheckpointError),
  corrupt       a file unreadable or truncated, named (UnusableCheckpointError),
  incompatible  the saved tree, or a leaf's shape or dtype, differs from this run's state: the
                config changed. Found from orbax's saved metadata before any array is read;
                the leaf paths and both shapes are named (IncompatibleCheckpointError).
A newest step that is incomplete or corrupt is skipped for the newest earlier one that restores,
with a warning and `Restored.skipped`; an incompatible one is an error, never skipped.

Creating a Checkpointer checks that the workdir and its checkpoint directories are writable
(CheckpointDirectoryError), so an unwritable directory fails at once instead of when orbax's
background writer fails and its wait times out. `read_only=True` (restoring a finished run)
writes nothing and checks nothing.

Two managers: `checkpoints/` keeps the latest K (resume), `best/` keeps the single best by the
chosen eval metric (early stopping restores it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import grain.checkpoint
import jax
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath

from ftjax.io.loading import CheckpointError

logger = logging.getLogger(__name__)

STATE_FIELDS = ("step", "trainable", "opt_state", "rng", "nonfinite_steps")
# Orbax writes this file into a step directory and into each of its items once they are whole.
COMMIT_MARKER = "commit_success.txt"
REQUIRED_ITEMS = ("state", "meta")  # "data" is there only when an iterator was saved


class CheckpointDirectoryError(CheckpointError):
    """The run directory cannot hold checkpoints (not writable, or not a directory)."""


class UnusableCheckpointError(CheckpointError):
    """A saved step cannot be read: corrupt (a file unreadable or truncated) or incomplete (no
    commit marker, an item missing). An earlier step may still restore."""


class IncompatibleCheckpointError(CheckpointError):
    """A checkpoint that reads fine but holds another tree or other leaf shapes / dtypes than
    this run's state: the config changed. Never skipped: the user decides what to do."""


def params_shape_hash(params) -> str:
    """A short hash of every leaf's path, shape and dtype: identifies the base a delta fits."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    text = ";".join(f"{jax.tree_util.keystr(p)}:{tuple(x.shape)}:{x.dtype}" for p, x in leaves
                    if x is not None)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Restored:
    state: Any
    meta: dict
    step: int
    # False: the iterator passed to restore() was left as it was, because the checkpoint holds
    # no state for this process (saved without one, or by a different number of processes).
    iterator_restored: bool = False
    # Newer steps that could not be restored, newest first, with why (corrupt or incomplete);
    # `step` is the newest one that could.
    skipped: list[tuple[int, str]] = dataclasses.field(default_factory=list)


def _state_tree(state) -> dict:
    tree = {name: getattr(state, name) for name in STATE_FIELDS}
    if getattr(state, "terms", None):  # the loss terms' states (ftjax.objectives.term)
        tree["terms"] = state.terms
    return tree


def check_writable(directory: Path) -> None:
    """Create `directory` if needed and write and remove a small file in it, or raise
    CheckpointDirectoryError naming it. Not os.access: it says yes to root on a read-only
    directory, where orbax's background writer would then fail and its wait time out."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ftjax-write-check-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CheckpointDirectoryError(
            f"{directory}: cannot write checkpoints there ({err.strerror or err})") from None


class Checkpointer:
    def __init__(self, workdir: str | Path, *, keep: int = 2, async_save: bool = True,
                 read_only: bool = False):
        """read_only: only restore (export, eval, generate from a run): nothing is created and
        the directory may be read-only. Otherwise the workdir and both checkpoint directories
        must be writable, checked now (CheckpointDirectoryError) rather than at the first save."""
        # Orbax needs absolute paths (relative ones fail inside its async writer).
        workdir = Path(workdir).absolute()
        if not read_only:
            for directory in (workdir, workdir / "checkpoints", workdir / "best"):
                check_writable(directory)
        # With several processes, orbax syncs them at barriers named by step
        # ("_async_write_complete.6"); the two managers saving the same step at once would
        # meet at one barrier and time out, so each gets its own prefix. Read only:
        # create=False makes orbax's manager write nothing until a save, which save() refuses
        # (orbax's own read_only option would log a warning per manager).
        def options(n, name):
            return ocp.CheckpointManagerOptions(
                max_to_keep=n, create=not read_only, enable_async_checkpointing=async_save,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix=name),
            )
        self.latest = ocp.CheckpointManager(workdir / "checkpoints",
                                            options=options(keep, "latest"))
        self.best = ocp.CheckpointManager(workdir / "best", options=options(1, "best"))
        # Steps restore() found unusable, per manager (best or not): a save of the same step
        # replaces them.
        self._unusable: dict[bool, set[int]] = {False: set(), True: set()}
        self.read_only = read_only

    def save(self, state, *, iterator=None, meta: dict, best: bool = False) -> None:
        """Save `state`'s trainable delta, `iterator`'s position (a grain DatasetIterator, read
        now: advancing it while the save completes in the background is fine) and `meta`."""
        if self.read_only:
            raise CheckpointDirectoryError(f"{self.latest.directory.parent}: opened read-only "
                                           f"(Checkpointer(read_only=True)); nothing is saved")
        step = int(state.step)
        items = {
            "state": ocp.args.StandardSave(_state_tree(state)),
            "meta": ocp.args.JsonSave(json.loads(json.dumps(meta, default=str))),
        }
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(iterator)
        args = ocp.args.Composite(**items)
        manager = self.best if best else self.latest
        if step in manager.all_steps():
            if step not in self._unusable[best]:
                return  # already saved at this step (e.g. a final save right after a periodic one)
            manager.delete(step)  # a corrupt or incomplete copy that restore() skipped
            self._unusable[best].discard(step)
        manager.save(step, args=args, force=True)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def saved_meta(self) -> dict | None:
        """The meta item (config, base model) of the newest latest-checkpoint whose meta reads,
        without restoring any array: what a resume checks before it restores."""
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                return json.loads((Path(self.latest.directory) / str(step) / "meta" /
                                   "metadata").read_text())
            except (OSError, UnicodeDecodeError, ValueError):
                continue
        return None

    def best_step(self) -> int | None:
        return self.best.latest_step()

    def restore(self, template_state, *, iterator=None, best: bool = False,
                step: int | None = None) -> Restored | None:
        """Restore onto `template_state`'s structure, dtypes and shardings, and `iterator` (a
        grain DatasetIterator, set in place) to its saved position; None if no checkpoint.

        Without `step`, the newest step that restores: a newer one that is corrupt or
        incomplete is skipped with a warning naming it and why (Restored.skipped), and
        UnusableCheckpointError is raised if none restores. A checkpoint whose tree or leaf
        shapes / dtypes differ from the template's raises IncompatibleCheckpointError, naming
        the leaves, before any array is read; it is never skipped. With `step`, that step only.
        """
        manager = self.best if best else self.latest
        if step is not None and step not in manager.all_steps():
            raise FileNotFoundError(f"{manager.directory}: no step {step} (saved: "
                                    f"{sorted(manager.all_steps()) or 'none'})")
        steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
        if not steps:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_tree(template_state))
        skipped: list[tuple[int, str]] = []
        for candidate in steps:
            try:
                restored = self._restore_step(manager, candidate, abstract)
            except UnusableCheckpointError as err:
                skipped.append((candidate, str(err)))
                self._unusable[best].add(candidate)
                continue
            for bad, why in skipped:
                logger.warning("skipped checkpoint step %d: %s", bad, why)
            if skipped:
                logger.warning("restoring step %d of %s instead", candidate, manager.directory)
            return Restored(state=template_state.replace(**restored.state),
                            meta=restored.meta or {}, step=candidate,
                            iterator_restored=self._restore_iterator(manager, candidate,
                                                                     iterator),
                            skipped=skipped)
        raise UnusableCheckpointError(
            f"{manager.directory}: no checkpoint can be restored: "
            + "; ".join(f"step {s}: {why}" for s, why in skipped))

    def _restore_step(self, manager, step: int, abstract):
        step_dir = Path(manager.directory) / str(step)
        incomplete = _incomplete(step_dir)
        if incomplete:
            raise UnusableCheckpointError(f"{step_dir} is incomplete: {incomplete}")
        json_items = {}
        for json_file in (step_dir / "state" / "_METADATA", step_dir / "meta" / "metadata"):
            try:
                json_items[json_file.name] = json.loads(json_file.read_text())
            except (OSError, UnicodeDecodeError, ValueError) as err:
                raise UnusableCheckpointError(
                    f"{step_dir} is corrupt: {json_file} is unreadable ({err})") from None
        if json_items["_METADATA"].get("use_ocdbt"):
            # One sequential walk of the array database's index first: orbax reads the arrays
            # concurrently, and a damaged file then fails many reads at once, each printing
            # its own traceback. This catches truncated and overwritten files in one line.
            try:
                ts.KvStore.open({"driver": "ocdbt", "base": f"file://{step_dir / 'state'}/"}
                                ).result().list().result()
            except ValueError as err:
                raise UnusableCheckpointError(f"{step_dir} is corrupt: {_io_error(err)}"
                                              ) from None
        try:
            saved = ocp.StandardCheckpointHandler().metadata(epath.Path(step_dir / "state"))
        except (OSError, ValueError) as err:
            raise UnusableCheckpointError(f"{step_dir} is corrupt: {_io_error(err)}") from None
        mismatch = _mismatch(saved, abstract)
        if mismatch:
            raise IncompatibleCheckpointError(
                f"checkpoint {step_dir} does not fit this run's model/optimizer (was the "
                f"config changed?): {mismatch}")
        try:
            return manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                meta=ocp.args.JsonRestore(),
            ))
        except (OSError, ValueError) as err:
            if not _is_io_error(err, step_dir):
                raise
            raise UnusableCheckpointError(f"{step_dir} is corrupt: {_io_error(err)}") from None

    def _restore_iterator(self, manager, step: int, iterator) -> bool:
        if iterator is None:
            return False
        try:
            manager.restore(step, args=ocp.args.Composite(
                data=grain.checkpoint.CheckpointRestore(iterator)))
            return True
        except (ValueError, KeyError, FileNotFoundError) as err:
            # No file for this process: saved without an iterator, or by another number
            # of processes (each host's stream position is its own).
            logger.warning("checkpoint %s/%s: no data iterator state for process %d of "
                           "%d (%s); the input stream starts afresh", manager.directory,
                           step, jax.process_index(), jax.process_count(), err)
            return False

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _incomplete(step_dir: Path) -> str | None:
    """What a step directory lacks of a finished save, or None."""
    if not (step_dir / COMMIT_MARKER).is_file():
        return f"no commit marker {COMMIT_MARKER} (the save did not finish)"
    for item in REQUIRED_ITEMS:
        if not (step_dir / item).is_dir():
            return f"its item {item!r} is missing"
        if not (step_dir / item / COMMIT_MARKER).is_file():
            return f"its item {item!r} has no commit marker {COMMIT_MARKER}"
    if not (step_dir / "state" / "_METADATA").is_file():
        return "state/_METADATA is missing"
    return None


# tensorstore names the file it failed on: `... local file "/run/checkpoints/6/state/d/ab12":
# Requested byte range [0, 24151) is not valid for value of size 12075 [tensorstore_spec=...`
_LOCAL_FILE = re.compile(r'local file "([^"]+)"')


def _is_io_error(err: Exception, step_dir: Path) -> bool:
    """Whether `err` (from orbax reading `step_dir`) is about the files, not about our code."""
    return isinstance(err, OSError) or str(step_dir) in str(err)


def _io_error(err: Exception) -> str:
    """One line naming the unreadable file and what is wrong with it."""
    text = str(err).split(" [tensorstore_spec", 1)[0]
    files = [f for f in _LOCAL_FILE.findall(text) if not f.endswith("/")]
    if files:
        name = files[-1]
        detail = text.rsplit(f'{name}": ', 1)[-1]
        return f"{name} is unreadable ({detail})"
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename} is unreadable ({err.strerror or err})"
    return f"{type(err).__name__}: {text}"


def _mismatch(saved, abstract) -> str | None:
    """Where the saved tree (orbax metadata) and this run's abstract state differ, or None."""
    have = _shapes(ocp.tree.to_flat_dict(saved.tree if hasattr(saved, "tree") else saved))
    want = _shapes(ocp.tree.to_flat_dict(ocp.tree.serialize_tree(abstract,
                                                                 keep_empty_nodes=True)))
    # The parameters first: their optimizer moments repeat the same difference.
    fields = {name: i for i, name in enumerate(("trainable", *STATE_FIELDS))}
    order = lambda path: fields.get(path.split("/", 1)[0], len(fields))  # noqa: E731
    differ = sorted((path for path in want if path in have and have[path] != want[path]),
                    key=order)
    problems = [f"{path}: checkpoint {have[path]}, this run {want[path]}" for path in differ[:3]]
    if len(differ) > 3:
        problems.append(f"and {len(differ) - 3} more leaves differ")
    missing = sorted((path for path in want if path not in have), key=order)
    extra = sorted((path for path in have if path not in want), key=order)
    if missing:
        problems.append(f"not in the checkpoint: {_some(missing)}")
    if extra:
        problems.append(f"not in this run: {_some(extra)}")
    return "; ".join(problems) or None


def _shapes(flat: dict) -> dict[str, str]:
    """'trainable/head/classifier/kernel' -> '(30, 2) float32' for every array leaf."""
    return {"/".join(map(str, path)): f"{tuple(x.shape)} {jax.numpy.dtype(x.dtype).name}"
            for path, x in flat.items()
            if getattr(x, "shape", None) is not None and getattr(x, "dtype", None) is not None}


def _some(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
