"""The one train step and the eval step.

`train_step(state, batch) -> (state, metrics)` is pure and jitted once with the state donated.
Its loss is a weighted sum of named terms (ftjax.objectives.term): the model runs forward once
per micro-batch and every per-example term reads that pass (or runs its own), per-step terms
(penalties) see the trainable parameters once. Gradients are taken only with respect to the
trainable leaves (the frozen ones enter as constants, get no gradient, no optimizer state and
come out bit-identical). Accumulation splits the global batch into micro-batches inside the
step (a lax.scan); each per-example term is divided by its normalizer summed over the whole
global batch, known before any forward pass. A non-finite loss or gradient leaves params,
optimizer state and term states untouched and is reported in the metrics (a hook decides
whether to stop).

Metrics: `loss` (the weighted sum), `loss/<term>` (each term's own value, unweighted),
`weight/<term>` for scheduled weights, the task term's stats (`accuracy`; other terms' stats as
`<term>/<stat>`), `loss/<term>/<source>` per data source when the batch mixes several,
`grad_norm`, `tokens`, `real_token_share` (real tokens over the batch's cells: what padding
wastes), `examples` (the first term's normalizer), `nonfinite`, `learning_rate`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from ftjax.objectives.task_term import TaskTerm
from ftjax.objectives.term import LossTerm, TermContext, TermValue
from ftjax.nn.scan import INTERMEDIATES
from ftjax.train.forward import model_inputs, scan_split_view
from ftjax.train.state import (
    TrainState,
    create_train_state,
    join_kept,
    split_kept,
    state_shardings,
)

# The state's constructors are re-exported: a step and its state are built together.
__all__ = ["TrainState", "compiled_memory", "create_train_state", "jit_eval_step",
           "jit_train_step", "make_eval_step", "make_train_step", "state_shardings"]


def as_terms(loss: LossTerm | Sequence[LossTerm]) -> tuple[LossTerm, ...]:
    """One term or several, as a tuple; names must be unique."""
    terms = (loss,) if isinstance(loss, LossTerm) else tuple(loss)
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"loss term names must be unique, got {names}")
    if not terms:
        raise ValueError("the loss needs at least one term")
    return terms


def stat_key(term_index: int, term: LossTerm, stat: str) -> str:
    """The first per-example term (the task's) logs its stats by name; others prefix theirs,
    as every task of a multi-task run does (no one task is the run's)."""
    return stat if term_index == 0 and not isinstance(term, TaskTerm) else f"{term.name}/{stat}"


def _split_micro(batch: dict, n: int) -> dict:
    """(B, ...) -> (n, B / n, ...), micro-batch i taking rows i, i + n, i + 2n, ...

    Strided rather than contiguous: the batch is split over devices in contiguous blocks, so a
    strided micro-batch takes rows from every block and keeps every device busy (a contiguous
    one would live on B / n rows' worth of devices only, or need resharding every micro-step).
    """
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {n} micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def _per_source(values_B, source_B, num_sources: int):
    """(S,) sums of a per-row quantity by the row's source."""
    return jax.nn.one_hot(source_B, num_sources, dtype=jnp.float32).T @ values_B


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    loss: LossTerm | Sequence[LossTerm],
    *,
    accumulation_steps: int = 1,
    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
    sources: Sequence[str] = (),
):
    """Build the (unjitted) pure train step; jit it with `jit_train_step`.

    loss: the terms whose weighted sum is minimized (one term, e.g. loss_for_task(...), or a
    sequence). sources: the names of the data sources, by the batch's `source` index; with
    more than one, per-example terms that give per-row values are also logged per source.
    """
    terms = as_terms(loss)
    example_terms = [t for t in terms if t.per_example]
    step_terms = [t for t in terms if not t.per_example]
    inputs_of = lambda batch: model_inputs(batch, model)  # noqa: E731
    by_source = len(sources) > 1

    # Whether any term reads the blocks' hidden states (sowed during the shared forward pass).
    capture = [INTERMEDIATES] if any(t.captures for t in example_terms) else False

    def context(term, forward, params, trainable, state, batch, output, rng, step,
                intermediates=None, shared=None):
        return TermContext(
            model=forward, params=params, trainable=trainable, batch=batch, output=output,
            state=state.terms.get(term.name), constants=state.constants.get(term.name),
            rng=rng, step=step, deterministic=False, apply_inputs=inputs_of,
            intermediates=intermediates, shared={} if shared is None else shared,
            params_of=lambda other: scan_split_view(model, other, state.frozen)[1])

    def micro_loss(trainable, state, micro, rng, normalizers):
        forward, params = scan_split_view(model, trainable, state.frozen)
        output = forward.apply({"params": params}, micro["input_ids"], **inputs_of(micro),
                               deterministic=False, rngs={"dropout": rng}, mutable=capture)
        output, sown = output if capture else (output, None)
        total, sums, shared = jnp.zeros(()), {}, {}
        for i, term in enumerate(example_terms):
            value = term(context(term, forward, params, trainable, state, micro, output,
                                 jax.random.fold_in(rng, i + 1), state.step, sown, shared))
            total += term.config.weight_at(state.step) * value.total / normalizers[term.name]
            sums[term.name] = {"total": value.total, **{
                stat_key(i, term, k): v for k, v in value.stats.items()}}
            if by_source and value.per_row is not None:
                sums[term.name]["by_source"] = _per_source(value.per_row, micro["source"],
                                                           len(sources))
        return total, sums

    value_and_grad = jax.value_and_grad(micro_loss, has_aux=True)

    def step_loss(trainable, state, rng):
        total, values = jnp.zeros(()), {}
        for i, term in enumerate(step_terms):
            # Keys apart from the micro-batches' (0 .. accumulation_steps - 1).
            value = term(context(term, model, None, trainable, state, None, None,
                                 jax.random.fold_in(rng, accumulation_steps + i), state.step))
            total += term.config.weight_at(state.step) * value.total
            values[term.name] = value.total
        return total, values

    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        # Each term's normalizer over the whole global batch, before any forward pass.
        row_weights = {t.name: t.normalizer(batch) for t in example_terms}
        normalizers = {name: jnp.maximum(jnp.sum(w), 1.0) for name, w in row_weights.items()}
        micro_batches = _split_micro(batch, accumulation_steps)

        def micro_grads(index):
            micro = jax.tree.map(lambda x: x[index], micro_batches)
            return value_and_grad(state.trainable, state, micro,
                                  jax.random.fold_in(rng, index), normalizers)

        # The first micro-batch outside the loop: its values start the sums (no zeros to add,
        # no extra trace for the sums' shapes), and one micro-batch needs no loop at all.
        (loss, sums), grads = micro_grads(0)
        if accumulation_steps > 1:
            def accumulate(carry, index):
                grads_acc, loss_acc, sums_acc = carry
                (loss, sums), grads = micro_grads(index)
                return (jax.tree.map(jnp.add, grads_acc, grads), loss_acc + loss,
                        jax.tree.map(jnp.add, sums_acc, sums)), None

            (grads, loss, sums), _ = jax.lax.scan(
                accumulate, (grads, loss, sums), jnp.arange(1, accumulation_steps))
        step_values = {}
        if step_terms:
            (penalty, step_values), step_grads = jax.value_and_grad(step_loss, has_aux=True)(
                state.trainable, state, rng)
            grads = jax.tree.map(jnp.add, grads, step_grads)
            loss = loss + penalty
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(state):
            updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
            trainable = optax.apply_updates(state.trainable, updates)
            term_states = {t.name: t.update_state(state.terms[t.name],
                                                  state.constants.get(t.name), trainable,
                                                  state.step)
                           for t in terms if t.name in state.terms}
            return trainable, opt_state, term_states

        def skip(state):
            return state.trainable, state.opt_state, state.terms

        # A branch, not a select of new and old values: the update then writes the donated
        # buffers in place, where a select must keep both (XLA CPU copied the optimizer moments
        # of the largest leaf, an embedding table, on every step).
        trainable, opt_state, term_states = jax.lax.cond(finite, update, skip, state)
        new_state = state.replace(
            step=state.step + 1, trainable=trainable, opt_state=opt_state, terms=term_states,
            nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
        )
        metrics = {"loss": loss, "grad_norm": grad_norm,
                   "tokens": jnp.sum(batch["attention_mask"]),
                   # The share of the batch's cells that hold real tokens, not padding.
                   "real_token_share": jnp.mean(batch["attention_mask"].astype(jnp.float32)),
                   "nonfinite": (~finite).astype(jnp.int32),
                   **_term_metrics(example_terms, sums, normalizers, row_weights, batch,
                                   sources)}
        metrics.update({f"loss/{name}": value for name, value in step_values.items()})
        for term in terms:
            if term.config.scheduled:
                metrics[f"weight/{term.name}"] = term.config.weight_at(state.step)
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        return new_state, metrics

    return train_step


def _term_metrics(terms, sums, normalizers, row_weights, batch, sources) -> dict:
    """The per-example terms' metrics: `examples` (the first term's normalizer), each term's
    `loss/<name>` and stats, and `loss/<name>/<source>` where sums hold per-source totals."""
    out = {"examples": normalizers[terms[0].name]} if terms else {}
    for term in terms:
        denom = normalizers[term.name]
        term_sums = dict(sums[term.name])
        out[f"loss/{term.name}"] = term_sums.pop("total") / denom
        by_source = term_sums.pop("by_source", None)
        if by_source is not None:
            weights = _per_source(row_weights[term.name], batch["source"], len(sources))
            for s, name in enumerate(sources):
                out[f"loss/{term.name}/{name}"] = by_source[s] / jnp.maximum(weights[s], 1.0)
        out.update({k: v / denom for k, v in term_sums.items()})
    return out


def _replicated_like(sharding):
    if sharding is None:
        raise ValueError("pass batch_sharding (ShardPlan.batch) together with shardings")
    return NamedSharding(sharding.mesh, PartitionSpec())


def jit_train_step(train_step, shardings: TrainState | None = None, batch_sharding=None):
    """Jit `train_step(state, batch)` donating the state except its kept fields (the frozen
    leaves and the terms' constants: ftjax.train.state.split_kept).

    Those come out unchanged, so donating them saves nothing, and it would delete the caller's
    arrays (the pretrained base is shared with, e.g., the Pretrained object).

    shardings (`state_shardings(state)`) and batch_sharding (ShardPlan.batch) pin the program's
    input and output layout: the state comes back exactly as it went in (so donation reuses the
    buffers and the next call hits the same compiled program), metrics come back replicated.
    Without them jit follows its arguments' placement (the single-device program).
    """

    def split_step(donated, kept, batch):
        new_state, metrics = train_step(join_kept(donated, kept), batch)
        return split_kept(new_state)[0], metrics

    kwargs = {}
    if shardings is not None:
        donated_sh, kept_sh = split_kept(shardings)
        kwargs = dict(in_shardings=(donated_sh, kept_sh, batch_sharding),
                      out_shardings=(donated_sh, _replicated_like(batch_sharding)))
    jitted = jax.jit(split_step, donate_argnums=0, **kwargs)

    def step(state: TrainState, batch: dict):
        donated, kept = split_kept(state)
        new_state, metrics = jitted(donated, kept, batch)
        return join_kept(new_state, kept), metrics

    # Ahead-of-time access (memory analysis): jax caches the lowering and the executable, so a
    # call with the same arguments afterwards reuses this compile.
    step.lower = lambda state, batch: jitted.lower(*split_kept(state), batch)
    return step


def compiled_memory(jitted_step, state: TrainState, batch: dict) -> dict | None:
    """What XLA plans to hold for one call of the train step, in bytes.

    `jitted_step` is `jit_train_step(...)`; compiling it here ahead of time costs nothing
    extra, as its first call then reuses the executable. arguments + outputs + temporaries is
    the program's own footprint ("compiled step memory"); `alias_bytes` is the part of the
    outputs written into donated arguments (counted in both). None where the backend gives no
    analysis.
    """
    compiled = jitted_step.lower(state, batch).compile()
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):  # a backend without the analysis
        stats = None
    if stats is None:
        return None
    out = {name: int(getattr(stats, f"{name}_size_in_bytes"))
           for name in ("argument", "output", "temp", "alias")}
    out = {f"{name}_bytes": value for name, value in out.items()}
    out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
    return out


def evaluated_terms(loss: LossTerm | Sequence[LossTerm]) -> list[LossTerm]:
    """The per-example terms evaluation computes (the task's term first)."""
    evaluated = [t for t in as_terms(loss) if t.per_example and t.evaluated]
    if not evaluated:
        raise ValueError("no loss term is evaluated (the task's cross-entropy is)")
    return evaluated


def evaluate_terms(model, evaluated: Sequence[LossTerm], trainable, frozen, batch: dict,
                   constants=None) -> tuple[Any, list[TermValue]]:
    """The deterministic forward pass of a batch and each evaluated term's value on it: what
    the eval step sums, and what a per-example quantity (a Fisher diagonal) differentiates."""
    forward, params = scan_split_view(model, trainable, frozen)  # no restacked copy
    inputs_of = lambda b: model_inputs(b, model)  # noqa: E731
    output = forward.apply({"params": params}, batch["input_ids"], **inputs_of(batch),
                           deterministic=True)
    values = [term(TermContext(model=forward, params=params, trainable=trainable, batch=batch,
                               output=output, state=None,
                               constants=(constants or {}).get(term.name),
                               rng=jax.random.key(0), step=jnp.zeros((), jnp.int32),
                               deterministic=True, apply_inputs=inputs_of))
              for term in evaluated]
    return output, values


def make_eval_step(model, loss: LossTerm | Sequence[LossTerm],
                   predict: Callable[[jax.Array], dict] | None = None):
    """eval_step(trainable, frozen, batch, constants={}) -> sums of the evaluated terms; jit it.

    Sums: `loss_sum` / `weight` of the first evaluated term (the task's), `loss_sum/<term>` /
    `weight/<term>` of each, and the terms' stats (keyed as in the train metrics). With
    `predict` (the task's, ftjax.data.tasks), also `predictions`: predict(logits) of the batch,
    for the task's metric on the host (not summed).
    """
    evaluated = evaluated_terms(loss)

    def eval_step(trainable, frozen, batch, constants=None):
        output, values = evaluate_terms(model, evaluated, trainable, frozen, batch, constants)
        sums = {}
        for i, (term, value) in enumerate(zip(evaluated, values)):
            sums[f"loss_sum/{term.name}"] = value.total
            sums[f"weight/{term.name}"] = jnp.sum(term.normalizer(batch))
            sums.update({stat_key(i, term, k): v for k, v in value.stats.items()})
        first = evaluated[0].name
        sums["loss_sum"], sums["weight"] = sums[f"loss_sum/{first}"], sums[f"weight/{first}"]
        if predict is not None:
            sums["predictions"] = predict(output.logits)
        return sums

    eval_step.terms = tuple(evaluated)
    return eval_step


def jit_eval_step(eval_step, shardings: TrainState | None = None, batch_sharding=None):
    """Jit `eval_step(trainable, frozen, batch, constants)`; with shardings, pinned like
    jit_train_step. The result takes `constants` as an optional fourth argument."""
    kwargs = {}
    if shardings is not None:
        kwargs = dict(in_shardings=(shardings.trainable, shardings.frozen, batch_sharding,
                                    shardings.constants),
                      out_shardings=_replicated_like(batch_sharding))
    jitted = jax.jit(eval_step, **kwargs)

    def step(trainable, frozen, batch, constants=None):
        return jitted(trainable, frozen, batch, {} if constants is None else constants)

    step.terms = getattr(eval_step, "terms", ())
    return step
