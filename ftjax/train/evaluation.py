"""Evaluation: the eval step summed over a split, per source, and the macro average.

A run with one source reports each split under its name ("validation"); with several, each
source's split as "<split>/<source>" and the split's name holds the macro average over the
trained sources that have it (the mean of each metric), which selection and early stopping
follow; sources that are only evaluated (`train = False`) stay out of it unless no trained
source has the split. A metric that only some sources report (accuracy of the classification
sources, BLEU of the translation one) is averaged over those that report it.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax

from ftjax.data import batch_shapes
from ftjax.data.multitask import TaskOfMany
from ftjax.parallel import fetch
from ftjax.train.state import TrainState


def evaluate(eval_step_jit, state: TrainState, batches, metric=None, *,
             perplexity: bool = False, primary: str | None = None) -> dict:
    """Sum the eval step over a finite pass of batches; metrics are exact per-example means,
    plus the task metric's (ftjax.data.metrics) when one is given: it sees each batch's
    predictions with the batch's own features.

    batches: Experiment.placed_eval_batches(split) (or numpy batches for an unsharded state).
    primary: the task term these batches are of (a multi-task run's source: its task's term;
    see eval_metrics); None: the first.
    """
    totals = None
    for batch in batches:
        sums = eval_step_jit(state.trainable, state.frozen, batch, state.constants)
        predictions = sums.pop("predictions", None)
        if metric is not None and predictions is not None:
            # A sharded batch may span other processes' devices: gathering it is a collective
            # every process joins.
            metric.update(fetch(batch), fetch(predictions))
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    results = eval_metrics(jax.device_get(totals), eval_step_jit.terms, perplexity=perplexity,
                           primary=primary)
    if metric is not None:
        results.update(metric.result())
    return results


def eval_metrics(totals: dict, terms, *, perplexity: bool = False,
                 primary: str | None = None) -> dict:
    """Means from the eval step's sums: `loss` (the evaluated terms weighted as in training,
    at their final weights), each term's `loss/<name>` when there are several, each stat
    normalized like its term, and `examples` (the primary term's normalizer). perplexity: also
    `perplexity`, exp of the primary term's mean loss per predicted token (language-model
    tasks, whose task term is a token-level cross entropy).

    primary: the term whose stats are reported by their plain names (`accuracy`) and whose
    normalizer counts the examples: the first term (the task's) by default; in a multi-task
    run, the task term of the evaluated source, and the other tasks' terms, which have no rows
    in its batches, are left out."""
    first = terms[0].name
    weights = {t.name: max(float(totals[f"weight/{t.name}"]), 1.0) for t in terms}
    if primary is not None:  # a multi-task source: the other tasks' terms saw none of its rows
        terms = [t for t in terms if t.name == primary or float(totals[f"weight/{t.name}"]) > 0]
    primary = primary or first
    names = {t.name for t in terms}
    out = {"loss": sum(t.config.weight * float(totals[f"loss_sum/{t.name}"]) / weights[t.name]
                       for t in terms)}
    if len(terms) > 1:
        out.update({f"loss/{t.name}": float(totals[f"loss_sum/{t.name}"]) / weights[t.name]
                    for t in terms})
    for key, value in totals.items():
        if key.startswith(("loss_sum", "weight")):
            continue
        owner, stat = key.split("/", 1) if key.split("/", 1)[0] in weights else (first, key)
        if owner not in names:
            continue
        out[stat if owner == primary else f"{owner}/{stat}"] = float(value) / weights[owner]
    out["examples"] = float(totals[f"weight/{primary}"])
    if perplexity:
        task_loss = float(totals[f"loss_sum/{primary}"]) / weights[primary]
        out["perplexity"] = perplexity_of(task_loss)
    return out


def perplexity_of(mean_loss: float) -> float:
    """exp of a mean per-token negative log-likelihood, capped inside float64's range."""
    return math.exp(min(mean_loss, 700.0))


def eval_metric_names(exp) -> list[str]:
    """The metrics an evaluation of `exp` reports (from the eval step's shapes; no data read)."""
    batch = {name: jax.ShapeDtypeStruct(shape, dtype) for name, (shape, dtype)
             in batch_shapes(exp.task, exp.cfg.eval_batch_size).items()}
    sums = jax.eval_shape(exp.eval_step, exp.state.trainable, exp.state.frozen, batch,
                          exp.state.constants)
    totals = {k: 1.0 for k in sums if k != "predictions"}
    names: set[str] = set()
    for source in exp.sources:
        names |= set(eval_metrics(totals, exp.eval_step.terms, primary=task_term_of(source),
                                  perplexity=reports_perplexity(source.task)))
        metric = source.task.metric([], exp.tokenizer) if hasattr(source.task, "metric") \
            else None
        names |= set(metric.names) if metric is not None else set()
        if isinstance(source.task, TaskOfMany):
            names.add("score")
    return sorted(names)


def reports_perplexity(task) -> bool:
    """Language-model tasks (causal, chat, masked) report the perplexity of their targets."""
    return bool(getattr(task, "language_model", False))


def task_term_of(source) -> str | None:
    """The task term a source's batches are scored by: its task's in a multi-task run (the
    term is named after the task), else None (the run's one task term)."""
    return source.task.name if isinstance(source.task, TaskOfMany) else None


def task_metric(exp, source, split: str):
    """The metric of a source's task over one of its splits, or None (no task metric)."""
    if not hasattr(source.task, "metric"):
        return None
    return source.task.metric(source.splits[split], exp.tokenizer)


def evaluate_splits(exp, eval_step_jit, state: TrainState, splits: Sequence[str]) -> dict:
    """{split: metrics} (and {split/source: metrics} with several sources) of `state`."""
    results: dict[str, dict] = {}
    for split in splits:
        having = [s.name for s in exp.sources if split in s.splits]
        if not having:
            raise KeyError(f"no source has a {split!r} split; the run's splits are "
                           f"{exp.splits}")
        if len(exp.sources) == 1:
            results[split] = evaluate(eval_step_jit, state, exp.placed_eval_batches(split),
                                      task_metric(exp, exp.sources[0], split),
                                      perplexity=reports_perplexity(exp.sources[0].task))
            continue
        per_source = {s.name: evaluate(eval_step_jit, state,
                                       exp.placed_eval_batches(split, s.name),
                                       task_metric(exp, s, split),
                                       perplexity=reports_perplexity(s.task),
                                       primary=task_term_of(s))
                      for s in exp.sources if s.name in having}
        for source in exp.sources:
            if source.name in per_source and isinstance(source.task, TaskOfMany):
                score = source.task.score(per_source[source.name])
                if score is not None:
                    per_source[source.name]["score"] = score
        results[split] = {}
        add_source_metrics(exp, results, split, per_source)
    return results


def add_source_metrics(exp, results: dict, split: str, per_source: dict[str, dict]) -> None:
    """Put metrics measured per source on `split` into `results`: under the split's name in a
    run of one source; else under "<split>/<source>", and under the split's name their average
    (macro_average) over the trained sources that have them. Sources only evaluated are
    reported alone, out of the average that selection follows, unless no trained source has
    the metrics. Evaluation hooks that measure per source use this too, so every metric of
    a split is averaged by one rule."""
    if len(exp.sources) == 1:
        results.setdefault(split, {}).update(per_source[exp.sources[0].name])
        return
    for name, metrics in per_source.items():
        results.setdefault(f"{split}/{name}", {}).update(metrics)
    trained = [per_source[s.name] for s in exp.sources if s.name in per_source and s.trained]
    results.setdefault(split, {}).update(macro_average(trained or per_source.values()))


def macro_average(results) -> dict:
    """The mean of each metric over the results that have it (examples: their sum)."""
    results = list(results)
    keys = dict.fromkeys(k for r in results for k in r if k != "examples")
    out = {k: sum(r[k] for r in results if k in r) / sum(k in r for r in results)
           for k in keys}
    if any("examples" in r for r in results):
        out["examples"] = sum(r.get("examples", 0.0) for r in results)
    return out
