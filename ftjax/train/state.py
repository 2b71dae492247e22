"""The train state: everything a step reads and returns, sharded once, checkpointed in part.

    step, trainable, opt_state, rng, nonfinite_steps, terms  -> donated to the step, checkpointed
    frozen, constants                                        -> read by the step, never donated,
                                                                never checkpointed

`frozen` is the half of the parameters that never trains (the pretrained weights, rebuilt when
the run is set up again); `constants` and `terms` belong to the loss terms
(ftjax.objectives.term): constants are rebuilt identically at set-up (an anchor copy, a
teacher), term states change as the run trains and are saved with it.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from ftjax.objectives.term import TERM_PARAMS, LossTerm, TermSetup
from ftjax.optim.trainability import combine, partition
from ftjax.parallel.placement import like_params, opt_state_shardings, put


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates attempted so far
    trainable: Any  # params tree, None where frozen
    frozen: Any  # params tree, None where trainable
    opt_state: Any
    rng: jax.Array  # raw uint32 key data (checkpointable); step keys are fold_in(rng, step)
    nonfinite_steps: jax.Array  # int32 scalar: updates skipped for a non-finite loss/gradient
    terms: dict = flax.struct.field(default_factory=dict)  # term name -> its state
    constants: dict = flax.struct.field(default_factory=dict)  # term name -> its constants

    @property
    def params(self):
        """The model's parameters (the halves combined), without the loss terms' own."""
        combined = combine(self.trainable, self.frozen)
        return {k: v for k, v in combined.items() if k != TERM_PARAMS}

    def param_shapes(self):
        """ShapeDtypeStructs of every parameter, the loss terms' own included (the tree the
        trainability rules resolve), without combining any arrays (for reports)."""
        return jax.eval_shape(lambda state: combine(state.trainable, state.frozen), self)


# The fields the step does not donate (they come back unchanged) and checkpoints never hold.
KEPT = ("frozen", "constants")


def split_kept(state: TrainState) -> tuple[TrainState, dict]:
    """(the state without its kept fields, those fields): the step donates the first part."""
    return state.replace(**{name: None for name in KEPT}), {
        name: getattr(state, name) for name in KEPT}


def join_kept(state: TrainState, kept: dict) -> TrainState:
    """Inverse of split_kept."""
    return state.replace(**kept)


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


def _placers(plan, trainable_sh, trainable_shapes):
    """(like_trainable, replicated): put a pytree on the run's devices (copies, never the
    caller's buffers); without a plan, copies on the default device."""
    if plan is None:
        copy = lambda tree: jax.tree.map(  # noqa: E731
            lambda x: None if x is None else jnp.array(x, copy=True), tree,
            is_leaf=lambda x: x is None)
        return copy, copy
    rep = plan.replicated

    def like_trainable(tree):
        return put(tree, like_params(tree, trainable_shapes, trainable_sh, rep))

    def replicated(tree):
        return put(tree, jax.tree.map(lambda _: rep, tree))

    return like_trainable, replicated


def create_train_state(params, trainable_mask, tx: optax.GradientTransformation,
                       seed: int, *, terms: Sequence[LossTerm] = (), plan=None,
                       frozen_dtype=None, donate_params: bool = False,
                       model=None, tokenizer=None, config=None,
                       load_model=None, train_rows=None, shared=None) -> TrainState:
    """The initial state: params split by `trainable_mask`, fresh optimizer state, seeded rng,
    and the constants and states of the loss `terms`.

    plan: a ftjax.parallel.ShardPlan. With it the state is created already sharded: every
      parameter is placed with its sharding (leaf by leaf; the caller's arrays are not modified),
      and the optimizer state is built by `jit(tx.init, out_shardings=...)` with each
      parameter-shaped part sharded like its parameter, so it never exists unsharded. Without
      it, everything lives on the default device (the single-device program).
    frozen_dtype: storage dtype of frozen kernels / embedding tables (see `cast_frozen`).
    donate_params: with a plan, hand `params`' buffers over to the state instead of copying them
      (saves a copy of the model; the caller must not use `params` afterwards).
    model, tokenizer, config, load_model, train_rows, shared: handed to the terms (TermSetup)
      for their constants and states.
    """
    trainable, frozen = partition(params, trainable_mask)
    trainable_sh, frozen_sh = (None, None) if plan is None else partition(plan.params,
                                                                          trainable_mask)
    like_trainable, replicated = _placers(plan, trainable_sh, trainable)
    # Before the params move into the state (donation): the terms copy what they keep.
    setup = TermSetup(params=params, mask=trainable_mask, trainable=trainable,
                      place_like_trainable=like_trainable, place_replicated=replicated,
                      model=model, tokenizer=tokenizer, config=config, load_model=load_model,
                      train_rows=train_rows, shared={} if shared is None else shared)
    constants, states = {}, {}
    for term in terms:
        if (c := term.constants(setup)) is not None:
            constants[term.name] = c
        if (s := term.init_state(setup)) is not None:
            states[term.name] = s
    frozen = cast_frozen(frozen, frozen_dtype)
    rng = jax.random.key_data(jax.random.key(seed))
    if plan is None:
        # Under jit: eager optax init may hand several state leaves one shared zeros buffer,
        # which donation then rejects ("donate the same buffer twice").
        return TrainState(
            step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen,
            opt_state=jax.jit(tx.init)(trainable), rng=rng,
            nonfinite_steps=jnp.zeros((), jnp.int32), terms=states, constants=constants,
        )

    rep = plan.replicated
    trainable = put(trainable, trainable_sh, donate=donate_params)
    frozen = put(frozen, frozen_sh, donate=donate_params)
    opt_sh = opt_state_shardings(tx, jax.eval_shape(tx.init, trainable), trainable,
                                 trainable_sh, rep)
    return TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), rep),
        trainable=trainable,
        frozen=frozen,
        opt_state=jax.jit(tx.init, out_shardings=opt_sh)(trainable),
        rng=jax.device_put(rng, rep),
        nonfinite_steps=jax.device_put(jnp.zeros((), jnp.int32), rep),
        terms=states,
        constants=constants,
    )


def state_shardings(state: TrainState):
    """The sharding of every array of a (placed) state: what the jitted step takes and returns."""
    return jax.tree.map(lambda x: x.sharding, state)
