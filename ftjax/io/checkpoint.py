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

Two managers: `checkpoints/` keeps the latest K (resume), `best/` keeps the single best by the
chosen eval metric (early stopping restores it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import grain.checkpoint
import jax
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)

STATE_FIELDS = ("step", "trainable", "opt_state", "rng", "nonfinite_steps")


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


def _state_tree(state) -> dict:
    tree = {name: getattr(state, name) for name in STATE_FIELDS}
    if getattr(state, "terms", None):  # the loss terms' states (ftjax.objectives.term)
        tree["terms"] = state.terms
    return tree


class Checkpointer:
    def __init__(self, workdir: str | Path, *, keep: int = 2, async_save: bool = True):
        # Orbax needs absolute paths (relative ones fail inside its async writer).
        workdir = Path(workdir).absolute()
        # With several processes, orbax syncs them at barriers named by step
        # ("_async_write_complete.6"); the two managers saving the same step at once would
        # meet at one barrier and time out, so each gets its own prefix.
        options = lambda n, name: ocp.CheckpointManagerOptions(  # noqa: E731
            max_to_keep=n, create=True, enable_async_checkpointing=async_save,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=name),
        )
        self.latest = ocp.CheckpointManager(workdir / "checkpoints",
                                            options=options(keep, "latest"))
        self.best = ocp.CheckpointManager(workdir / "best", options=options(1, "best"))

    def save(self, state, *, iterator=None, meta: dict, best: bool = False) -> None:
        """Save `state`'s trainable delta, `iterator`'s position (a grain DatasetIterator, read
        now: advancing it while the save completes in the background is fine) and `meta`."""
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
            return  # already saved at this step (e.g. a final save right after a periodic one)
        manager.save(step, args=args, force=True)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def best_step(self) -> int | None:
        return self.best.latest_step()

    def restore(self, template_state, *, iterator=None, best: bool = False,
                step: int | None = None) -> Restored | None:
        """Restore onto `template_state`'s structure, dtypes and shardings, and `iterator` (a
        grain DatasetIterator, set in place) to its saved position; None if no checkpoint."""
        manager = self.best if best else self.latest
        step = manager.latest_step() if step is None else step
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_tree(template_state))
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                meta=ocp.args.JsonRestore(),
            ))
        except Exception as err:  # orbax raises many types; say which checkpoint did not fit
            raise RuntimeError(
                f"checkpoint {manager.directory}/{step} does not fit this run's model/optimizer "
                f"(was the config changed?): {type(err).__name__}: {err}"
            ) from err
        state = template_state.replace(**restored.state)
        iterator_restored = False
        if iterator is not None:
            try:
                manager.restore(step, args=ocp.args.Composite(
                    data=grain.checkpoint.CheckpointRestore(iterator)))
                iterator_restored = True
            except (ValueError, KeyError, FileNotFoundError) as err:
                # No file for this process: saved without an iterator, or by another number
                # of processes (each host's stream position is its own).
                logger.warning("checkpoint %s/%s: no data iterator state for process %d of "
                               "%d (%s); the input stream starts afresh", manager.directory,
                               step, jax.process_index(), jax.process_count(), err)
        return Restored(state=state, meta=restored.meta or {}, step=step,
                        iterator_restored=iterator_restored)

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
