"""The one train step and the eval step.

`train_step(state, batch) -> (state, metrics)` is pure and jitted once with the state donated.
Gradients are taken only with respect to the trainable leaves (the frozen ones enter as
constants, get no gradient, no optimizer state and come out bit-identical). Accumulation splits
the global batch into micro-batches inside the step (a lax.scan) and normalizes by the real
token/example count of the whole global batch. A non-finite loss or gradient leaves params and
optimizer state untouched and is reported in the metrics (the loop decides whether to stop).
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from ftjax.nn.scan import segment_bounds
from ftjax.objectives.losses import LossFn
from ftjax.optim.trainability import LayerSplit, combine, partition, scan_breaks
from ftjax.parallel.placement import like_params, opt_state_shardings, put


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates attempted so far
    trainable: Any  # params tree, None where frozen
    frozen: Any  # params tree, None where trainable
    opt_state: Any
    rng: jax.Array  # raw uint32 key data (checkpointable); step keys are fold_in(rng, step)
    nonfinite_steps: jax.Array  # int32 scalar: updates skipped for a non-finite loss/gradient
    # Optional penalty on the trainable tree (ftjax.optim.Regularizer). It is a pytree in the
    # state, not a closure, so its anchor weights enter the step as data rather than as
    # constants compiled into the program.
    regularizer: Any = None

    @property
    def params(self):
        return combine(self.trainable, self.frozen)

    def param_shapes(self):
        """ShapeDtypeStructs of `params`, without combining any arrays (for reports)."""
        return jax.eval_shape(lambda state: state.params, self)


# Frozen leaves that the model only ever reads after casting them to the compute dtype (Dense
# kernels, embedding tables). Norm scales and LayerNorm biases enter fp32 statistics, so they keep
# their stored precision.
CASTABLE_FROZEN = ("kernel", "embedding")


def cast_frozen(frozen, dtype):
    """The frozen half with its kernels and embedding tables stored in `dtype` (None: unchanged).

    They get no gradient and no optimizer state, so their storage precision only matters for the
    forward pass; with dtype equal to the compute dtype (bf16 on GPU) that pass is unchanged, since
    the layers cast them to it before use anyway, and their memory and per-step reads halve.
    """
    if dtype is None:
        return frozen
    dtype = jnp.dtype(dtype)

    def cast(key_path, x):
        # The last dict key: a split stack's frozen layers sit one attribute below it.
        name = next((str(k.key) for k in reversed(key_path)
                     if isinstance(k, jax.tree_util.DictKey)), "")
        if x is None or name not in CASTABLE_FROZEN or not jnp.issubdtype(x.dtype, jnp.floating):
            return x
        return x.astype(dtype)

    return jax.tree_util.tree_map_with_path(cast, frozen, is_leaf=lambda x: x is None)


def create_train_state(params, trainable_mask, tx: optax.GradientTransformation,
                       seed: int, regularizer=None, *, plan=None, frozen_dtype=None,
                       donate_params: bool = False) -> TrainState:
    """The initial state: params split by `trainable_mask`, fresh optimizer state, seeded rng.

    plan: a ftjax.parallel.ShardPlan. With it the state is created already sharded: every
      parameter is placed with its sharding (leaf by leaf; the caller's arrays are not modified),
      and the optimizer state is built by `jit(tx.init, out_shardings=...)` with each
      parameter-shaped part sharded like its parameter, so it never exists unsharded. Without
      it, everything lives on the default device (the single-device program).
    frozen_dtype: storage dtype of frozen kernels / embedding tables (see `cast_frozen`).
    donate_params: with a plan, hand `params`' buffers over to the state instead of copying them
      (saves a copy of the model; the caller must not use `params` afterwards).
    """
    trainable, frozen = partition(params, trainable_mask)
    frozen = cast_frozen(frozen, frozen_dtype)
    rng = jax.random.key_data(jax.random.key(seed))
    if plan is None:
        # Under jit: eager optax init may hand several state leaves one shared zeros buffer,
        # which donation then rejects ("donate the same buffer twice").
        return TrainState(
            step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen,
            opt_state=jax.jit(tx.init)(trainable), rng=rng,
            nonfinite_steps=jnp.zeros((), jnp.int32), regularizer=regularizer,
        )

    rep = plan.replicated
    trainable_sh, frozen_sh = partition(plan.params, trainable_mask)
    trainable = put(trainable, trainable_sh, donate=donate_params)
    frozen = put(frozen, frozen_sh, donate=donate_params)
    opt_sh = opt_state_shardings(tx, jax.eval_shape(tx.init, trainable), trainable,
                                 trainable_sh, rep)
    if regularizer is not None:
        # Anchors are trainable-shaped (sharded like them); per-layer weights are tiny.
        regularizer = put(regularizer, regularizer.replace(
            anchor=like_params(regularizer.anchor, trainable, trainable_sh, rep),
            sp_weights=jax.tree.map(lambda _: rep, regularizer.sp_weights),
        ))
    return TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), rep),
        trainable=trainable,
        frozen=frozen,
        opt_state=jax.jit(tx.init, out_shardings=opt_sh)(trainable),
        rng=jax.device_put(rng, rep),
        nonfinite_steps=jax.device_put(jnp.zeros((), jnp.int32), rep),
        regularizer=regularizer,
    )


def state_shardings(state: TrainState):
    """The sharding of every array of a (placed) state: what the jitted step takes and returns."""
    return jax.tree.map(lambda x: x.sharding, state)


def _segment_of(t, f, start: int, stop: int):
    """Layers [start, stop) of one stacked leaf from its trainable (`t`) and frozen (`f`) halves:
    a slice of its trained layers, or its frozen run of them (LayerSplit cut them to fit). With
    a stack partly trained, partition makes every frozen stacked leaf a LayerSplit, so a leaf
    without one trains whole."""
    if not isinstance(f, LayerSplit):
        return t[start:stop]
    if start not in f.layers.indices:
        return f.run(start, stop)
    at = f.layers.indices.index(start)
    return t[at:at + stop - start]


def scan_split_view(model, trainable, frozen):
    """(model, params) for the train and eval steps' forward pass.

    Usually `model` and combine(trainable, frozen). When stacks of a scanned model are split
    between the halves (some of their layers train, ftjax.optim.trainability), instead the model
    with config.scan_breaks where training starts and stops along the layers, and params stacked
    per segment (`layer_segments_<i>`, see ftjax.nn.scan): frozen layers as the frozen half
    stores them (runs cut to fit, no copy), trained ones sliced from the trainable half. The
    same function, but autodiff computes no weight gradient for a frozen segment (and no
    backward pass at all below the lowest trained value), where one scan over the combined
    stack computes them for every layer; and no step makes a restacked copy of the stack.
    """
    is_split = lambda x: isinstance(x, LayerSplit)  # noqa: E731
    breaks = scan_breaks(x.layers for x in jax.tree.leaves(frozen, is_leaf=is_split)
                         if is_split(x)) if model.config.scan_layers else ()
    if not breaks:
        return model, combine(trainable, frozen)

    t_stack, f_stack = trainable["backbone"]["layers"], frozen["backbone"]["layers"]
    num_layers = model.config.num_layers
    segments = {
        f"layer_segments_{i}": jax.tree.map(
            lambda t, f, a=start, b=stop: _segment_of(t, f, a, b), t_stack, f_stack,
            is_leaf=lambda x: x is None or is_split(x))
        for i, (start, stop) in enumerate(segment_bounds(breaks, num_layers))}
    without_stack = lambda tree: {**tree, "backbone": {  # noqa: E731
        k: v for k, v in tree["backbone"].items() if k != "layers"}}
    params = combine(without_stack(trainable), without_stack(frozen))
    params["backbone"] = {**params["backbone"], **segments}
    return model.clone(config=model.config.with_policy(scan_breaks=breaks)), params


def model_inputs(batch: dict, is_decoder: bool) -> dict:
    """The model's keyword arguments from a pipeline batch (ftjax.data.features)."""
    kwargs = {"attention_mask": batch["attention_mask"], "positions": batch["positions"]}
    if is_decoder:
        kwargs["segment_ids"] = batch["segment_ids"]
    elif "token_type_ids" in batch:
        kwargs["token_type_ids"] = batch["token_type_ids"]
    return kwargs


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


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    *,
    accumulation_steps: int = 1,
    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
):
    """Build the (unjitted) pure train step; jit it with `jax.jit(step, donate_argnums=0)`."""
    is_decoder = model.config.arch == "llama"

    def loss_sums(trainable, frozen, micro, rng):
        forward, params = scan_split_view(model, trainable, frozen)
        out = forward.apply(
            {"params": params}, micro["input_ids"], **model_inputs(micro, is_decoder),
            deterministic=False, rngs={"dropout": rng},
        )
        loss_sum, weight, stats = loss_fn(out.logits, micro)
        return loss_sum, (weight, stats)

    value_and_grad = jax.value_and_grad(loss_sums, has_aux=True)

    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        micro_batches = _split_micro(batch, accumulation_steps)

        def accumulate(carry, xs):
            grads_acc, loss_acc, weight_acc, stats_acc = carry
            micro, index = xs
            (loss_sum, (weight, stats)), grads = value_and_grad(
                state.trainable, state.frozen, micro, jax.random.fold_in(rng, index)
            )
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
            stats_acc = jax.tree.map(jnp.add, stats_acc, stats)
            return (grads_acc, loss_acc + loss_sum, weight_acc + weight, stats_acc), None

        zeros = jax.tree.map(jnp.zeros_like, state.trainable)
        init = (zeros, jnp.zeros(()), jnp.zeros(()), {"correct": jnp.zeros(())})
        (grads, loss_sum, weight, stats), _ = jax.lax.scan(
            accumulate, init, (micro_batches, jnp.arange(accumulation_steps))
        )
        # One normalization for the whole global batch (see losses.py).
        denom = jnp.maximum(weight, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        loss = loss_sum / denom
        if state.regularizer is not None:
            reg, reg_grads = jax.value_and_grad(state.regularizer)(state.trainable)
            grads = jax.tree.map(jnp.add, grads, reg_grads)
            loss = loss + reg
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)

        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_state = state.replace(
            step=state.step + 1,
            trainable=jax.tree.map(keep, trainable, state.trainable),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
            nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
        )
        metrics = {
            "loss": loss,
            "accuracy": stats["correct"] / denom,
            "grad_norm": grad_norm,
            "weight": weight,
            "tokens": jnp.sum(batch["attention_mask"]),
            "nonfinite": (~finite).astype(jnp.int32),
        }
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        return new_state, metrics

    return train_step


def jit_train_step(train_step, shardings: TrainState | None = None, batch_sharding=None):
    """Jit `train_step(state, batch)` donating everything in the state except the frozen leaves.

    Frozen leaves come out unchanged, so donating them saves nothing, and it would delete the
    caller's arrays (the pretrained base is shared with, e.g., the Pretrained object).

    shardings (`state_shardings(state)`) and batch_sharding (ShardPlan.batch) pin the program's
    input and output layout: the state comes back exactly as it went in (so donation reuses the
    buffers and the next call hits the same compiled program), metrics come back replicated.
    Without them jit follows its arguments' placement (the single-device program).
    """

    def split_step(state_without_frozen, frozen, batch):
        new_state, metrics = train_step(state_without_frozen.replace(frozen=frozen), batch)
        return new_state.replace(frozen=None), metrics

    kwargs = {}
    if shardings is not None:
        rest = shardings.replace(frozen=None)
        scalar = _replicated_like(batch_sharding)
        kwargs = dict(in_shardings=(rest, shardings.frozen, batch_sharding),
                      out_shardings=(rest, scalar))
    jitted = jax.jit(split_step, donate_argnums=0, **kwargs)

    def step(state: TrainState, batch: dict):
        new_state, metrics = jitted(state.replace(frozen=None), state.frozen, batch)
        return new_state.replace(frozen=state.frozen), metrics

    # Ahead-of-time access (memory analysis): jax caches the lowering and the executable, so a
    # call with the same arguments afterwards reuses this compile.
    step.lower = lambda state, batch: jitted.lower(state.replace(frozen=None), state.frozen, batch)
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


def _replicated_like(sharding):
    from jax.sharding import NamedSharding, PartitionSpec

    if sharding is None:
        raise ValueError("pass batch_sharding (ShardPlan.batch) together with shardings")
    return NamedSharding(sharding.mesh, PartitionSpec())


def jit_eval_step(eval_step, shardings: TrainState | None = None, batch_sharding=None):
    """Jit `eval_step(trainable, frozen, batch)`; with shardings, pinned like jit_train_step."""
    if shardings is None:
        return jax.jit(eval_step)
    return jax.jit(eval_step,
                   in_shardings=(shardings.trainable, shardings.frozen, batch_sharding),
                   out_shardings=_replicated_like(batch_sharding))


def make_eval_step(model, loss_fn: LossFn):
    """eval_step(trainable, frozen, batch) -> sums {loss_sum, weight, correct}; jit it."""
    is_decoder = model.config.arch == "llama"

    def eval_step(trainable, frozen, batch):
        forward, params = scan_split_view(model, trainable, frozen)  # no restacked copy
        out = forward.apply({"params": params}, batch["input_ids"],
                            **model_inputs(batch, is_decoder), deterministic=True)
        loss_sum, weight, stats = loss_fn(out.logits, batch)
        return {"loss_sum": loss_sum, "weight": weight, **stats}

    return eval_step
