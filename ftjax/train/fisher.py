"""The diagonal of the Fisher information of a finished run's model on its train data: what
EWC (the `ewc` loss term) weighs each parameter's move by in the runs that follow.

    F_k = (1/N) sum_i (d log p(y_i | x_i) / d theta_k)^2

over N train examples of the run's trained sources (a seeded sample of at most `max_examples`
of each), y_i the example's own labels (the empirical Fisher; for a language model, the
sequence's target tokens, so log p is the sum over them), for every trainable leaf of the run:
the leaves the next stage may move. Per-example gradients are taken `rows_per_pass` rows at a
time (vmap) inside one jitted program per batch shape.

Online EWC keeps one running estimate: `previous` (an earlier Fisher file) enters decayed,
F = decay * F_previous + F_new (decay 1: the sum of every task's Fisher; leaves the new run did
not train keep their decayed earlier values).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ftjax.data import ROLES
from ftjax.io.atomic_dir import check_file_target
from ftjax.io.fisher import FISHER_FILE, flat_leaves, load_fisher, save_fisher
from ftjax.settings import ConfigError
from ftjax.train.restore import restore_run
from ftjax.train.step import evaluate_terms, evaluated_terms


def _rows_per_pass(batch_rows: int, wanted: int) -> int:
    """The largest divisor of the batch's rows that is at most `wanted`."""
    return max(d for d in range(1, min(batch_rows, max(wanted, 1)) + 1) if batch_rows % d == 0)


def make_fisher_accumulator(model, terms, *, rows_per_pass: int = 8):
    """A jitted acc(sums, trainable, frozen, batch, constants) -> sums + the squared gradient of
    each row's log-likelihood (the evaluated terms' loss of that row alone), per leaf."""
    evaluated = evaluated_terms(terms)

    def row_loss(trainable, frozen, row, constants):
        _, values = evaluate_terms(model, evaluated, trainable, frozen, row, constants)
        return sum(value.total for value in values)

    row_grads = jax.vmap(jax.grad(row_loss), in_axes=(None, None, 0, None))

    @jax.jit
    def accumulate(sums, trainable, frozen, batch, constants):
        rows = batch["input_ids"].shape[0]
        per_pass = _rows_per_pass(rows, rows_per_pass)
        # (passes, rows per pass, 1, ...): each row a batch of its own.
        chunks = jax.tree.map(
            lambda x: x.reshape(rows // per_pass, per_pass, 1, *x.shape[1:]), batch)

        def one_pass(acc, chunk):
            grads = row_grads(trainable, frozen, chunk, constants)
            return jax.tree.map(
                lambda a, g: a + jnp.sum(jnp.square(g.astype(jnp.float32)), axis=0),
                acc, grads), None

        sums, _ = jax.lax.scan(one_pass, sums, chunks)
        return sums

    return accumulate


def fisher_diagonal(model, terms, trainable, frozen, batches: Iterable[dict], *,
                    constants=None, rows_per_pass: int = 8) -> tuple[dict, int]:
    """({leaf path: mean squared per-example gradient}, examples) over `batches`. A row is an
    example when it is a record's (example_id >= 0) or carries loss: a packed language-model
    row, pieces of several documents (example_id -1), is one; the filler rows that complete a
    last batch (example_id -1, no loss) carry no gradient and do not count."""
    accumulate = make_fisher_accumulator(model, terms, rows_per_pass=rows_per_pass)
    first = evaluated_terms(terms)[0]
    sums = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), trainable)
    examples = 0
    for batch in batches:
        sums = accumulate(sums, trainable, frozen, batch, constants or {})
        host = jax.device_get(batch)
        carries_loss = np.asarray(first.normalizer(host)) > 0
        examples += int(np.sum((np.asarray(host["example_id"]) >= 0) | carries_loss))
    if examples == 0:
        raise ConfigError("the Fisher diagonal needs at least one example; the data gave none")
    host = jax.device_get(sums)
    return {k: np.asarray(v) / examples for k, v in flat_leaves(host).items()}, examples


def combine_with_previous(new: dict, previous: dict, decay: float) -> dict:
    """decay * previous + new, leaf by leaf; a leaf only one of them has keeps its term."""
    out = {k: decay * v for k, v in previous.items()}
    for key, value in new.items():
        if key in out and out[key].shape != value.shape:
            raise ConfigError(f"the previous Fisher's {key} has shape {out[key].shape}, this "
                              f"run's {value.shape}: it belongs to another model")
        out[key] = out.get(key, 0.0) + value
    return out


def estimate_fisher(workdir, *, max_examples: int | None = 1000, seed: int = 0,
                    previous: str | Path | None = None, decay: float = 1.0,
                    out: str | Path | None = None, overwrite: bool = False,
                    rows_per_pass: int = 8) -> Path:
    """Estimate a finished run's Fisher diagonal at the weights it reports (its best checkpoint
    when it kept one, as `init_from` reads it) and write it (default WORKDIR/fisher.safetensors).
    Returns the file's path."""
    workdir = Path(workdir)
    results_file = workdir / "results.json"
    if not results_file.is_file():
        raise ConfigError(f"{workdir}: no results.json; the Fisher is estimated for a finished "
                          f"`ftjax train` run")
    if not 0.0 <= decay <= 1.0 or not math.isfinite(decay):
        raise ConfigError(f"decay must lie in [0, 1], got {decay}")
    if max_examples is not None and max_examples < 1:
        raise ConfigError(f"max_examples must be >= 1 (or None: all), got {max_examples}")
    out = check_file_target(out if out is not None else workdir / FISHER_FILE,
                            overwrite=overwrite)  # refused before the work, not after
    earlier, earlier_meta = load_fisher(previous) if previous is not None else ({}, {})
    best = json.loads(results_file.read_text()).get("best_step") is not None
    exp, restored = restore_run(workdir, best=best, roles=ROLES)
    state = restored.state
    rng = np.random.default_rng([seed, 0xF15E])
    batches, sampled = [], {}
    for source in exp.sources:
        if not source.trained:
            continue
        n = len(source.splits["train"])
        take = n if max_examples is None else min(n, max_examples)
        indices = np.sort(rng.choice(n, size=take, replace=False))
        sampled[source.name] = take
        batches.append(exp.placed_eval_batches("train", source.name, indices=indices))
    diagonal, examples = fisher_diagonal(
        exp.model, exp.terms, state.trainable, state.frozen,
        (batch for source_batches in batches for batch in source_batches),
        constants=state.constants, rows_per_pass=rows_per_pass)
    if earlier:
        diagonal = combine_with_previous(diagonal, earlier, decay)
    meta = {"workdir": str(workdir.resolve()), "step": int(state.step),
            "checkpoint": "best" if best else "latest", "labels": "empirical",
            "examples": examples, "examples_per_source": sampled, "seed": seed,
            "previous": str(Path(previous).resolve()) if previous is not None else None,
            "decay": decay, "estimates": int(earlier_meta.get("estimates", 0)) + 1}
    return save_fisher(out, diagonal, meta, overwrite=overwrite)


def estimate_fisher_chain(workdirs: Iterable[str | Path], *, max_examples: int | None = 1000,
                          seed: int = 0, rows_per_pass: int = 8) -> None:
    """Online EWC (decay 1) over a task sequence's stages, in order: each finished stage's
    Fisher with the one before it added, written into its workdir. A stage whose file exists
    keeps it (a rerun of a pipeline repeats nothing); a stage not finished is skipped."""
    previous = None
    for workdir in map(Path, workdirs):
        target = workdir / FISHER_FILE
        if not target.is_file() and (workdir / "results.json").is_file():
            estimate_fisher(workdir, max_examples=max_examples, seed=seed,
                            previous=previous if previous is not None and previous.is_file()
                            else None, rows_per_pass=rows_per_pass)
        previous = target


__all__ = ["combine_with_previous", "estimate_fisher", "estimate_fisher_chain",
           "fisher_diagonal", "make_fisher_accumulator"]
